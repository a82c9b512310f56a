"""Inputs too long for full weights: keep what fits the memory budget, measure every head anyway.

:func:`capture_within_budget` is the engine behind ``hf-attn-inspect inspect`` when the full capture
(:meth:`~hf_attn_inspect.capture.inspector.AttentionInspector.estimate_memory`) exceeds the memory budget
(:func:`~hf_attn_inspect.core.memory.memory_budget`). One run of the model's backbone through
:class:`~hf_attn_inspect.stats.pooled.PooledStatsProbe` gives:

- every head's metrics and pattern class (``O(T)`` per head, equal to the streaming statistics);
- every head's attention pooled into at most ``max_blocks x max_blocks`` blocks (block sums, computed inside
  the capture from exact weights; never a ``[T, T]`` matrix per head);
- full weights of the drawn layer (or only the drawn head) when they fit the budget and the input is at
  most ``draw_limit`` tokens (a figure cannot show more), else none.

When even that does not fit, :class:`~hf_attn_inspect.core.errors.MemoryBudgetError` names the estimate,
the budget and the ways out.

:func:`capture_for_explorer` is the same run for ``hf-attn-inspect view``: full weights of chosen layers (every
head, every stack), every other layer pooled, every head's metrics; the explorer draws the pooled layers as
block heatmaps (:func:`hf_attn_inspect.views.explorer.write_explorer` with ``pooled=``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch

from ..capture.inputs import Batch
from ..capture.inspector import AttentionInspector
from ..capture.result import AttentionResult
from ..capture.pooled import block_edges
from ..core.errors import CaptureError, InputError, MemoryBudgetError
from ..core.memory import MemoryBudget, MemoryEstimate, format_bytes, memory_budget
from ..stats.metrics import ROW_QUANTITIES
from ..stats.pooled import PooledStatsProbe

__all__ = ["LongCapture", "capture_within_budget", "PooledStack", "ExplorerCapture", "capture_for_explorer", "DRAW_LIMIT"]

#: Longest input (tokens per side) whose full weights a figure draws; longer ones are drawn pooled.
DRAW_LIMIT = 2048


@dataclass
class LongCapture:
    """What :func:`capture_within_budget` kept of one long input.

    ``table``: one row per (layer, head) of the self-attention stack ``metrics_stack`` with every metric,
    ``column_share``/``column_target``, ``entropy_ratio``, ``pattern`` and ``class``. ``pooled``: float64
    ``[layers, heads, n_q_blocks, n_k_blocks]`` block sums of the drawn ``stack``'s weights, blocks given by
    ``q_edges``/``k_edges`` (token positions; :func:`~hf_attn_inspect.capture.pooled.block_edges`).
    ``head_weights`` ``[T_q, T_k]`` / ``layer_weights`` ``[heads, T_q, T_k]``: full float32 weights of the
    drawn head / layer, or None when they were not kept. ``full_estimate`` is what the full capture would
    have needed, ``estimate`` what this capture planned, ``budget`` the budget both were compared with.
    """

    model_name: str
    tokens: list[str]
    key_tokens: list[str]
    stack: str
    metrics_stack: str
    layer: int
    head: int
    table: pd.DataFrame
    pooled: torch.Tensor
    q_edges: torch.Tensor
    k_edges: torch.Tensor
    layer_ids: list[int]
    head_ids: list[int]
    full_estimate: MemoryEstimate
    estimate: MemoryEstimate
    budget: MemoryBudget
    truncated: bool = False
    causal: bool = False
    head_weights: torch.Tensor | None = None
    layer_weights: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        """Number of query tokens of the drawn stack."""
        return len(self.tokens)

    def kept(self) -> str:
        """One sentence saying what was kept (for the command's report)."""
        nq, nk = self.pooled.shape[-2:]
        full = ("full weights of every head of layer " f"{self.layer}" if self.layer_weights is not None
                else f"full weights of layer {self.layer} head {self.head} only" if self.head_weights is not None
                else "no full weights")
        return (f"kept every head's metrics and class (computed block by block, no [T, T] matrix), "
                f"attention pooled into {nq} x {nk} blocks for every head, and {full}")


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
        if name != "cross":
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


def capture_within_budget(
    inspector: AttentionInspector,
    text: str,
    pair: str | None = None,
    *,
    layer: int = 0,
    head: int = 0,
    stack: str = "self",
    budget: MemoryBudget | None = None,
    max_memory: int | str | None = None,
    max_length: int | None = None,
    truncation: bool = True,
    max_blocks: int = 256,
    draw_limit: int = DRAW_LIMIT,
) -> LongCapture:
    """Capture one long ``text`` within the memory budget: every head's metrics, pooled attention, and the
    drawn layer's or head's full weights when they fit (see the module docstring).

    ``stack`` is ``self`` (``encoder`` for encoder-decoder models), ``decoder`` or ``cross``; ``layer``/``head``
    the drawn head. ``budget`` (or ``max_memory``, bytes or ``"8GB"``; default half of the available memory)
    bounds the plan; ``max_blocks`` the pooled matrices' sides; inputs longer than ``draw_limit`` tokens keep
    no full weights. Raises :class:`MemoryBudgetError` when even the pooled capture does not fit.
    """
    budget = budget or memory_budget(max_memory, inspector.device)
    batch = inspector.encode([text], None if pair is None else [pair], max_length=max_length, truncation=truncation)
    if inspector.is_encoder_decoder and stack == "self":
        stack = "encoder"
    shapes = inspector.stack_shapes(batch)
    if stack not in shapes:
        raise InputError(f"no '{stack}' attention in this model; choose one of {sorted(shapes)}")
    nl, nh, tq, tk = shapes[stack]
    if not (0 <= layer < nl and 0 <= head < nh):
        raise InputError(f"layer {layer}, head {head} is out of range; this model has layers 0..{nl - 1}, heads 0..{nh - 1}")
    full_estimate = inspector.batch_estimate(batch)
    base, chunk = _pooled_base(inspector, batch, shapes, budget, max_blocks)
    base_kept, base_transient = base.kept, base.transient
    full: dict[tuple[str, int], list[int]] = {}
    kept = base_kept
    one = tq * tk * 4
    if max(tq, tk) <= draw_limit:
        if base.total + nh * one <= budget.bytes:
            full[(stack, layer)] = list(range(nh))
            kept += nh * one
        elif base.total + one <= budget.bytes:
            full[(stack, layer)] = [head]
            kept += one
    estimate = MemoryEstimate(kept, base_transient, "pooled matrices, per-row statistics and the drawn weights")
    probe = PooledStatsProbe(batch.stack_masks(), full=full, max_blocks=max_blocks, chunk_bytes=chunk)
    backbone = getattr(inspector.model, "base_model", inspector.model)
    runner = AttentionInspector(backbone, inspector.tokenizer, name=inspector.name) if backbone is not inspector.model else inspector
    runner.run(batch, probe)
    if stack not in probe.pooled:
        raise CaptureError(f"no '{stack}' attention was captured from {type(inspector.model).__name__}")
    metrics_stack = stack if stack != "cross" else "encoder"
    table = probe.head_table(batch, metrics_stack)
    layer_ids = sorted(probe.pooled[stack])
    pooled_t = torch.stack([probe.pooled[stack][i][0] for i in layer_ids])
    q_edges, k_edges = probe.edges[stack]
    decoder_side = stack in ("decoder", "cross")
    tokens = batch.tokens(0, decoder=decoder_side)
    key_tokens = batch.tokens(0, decoder=stack == "decoder")
    n_q, n_k = len(tokens), len(key_tokens)
    layer_w = head_w = None
    kept_w = probe.weights.get(stack, {}).get(layer)
    if kept_w is not None:
        if kept_w.shape[1] == nh:
            layer_w = kept_w[0, :, :n_q, :n_k]
            head_w = layer_w[head]
        else:
            head_w = kept_w[0, 0, :n_q, :n_k]
    return LongCapture(
        model_name=inspector.name, tokens=tokens, key_tokens=key_tokens, stack=stack, metrics_stack=metrics_stack,
        layer=layer, head=head, table=table, pooled=pooled_t, q_edges=q_edges, k_edges=k_edges,
        layer_ids=layer_ids, head_ids=list(range(pooled_t.shape[1])), full_estimate=full_estimate,
        estimate=estimate, budget=budget, truncated=bool(batch.truncated[0]) if batch.truncated else False,
        causal=stack in batch.causal_stacks or metrics_stack in batch.causal_stacks,
        head_weights=head_w, layer_weights=layer_w,
        notes=[f"full capture would need about {format_bytes(full_estimate.total)}"],
    )


@dataclass
class PooledStack:
    """One attention stack's pooled layers for the explorer: ``sums`` float64 ``[layers, heads, n_q_blocks,
    n_k_blocks]`` block sums (cell ``(a, b)``: total weight the query rows of block ``a`` give to the keys of
    block ``b``) of the model layers ``layer_ids``, blocks given by ``q_edges``/``k_edges`` (token positions)."""

    layer_ids: list[int]
    sums: torch.Tensor
    q_edges: torch.Tensor
    k_edges: torch.Tensor


@dataclass
class ExplorerCapture:
    """What :func:`capture_for_explorer` kept of one long input for the explorer page.

    ``result``: an :class:`~hf_attn_inspect.capture.result.AttentionResult` with the full weights of the
    layers in ``full_layers`` only (no layer at all when none fit: ``result.num_layers == 0``; tokens and
    every stack's labels are there either way). ``pooled[stack]`` (``self``, ``decoder``, ``cross``, as
    :meth:`AttentionResult.stack` names them): the other layers, pooled. ``tables[stack]``: every head's
    metrics and class of each self-attention stack from the block-by-block statistics (one row per model
    layer and head). ``notes``: why chosen layers were not kept in full, if any.
    """

    result: AttentionResult
    pooled: dict[str, PooledStack]
    tables: dict[str, pd.DataFrame]
    full_layers: list[int]
    full_estimate: MemoryEstimate
    estimate: MemoryEstimate
    budget: MemoryBudget
    notes: list[str] = field(default_factory=list)

    def kept(self) -> str:
        """One sentence saying what the page holds (for the command's report)."""
        some = next(iter(self.pooled.values()), None)
        blocks = "" if some is None else f" (at most {some.sums.shape[-2]} x {some.sums.shape[-1]} blocks per head)"
        full = (f"full weights of layer{'s' * (len(self.full_layers) != 1)} {', '.join(map(str, self.full_layers))}"
                if self.full_layers else "no full weights")
        which = "the other layers'" if self.full_layers else "every layer's"
        return f"every head's metrics, {which} attention pooled{blocks}, and {full}"


def _layers_are(ids: list[int]) -> str:
    return f"layer {ids[0]} is" if len(ids) == 1 else f"layers {', '.join(map(str, ids))} are"


def capture_for_explorer(
    inspector: AttentionInspector,
    text: str,
    pair: str | None = None,
    *,
    layers: list[int] | None = None,
    budget: MemoryBudget | None = None,
    max_memory: int | str | None = None,
    max_length: int | None = None,
    truncation: bool = True,
    max_blocks: int = 256,
    draw_limit: int = DRAW_LIMIT,
) -> ExplorerCapture:
    """Capture one long ``text`` for the explorer within the memory budget, in one run of the model through
    :class:`~hf_attn_inspect.stats.pooled.PooledStatsProbe`: full weights (every head) of the chosen ``layers``
    (model indices, in every stack) when they fit the budget next to the pooled capture and the input has at
    most ``draw_limit`` tokens, every other layer's attention pooled into at most ``max_blocks x max_blocks``
    blocks per head, and every head's metrics. Raises :class:`MemoryBudgetError` when even the pooled
    capture does not fit.
    """
    budget = budget or memory_budget(max_memory, inspector.device)
    batch = inspector.encode([text], None if pair is None else [pair], max_length=max_length, truncation=truncation)
    shapes = inspector.stack_shapes(batch)
    full_estimate = inspector.batch_estimate(batch)
    base, chunk = _pooled_base(inspector, batch, shapes, budget, max_blocks)
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
    full = {(name, i): list(range(nh)) for name, (nl, nh, _, _) in shapes.items() for i in chosen if i < nl}
    pool_layers = sorted({i for nl, _, _, _ in shapes.values() for i in range(nl)} - set(chosen))
    estimate = MemoryEstimate(base.kept + (full_bytes if chosen else 0), base.transient,
                              "pooled matrices, per-row statistics and the chosen layers' weights")
    probe = PooledStatsProbe(batch.stack_masks(), full=full, pool_layers=pool_layers, max_blocks=max_blocks,
                             chunk_bytes=chunk)
    backbone = getattr(inspector.model, "base_model", inspector.model)
    runner = AttentionInspector(backbone, inspector.tokenizer, name=inspector.name) if backbone is not inspector.model else inspector
    runner.run(batch, probe)
    tables = {("self" if name == "encoder" else name): probe.head_table(batch, name)
              for name in shapes if name != "cross"}
    pooled = {}
    for name, per_layer in probe.pooled.items():
        ids = sorted(per_layer)
        if ids:
            q_edges, k_edges = probe.edges[name]
            pooled["self" if name == "encoder" else name] = PooledStack(
                ids, torch.stack([per_layer[i][0] for i in ids]), q_edges, k_edges)
    result = inspector.results_from_weights(batch, probe.weights)[0]
    result.model_name = inspector.name
    return ExplorerCapture(result=result, pooled=pooled, tables=tables, full_layers=chosen,
                           full_estimate=full_estimate, estimate=estimate, budget=budget, notes=notes)
