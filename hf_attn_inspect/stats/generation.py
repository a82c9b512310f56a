"""Row statistics of a generation: each position's row quantities, step by step, without keeping ``[T, T]``."""

from __future__ import annotations

from typing import Sequence

import torch

from ..capture.recorders import AttentionCall, Recorder
from ..core.stacks import DECODER, SELF
from .metrics import row_quantities

__all__ = ["GenerationRowStatsRecorder"]


class GenerationRowStatsRecorder(Recorder):
    """Keeps the :data:`~hf_attn_inspect.stats.metrics.ROW_QUANTITIES` of every row the generating stack
    (``self`` or ``decoder``) computes while generating, one step at a time: the step's weights (the prompt's
    rows at the first step, one row later) are reduced to ``[batch, heads, rows]`` per quantity at once, so no
    ``[T, T]`` matrix is kept. After :meth:`finish`, ``stats[layer][name]`` is ``[batch, heads, T]`` (rows by
    position, on the CPU); ``layers`` of ``None`` keeps every layer."""

    needs_weights = True

    def __init__(self, layers: Sequence[int] | None = None) -> None:
        self.layers = None if layers is None else set(layers)
        self.parts: dict[int, list[dict[str, torch.Tensor]]] = {}
        self.rows: dict[int, int] = {}
        self.stats: dict[int, dict[str, torch.Tensor]] = {}

    def record(self, call: AttentionCall) -> None:
        site = call.site
        if site.stack not in (SELF, DECODER) or (self.layers is not None and site.layer not in self.layers):
            return
        w = call.weights
        seen = self.rows.get(site.layer, 0)
        valid = torch.ones(w.shape[0], w.shape[-1], dtype=torch.bool, device=w.device)
        self.parts.setdefault(site.layer, []).append(row_quantities(w, valid, q_offset=seen))
        self.rows[site.layer] = seen + w.shape[2]

    def finish(self) -> None:
        for layer, parts in self.parts.items():
            self.stats[layer] = {name: torch.cat([p[name] for p in parts], -1).float().cpu() for name in parts[0]}
        self.parts.clear()
