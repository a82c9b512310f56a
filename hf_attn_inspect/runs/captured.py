"""A capture plan (:class:`CapturePlan`, made by :func:`hf_attn_inspect.runs.planner.plan_capture`) and what
a pooled plan keeps of one long input, as the commands draw it.

:class:`LongCapture` is ``inspect``'s (every head's metrics, every layer pooled, the drawn layer or head at full
resolution when it fits); :class:`ExplorerCapture` is ``view``'s (chosen layers full, the others pooled as
:class:`PooledStack`). Both carry the :class:`CapturePlan` they ran, whose estimates, budget and
:meth:`CapturePlan.kept` sentence they report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch

from ..capture.inputs import Batch
from ..capture.pooled import MAX_BLOCKS, block_edges
from ..capture.result import AttentionResult
from ..core.memory import MemoryBudget, MemoryEstimate

__all__ = ["CapturePlan", "LongCapture", "PooledStack", "ExplorerCapture"]


@dataclass
class CapturePlan:
    """What one run keeps of one encoded ``batch``, decided by :func:`~hf_attn_inspect.runs.planner.plan_capture`.

    ``modes[(stack, layer)]`` is ``"full"`` or ``"pooled"`` (see :mod:`hf_attn_inspect.runs.planner`) for every layer the
    run keeps; ``full_heads[(stack, layer)]`` the heads kept at full resolution on a pooled plan.
    ``full_estimate`` is what the full capture of every layer and head needs, ``estimate`` what this plan
    needs, ``budget`` what both were compared with. ``stack``/``layer``/``head`` are the drawn head of an
    ``inspect`` plan (None for ``view``), ``layers`` the layers asked for at full resolution (None: all).
    ``chunk_bytes`` bounds one block of weights of the pooled run; ``notes`` say why asked-for layers were
    not kept in full.
    """

    batch: Batch
    budget: MemoryBudget
    full_estimate: MemoryEstimate
    estimate: MemoryEstimate
    shapes: dict[str, tuple[int, int, int, int]]
    modes: dict[tuple[str, int], str]
    full_heads: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    stack: str | None = None
    layer: int | None = None
    head: int | None = None
    layers: list[int] | None = None
    max_blocks: int = MAX_BLOCKS
    chunk_bytes: int = 64 * 2**20
    notes: list[str] = field(default_factory=list)

    @property
    def pooled(self) -> bool:
        """True when some layer is pooled (the input is too long for the full capture)."""
        return "pooled" in self.modes.values()

    @property
    def for_explorer(self) -> bool:
        """True for ``view``'s plan (no drawn head)."""
        return self.layer is None

    def layers_in(self, mode: str, stack: str | None = None) -> list[int]:
        """The layer ids in ``mode`` (of ``stack``, else of any stack), sorted."""
        return sorted({i for (s, i), m in self.modes.items() if m == mode and stack in (None, s)})

    def _blocks(self, stack: str) -> tuple[int, int]:
        _, _, tq, tk = self.shapes[stack]
        return len(block_edges(tq, self.max_blocks)) - 1, len(block_edges(tk, self.max_blocks)) - 1

    def kept(self) -> str:
        """One sentence saying what the run keeps (the commands print it)."""
        if not self.pooled:
            which = "every layer" if self.layers is None else f"layers {', '.join(map(str, self.layers))}"
            return f"full weights of every head of {which}"
        if not self.for_explorer:
            nq, nk = self._blocks(self.stack)
            heads = self.full_heads.get((self.stack, self.layer))
            full = ("no full weights" if not heads
                    else f"full weights of every head of layer {self.layer}" if len(heads) == self.shapes[self.stack][1]
                    else f"full weights of layer {self.layer} head {self.head} only")
            return (f"kept every head's metrics and class (computed block by block, no [T, T] matrix), "
                    f"attention pooled into {nq} x {nk} blocks for every head, and {full}")
        some = next((s for s in self.shapes if self.layers_in("pooled", s)), None)
        blocks = "" if some is None else " (at most {} x {} blocks per head)".format(*self._blocks(some))
        chosen = self.layers_in("full")
        full = (f"full weights of layer{'s' * (len(chosen) != 1)} {', '.join(map(str, chosen))}"
                if chosen else "no full weights")
        which = "the other layers'" if chosen else "every layer's"
        return f"every head's metrics, {which} attention pooled{blocks}, and {full}"

    def describe(self) -> str:
        """One line: each stack's layers by mode (and the heads of pooled layers also kept in full), and the
        estimate against the budget."""
        parts = []
        for stack, (_, nh, _, _) in self.shapes.items():
            modes = [f"{mode} {_ids(ids)}" for mode in ("full", "pooled") if (ids := self.layers_in(mode, stack))]
            modes += [f"{len(heads)} of {nh} heads of layer {i} also full" for (s, i), heads in self.full_heads.items()
                      if s == stack and self.modes.get((s, i)) == "pooled"]
            if modes:
                parts.append(f"{stack}: {', '.join(modes)}")
        return f"{'; '.join(parts)}; needs about {self.estimate.describe()} of {self.budget.describe()}"


