"""The capture planner: what the user asked for and the memory budget decide, per layer, what a run keeps.

A command states what it wants of one text, already tokenized once into a
:class:`~hf_attn_inspect.capture.inputs.Batch`: the stack, the head it draws (``inspect``: ``layer``/``head``)
or the layers it wants at full resolution (``view``: ``layers``), and the memory budget
(:func:`~hf_attn_inspect.core.memory.memory_budget`). :func:`plan_capture` compares the full capture's
estimate (:meth:`~hf_attn_inspect.capture.inspector.AttentionInspector.batch_estimate`) with the budget and
returns a :class:`CapturePlan` giving each ``(stack, layer)`` a mode:

- ``"full"``: full float32 weights of every head (the normal capture when everything fits; on a pooled
  plan, the layers ``view`` asked for when they fit next to the rest);
- ``"pooled"``: the attention pooled into at most ``max_blocks x max_blocks`` blocks per head, computed a
  block of query rows at a time, and every self-attention head's statistics streamed from those blocks
  (``O(T)`` per head; the numbers of :func:`~hf_attn_inspect.stats.streaming.streaming_head_metrics`).
  ``full_heads`` names the heads of a pooled layer also kept at full resolution (``inspect``'s drawn layer or
  head, when it fits and the input has at most :data:`DRAW_LIMIT` tokens).

:func:`run_plan` runs the plan through :meth:`~hf_attn_inspect.capture.inspector.AttentionInspector.run`
once, on that same batch: a full plan through
:meth:`~hf_attn_inspect.capture.inspector.AttentionInspector.capture_batch` (an
:class:`~hf_attn_inspect.capture.result.AttentionResult`), a pooled one through
:class:`~hf_attn_inspect.stats.pooled.PooledStatsRecorder` (a :class:`~hf_attn_inspect.runs.captured.LongCapture`
for ``inspect``, an :class:`~hf_attn_inspect.runs.captured.ExplorerCapture` for ``view``). When even the
pooled plan does not fit, :class:`~hf_attn_inspect.core.errors.MemoryBudgetError` names the estimate, the
budget and the ways out. :func:`capture_within_budget` and :func:`capture_for_explorer` are the pooled plans
of one text, for the API.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from ..capture.inputs import Batch
from ..capture.inspector import AttentionInspector
from ..capture.pooled import MAX_BLOCKS, block_edges
from ..capture.result import AttentionResult
from ..core.errors import CaptureError, InputError, MemoryBudgetError
from ..core.memory import MemoryBudget, MemoryEstimate, format_bytes, memory_budget
from ..core.stacks import DECODER, is_self_attention, key_stack, model_stack, query_stack, result_stack, self_attention_stacks
from ..stats.metrics import ROW_QUANTITIES
from ..stats.pooled import PooledStatsRecorder
from .captured import CapturePlan, ExplorerCapture, LongCapture, PooledStack

__all__ = ["DRAW_LIMIT", "CapturePlan", "plan_capture", "run_plan", "capture_within_budget", "capture_for_explorer"]

#: Longest input (tokens per side) whose full weights a figure draws; longer ones are drawn pooled.
DRAW_LIMIT = 2048

#: What :func:`run_plan` returns: full weights, ``inspect``'s pooled capture or ``view``'s.
Captured = Union[AttentionResult, LongCapture, ExplorerCapture]


def _pooled_base(
    inspector: AttentionInspector,
    batch: Batch,
    shapes: dict[str, tuple[int, int, int, int]],
    budget: MemoryBudget,
    max_blocks: int,
) -> tuple[MemoryEstimate, int]:
    """``(estimate, chunk_bytes)`` of the pooled capture without full weights (pooled matrices of every head,
    per-row statistics, one block of weights); raises :class:`MemoryBudgetError` when it exceeds ``budget``."""
    chunk = int(min(64 * 2**20, max(2**20, budget.bytes // 16)))
    pooled = rows = 0
    for name, (l_, h_, q_, k_) in shapes.items():
        pooled += l_ * h_ * (len(block_edges(q_, max_blocks)) - 1) * (len(block_edges(k_, max_blocks)) - 1) * 8
        if is_self_attention(name):
            rows += l_ * h_ * q_ * (len(ROW_QUANTITIES) * 4 + 8)
    base_transient = 6 * chunk + inspector.working_bytes(batch, logits=False)
    base = MemoryEstimate(pooled + rows, base_transient, "pooled matrices and per-row statistics")
    if base.total > budget.bytes:
        tq = max(q for _, _, q, _ in shapes.values())
        raise MemoryBudgetError(
            f"{tq} tokens do not fit even without full weights: pooled attention and every head's statistics "
            f"need about {base.describe()}, more than the memory budget of {budget.describe()}; ways out: a "
            "shorter input (--max-length), raise the budget (max_memory= / --max-memory), or the `long` command "
            "for statistics only",
            estimate=base.total, budget=budget.bytes,
        )
    return base, chunk


def _layers_are(ids: list[int]) -> str:
    return f"layer {ids[0]} is" if len(ids) == 1 else f"layers {', '.join(map(str, ids))} are"


def plan_capture(
    inspector: AttentionInspector,
    batch: Batch,
    *,
    stack: str = "self",
    layer: int | None = None,
    head: int | None = None,
    layers: Sequence[int] | None = None,
    budget: MemoryBudget | None = None,
    max_memory: int | str | None = None,
    max_blocks: int = MAX_BLOCKS,
    draw_limit: int = DRAW_LIMIT,
    pooled: bool | None = None,
) -> CapturePlan:
    """Decide what one run keeps of ``batch`` (one text) within the memory budget; the model does not run.

    ``inspect`` asks with ``stack`` (``self``, i.e. ``encoder`` of encoder-decoder models, ``decoder`` or
    ``cross``), ``layer`` and ``head`` (the drawn head); ``view`` with ``layers`` (model indices kept at full
    resolution in every stack; None: all). ``budget`` (or ``max_memory``, bytes or ``"8GB"``; default half of
    the available memory) bounds the plan. When the full capture of every layer and head fits (``pooled``
    None) or ``pooled`` is False, every kept layer is ``"full"``; else every layer is ``"pooled"`` and the
    drawn layer (or only the drawn head), or ``view``'s chosen layers, keep full weights when they fit next to
    the pooled matrices and the input has at most ``draw_limit`` tokens. Raises :class:`InputError` for
    indices out of range and :class:`MemoryBudgetError` when even the pooled plan does not fit.
    """
    budget = budget or memory_budget(max_memory, inspector.device)
    shapes = inspector.stack_shapes(batch)
    full_estimate = inspector.batch_estimate(batch)
    if layer is not None:
        head = head or 0
        stack = model_stack(stack, inspector.is_encoder_decoder)
        if stack not in shapes:
            raise InputError(f"no '{stack}' attention in this model; choose one of {sorted(shapes)}")
        nl, nh = shapes[stack][:2]
        if not (0 <= layer < nl and 0 <= head < nh):
            raise InputError(f"layer {layer}, head {head} is out of range; this model has layers 0..{nl - 1}, heads 0..{nh - 1}")
    common = dict(batch=batch, budget=budget, full_estimate=full_estimate, shapes=shapes, max_blocks=max_blocks,
                  layers=None if layers is None else sorted(set(layers)))
    if layer is not None:
        common.update(stack=stack, layer=layer, head=head)
    if pooled is None:
        pooled = full_estimate.total > budget.bytes
    if not pooled:
        kept = common["layers"]
        modes = {(s, i): "full" for s, (nl, _, _, _) in shapes.items() for i in range(nl) if kept is None or i in kept}
        return CapturePlan(estimate=inspector.batch_estimate(batch, kept), modes=modes, **common)
    base, chunk = _pooled_base(inspector, batch, shapes, budget, max_blocks)
    every = {(s, i): "pooled" for s, (nl, _, _, _) in shapes.items() for i in range(nl)}
    if layer is not None:  # inspect: every layer pooled, the drawn layer (or head) full as well when it fits
        nh, tq, tk = shapes[stack][1:]
        full_heads: dict[tuple[str, int], list[int]] = {}
        kept_bytes = base.kept
        one = tq * tk * 4
        if max(tq, tk) <= draw_limit:
            if base.total + nh * one <= budget.bytes:
                full_heads[(stack, layer)] = list(range(nh))
                kept_bytes += nh * one
            elif base.total + one <= budget.bytes:
                full_heads[(stack, layer)] = [head]
                kept_bytes += one
        estimate = MemoryEstimate(kept_bytes, base.transient, "pooled matrices, per-row statistics and the drawn weights")
        return CapturePlan(estimate=estimate, modes=every, full_heads=full_heads, chunk_bytes=chunk,
                           notes=[f"full capture would need about {format_bytes(full_estimate.total)}"], **common)
    # view: the chosen layers full (every head, every stack) when they fit next to the pooled rest
    limit = min(nl for nl, _, _, _ in shapes.values())
    for i in layers or []:
        if not isinstance(i, int) or not 0 <= i < limit:
            raise InputError(f"layer {i} is out of range; valid layers: 0..{limit - 1}")
    chosen = sorted(set(layers or []))
    notes: list[str] = []
    full_bytes = 2 * sum(nh * tq * tk * 4 * len([i for i in chosen if i < nl]) for nl, nh, tq, tk in shapes.values())
    longest = max(max(tq, tk) for _, _, tq, tk in shapes.values())
    if chosen and longest > draw_limit:
        notes.append(f"{_layers_are(chosen)} pooled too: {longest} tokens is more than the "
                     f"{draw_limit} a page draws at full resolution")
        chosen = []
    elif chosen and base.total + full_bytes > budget.bytes:
        notes.append(f"{_layers_are(chosen)} pooled too: the full weights need about "
                     f"{format_bytes(full_bytes)} more, beyond the memory budget of {budget.describe()}")
        chosen = []
    modes = {key: ("full" if key[1] in chosen else mode) for key, mode in every.items()}
    full_heads = {(s, i): list(range(shapes[s][1])) for (s, i), mode in modes.items() if mode == "full"}
    estimate = MemoryEstimate(base.kept + (full_bytes if chosen else 0), base.transient,
                              "pooled matrices, per-row statistics and the chosen layers' weights")
    return CapturePlan(estimate=estimate, modes=modes, full_heads=full_heads, chunk_bytes=chunk, notes=notes, **common)


def run_plan(inspector: AttentionInspector, plan: CapturePlan) -> Captured:
    """Run ``plan`` (:func:`plan_capture`) once through :meth:`AttentionInspector.run` on its own batch.

    A plan without pooled layers returns the :class:`AttentionResult` of
    :meth:`AttentionInspector.capture_batch` (its ``layers``; float32 weights, as ``inspector(text)`` gives).
    A pooled plan runs the model's backbone (``model.base_model``: no ``[T, vocab]`` logits) with a
    :class:`~hf_attn_inspect.stats.pooled.PooledStatsRecorder` and returns ``inspect``'s
    :class:`~hf_attn_inspect.runs.captured.LongCapture` or ``view``'s
    :class:`~hf_attn_inspect.runs.captured.ExplorerCapture` (every head's metrics equal to the streaming
    statistics, pooled block sums equal to pooling the full weights, kept weights equal to the full capture's).
    """
    batch = plan.batch
    if not plan.pooled:
        return inspector.capture_batch(batch, layers=plan.layers, budget=plan.budget)[0]
    pool_layers = None if not plan.for_explorer else plan.layers_in("pooled")
    recorder = PooledStatsRecorder(batch.stack_masks(), full=plan.full_heads, pool_layers=pool_layers,
                                   max_blocks=plan.max_blocks, chunk_bytes=plan.chunk_bytes)
    inspector.backbone.run(batch, recorder)
    if plan.for_explorer:
        return _explorer_capture(inspector, plan, recorder)
    return _long_capture(inspector, plan, recorder)


def _long_capture(inspector: AttentionInspector, plan: CapturePlan, recorder: PooledStatsRecorder) -> LongCapture:
    batch, stack, layer, head = plan.batch, plan.stack, plan.layer, plan.head
    if stack not in recorder.pooled:
        raise CaptureError(f"no '{stack}' attention was captured from {type(inspector.model).__name__}")
    metrics_stack = key_stack(stack)
    table = recorder.head_table(batch, metrics_stack)
    layer_ids = sorted(recorder.pooled[stack])
    pooled_t = torch.stack([recorder.pooled[stack][i][0] for i in layer_ids])
    q_edges, k_edges = recorder.edges[stack]
    tokens = batch.tokens(0, decoder=query_stack(stack) == DECODER)
    key_tokens = batch.tokens(0, decoder=key_stack(stack) == DECODER)
    n_q, n_k = len(tokens), len(key_tokens)
    layer_w = head_w = None
    kept_w = recorder.weights.get(stack, {}).get(layer)
    if kept_w is not None:
        if kept_w.shape[1] == plan.shapes[stack][1]:
            layer_w = kept_w[0, :, :n_q, :n_k]
            head_w = layer_w[head]
        else:
            head_w = kept_w[0, 0, :n_q, :n_k]
    return LongCapture(
        model_name=inspector.name, tokens=tokens, key_tokens=key_tokens, stack=stack, metrics_stack=metrics_stack,
        layer=layer, head=head, table=table, pooled=pooled_t, q_edges=q_edges, k_edges=k_edges,
        layer_ids=layer_ids, head_ids=list(range(pooled_t.shape[1])), plan=plan,
        truncated=bool(batch.truncated[0]) if batch.truncated else False,
        causal=stack in batch.causal_stacks or metrics_stack in batch.causal_stacks,
        head_weights=head_w, layer_weights=layer_w, notes=list(plan.notes),
    )


def _explorer_capture(inspector: AttentionInspector, plan: CapturePlan, recorder: PooledStatsRecorder) -> ExplorerCapture:
    batch = plan.batch
    tables = {result_stack(name): recorder.head_table(batch, name) for name in self_attention_stacks(plan.shapes)}
    pooled = {}
    for name, per_layer in recorder.pooled.items():
        ids = sorted(per_layer)
        if ids:
            q_edges, k_edges = recorder.edges[name]
            pooled[result_stack(name)] = PooledStack(
                ids, torch.stack([per_layer[i][0] for i in ids]), q_edges, k_edges)
    result = inspector.results_from_weights(batch, recorder.weights)[0]
    result.model_name = inspector.name
    return ExplorerCapture(result=result, pooled=pooled, tables=tables, full_layers=plan.layers_in("full"),
                           plan=plan, notes=list(plan.notes))


def _one_batch(inspector: AttentionInspector, text: str | Batch, pair: str | None, max_length: int | None,
               truncation: bool) -> Batch:
    return text if isinstance(text, Batch) else inspector.encode(
        [text], None if pair is None else [pair], max_length=max_length, truncation=truncation)


def capture_within_budget(
    inspector: AttentionInspector,
    text: str | Batch,
    pair: str | None = None,
    *,
    layer: int = 0,
    head: int = 0,
    stack: str = "self",
    budget: MemoryBudget | None = None,
    max_memory: int | str | None = None,
    max_length: int | None = None,
    truncation: bool = True,
    max_blocks: int = MAX_BLOCKS,
    draw_limit: int = DRAW_LIMIT,
) -> LongCapture:
    """``inspect``'s pooled plan of one long ``text`` (or an encoded one-text :class:`Batch`), run: every
    head's metrics, every layer pooled into at most ``max_blocks x max_blocks`` blocks, and the drawn layer's or
    head's full weights when they fit the budget (see :func:`plan_capture`). Raises
    :class:`MemoryBudgetError` when even the pooled capture does not fit.
    """
    batch = _one_batch(inspector, text, pair, max_length, truncation)
    plan = plan_capture(inspector, batch, stack=stack, layer=layer, head=head, budget=budget, max_memory=max_memory,
                        max_blocks=max_blocks, draw_limit=draw_limit, pooled=True)
    return run_plan(inspector, plan)


def capture_for_explorer(
    inspector: AttentionInspector,
    text: str | Batch,
    pair: str | None = None,
    *,
    layers: list[int] | None = None,
    budget: MemoryBudget | None = None,
    max_memory: int | str | None = None,
    max_length: int | None = None,
    truncation: bool = True,
    max_blocks: int = MAX_BLOCKS,
    draw_limit: int = DRAW_LIMIT,
) -> ExplorerCapture:
    """``view``'s pooled plan of one long ``text`` (or an encoded one-text :class:`Batch`), run: full weights
    (every head) of the chosen ``layers`` (model indices, in every stack) when they fit the budget next to the
    pooled capture and the input has at most ``draw_limit`` tokens, every other layer pooled into at most
    ``max_blocks x max_blocks`` blocks per head, and every head's metrics. Raises :class:`MemoryBudgetError`
    when even the pooled capture does not fit.
    """
    batch = _one_batch(inspector, text, pair, max_length, truncation)
    plan = plan_capture(inspector, batch, layers=layers, budget=budget, max_memory=max_memory,
                        max_blocks=max_blocks, draw_limit=draw_limit, pooled=True)
    return run_plan(inspector, plan)