def _ids(ids: list[int]) -> str:
    return f"layer{'s' * (len(ids) != 1)} {', '.join(map(str, ids))}"


class _Planned:
    """The plan's estimates, budget and kept sentence, read through from ``self.plan``."""

    plan: CapturePlan

    @property
    def full_estimate(self) -> MemoryEstimate:
        """What the full capture of every layer and head would have needed."""
        return self.plan.full_estimate

    @property
    def estimate(self) -> MemoryEstimate:
        """What the plan that ran needed."""
        return self.plan.estimate

    @property
    def budget(self) -> MemoryBudget:
        """The memory budget both estimates were compared with."""
        return self.plan.budget

    def kept(self) -> str:
        """One sentence saying what was kept (for the command's report; :meth:`CapturePlan.kept`)."""
        return self.plan.kept()


@dataclass
class LongCapture(_Planned):
    """What ``inspect``'s pooled plan kept of one long input.

    ``table``: one row per (layer, head) of the self-attention stack ``metrics_stack`` with every metric,
    ``column_share``/``column_target``, ``entropy_ratio``, ``pattern`` and ``class``. ``pooled``: float64
    ``[layers, heads, n_q_blocks, n_k_blocks]`` block sums of the drawn ``stack``'s weights, blocks given by
    ``q_edges``/``k_edges`` (token positions; :func:`~hf_attn_inspect.capture.pooled.block_edges`).
    ``head_weights`` ``[T_q, T_k]`` / ``layer_weights`` ``[heads, T_q, T_k]``: full float32 weights of the
    drawn head / layer, or None when they were not kept. ``plan`` is the plan that ran (``full_estimate``:
    what the full capture would have needed, ``estimate``: what this capture planned, ``budget``).
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
    plan: CapturePlan
    truncated: bool = False
    causal: bool = False
    head_weights: torch.Tensor | None = None
    layer_weights: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        """Number of query tokens of the drawn stack."""
        return len(self.tokens)


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
class ExplorerCapture(_Planned):
    """What ``view``'s pooled plan kept of one long input for the explorer page.

    ``result``: an :class:`~hf_attn_inspect.capture.result.AttentionResult` with the full weights of the
    layers in ``full_layers`` only (no layer at all when none fit: ``result.num_layers == 0``; tokens and
    every stack's labels are there either way). ``pooled[stack]`` (``self``, ``decoder``, ``cross``, as
    :meth:`AttentionResult.stack` names them): the other layers, pooled. ``tables[stack]``: every head's
    metrics and class of each self-attention stack from the block-by-block statistics (one row per model
    layer and head). ``notes``: why chosen layers were not kept in full, if any. ``plan``: the plan that ran.
    """

    result: AttentionResult
    pooled: dict[str, PooledStack]
    tables: dict[str, pd.DataFrame]
    full_layers: list[int]
    plan: CapturePlan
    notes: list[str] = field(default_factory=list)
