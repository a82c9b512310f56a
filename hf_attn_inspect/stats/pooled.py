"""Every head's metrics and pattern class from a long input, measured without a ``[T, T]`` matrix per head.

:class:`PooledStatsRecorder` extends :class:`~hf_attn_inspect.capture.pooled.PooledRecorder` (exact weights
computed a block of query rows at a time, pooled matrices, selected full weights). Each self-attention
call's per-row quantities of :mod:`hf_attn_inspect.stats.metrics` come from its query and key through the
tiled statistics kernel (:func:`~hf_attn_inspect.core.kernels.attention_row_stats`, with the streaming
path's options, :func:`~hf_attn_inspect.stats.streaming.row_stats_options`); the blocks of weights add the
column sums. Models without the attention interface (eager fallback: full weights only) have each block
measured by :func:`~hf_attn_inspect.stats.metrics.row_quantities` with the block's ``q_offset`` instead.
After the run the rows become metrics through :func:`~hf_attn_inspect.stats.metrics.reduce_rows`, the
function that reduces the streaming statistics (:mod:`hf_attn_inspect.stats.streaming`) and materialised
weights alike, so the numbers equal :func:`~hf_attn_inspect.stats.streaming.streaming_head_metrics`.
Memory: ``O(T)`` per head plus one block.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from ..capture.inputs import Batch, KeyMasks
from ..capture.interface import Site
from ..capture.pooled import PooledRecorder
from ..capture.recorders import AttentionCall
from ..core.kernels import LOCAL_WINDOW, attention_row_stats
from ..core.stacks import is_self_attention
from .metrics import HEAD_METRICS, METRICS, ROW_QUANTITIES, entropy_ratio, reduce_rows, row_quantities
from ..core.masks import all_valid
from .patterns import PatternThresholds, name_patterns
from .streaming import row_stats_options
from .tables import head_frame

__all__ = ["PooledStatsRecorder"]


class PooledStatsRecorder(PooledRecorder):
    """A :class:`~hf_attn_inspect.capture.pooled.PooledRecorder` that also measures every self-attention
    head (``self``/``encoder``/``decoder`` stacks) from each block of weights.

    ``masks`` maps a stack to its :class:`~hf_attn_inspect.capture.inputs.KeyMasks` (``batch.stack_masks()``;
    padding never counts); other keywords go to the parent (``full``, ``pool_layers``, ``max_blocks``,
    ``chunk_bytes``). After a run, ``rows[stack][layer]`` holds ``{row quantity: float32 [batch, heads, T]}``
    and ``columns[stack][layer]`` the float64 ``[batch, heads, T]`` total weight each key receives from the
    real query rows; :meth:`head_table` turns them into the per-head table.
    """

    def __init__(
        self,
        masks: dict[str, KeyMasks] | None = None,
        *,
        sparsity_threshold: float = 0.3,
        local_window: int = LOCAL_WINDOW,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.masks = masks or {}
        self.sparsity_threshold = sparsity_threshold
        self.local_window = local_window
        self.rows: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
        self.columns: dict[str, dict[int, torch.Tensor]] = {}
        self._streamed: Site | None = None  # the site whose rows compute() took from the query and key

    def _valid(self, stack: str, b: int, t: int) -> KeyMasks:
        km = self.masks.get(stack)
        if km is None:
            ones = all_valid(b, t)
            return KeyMasks(ones, torch.zeros_like(ones), torch.zeros_like(ones))
        return km

    def compute(self, call: AttentionCall) -> tuple[torch.Tensor, None]:
        """The parent's blocks of weights (pooled, full where asked, column sums); a square self-attention
        call's row quantities come first, from its query and key through the tiled statistics kernel
        (:func:`~hf_attn_inspect.core.kernels.attention_row_stats`, the streaming path's numbers, several
        times faster than measuring each materialised block)."""
        site, query, key = call.site, call.query, call.key
        self._streamed = None
        if is_self_attention(site.stack) and key.shape[-2] == query.shape[-2]:
            b, t = query.shape[0], query.shape[-2]
            km = self._valid(site.stack, b, t)
            dev = query.device
            options, _ = row_stats_options(call, KeyMasks(km.valid.to(dev), km.special.to(dev), km.punctuation.to(dev)))
            rows = attention_row_stats(query, key, sparsity_threshold=self.sparsity_threshold,
                                       local_window=self.local_window, **options)
            self.rows.setdefault(site.stack, {})[site.layer] = {
                name: value.to("cpu", torch.float32) for name, value in rows.items() if name in ROW_QUANTITIES}
            self._streamed = site
        return super().compute(call)

    def on_rows(self, site: Site, module: torch.nn.Module | None, q0: int, weights: torch.Tensor) -> None:
        """Per-row quantities (unless :meth:`compute` took them from the query and key) and column sums of one
        block of rows (self-attention only; cross is skipped)."""
        if not is_self_attention(site.stack) or weights.shape[-1] < q0 + weights.shape[-2]:
            return
        b, h, tq, t = weights.shape
        dev = weights.device
        km = self._valid(site.stack, b, t)
        if self._streamed != site:  # eager fallback (full weights only): measure the block itself
            rows = row_quantities(
                weights, km.valid.to(dev), special=km.special.to(dev), punctuation=km.punctuation.to(dev),
                sparsity_threshold=self.sparsity_threshold, local_window=self.local_window, q_offset=q0,
            )
            store = self.rows.setdefault(site.stack, {}).setdefault(site.layer, {})
            for name, value in rows.items():
                if name not in store:
                    store[name] = torch.zeros(b, h, t)
                store[name][..., q0 : q0 + tq] = value.to("cpu", torch.float32)
        vq = km.valid[:, q0 : q0 + tq].to(dev, torch.float32).reshape(b, 1, 1, tq)
        cols = torch.matmul(vq, weights.float()).squeeze(-2).double().cpu()  # [B, H, T]
        columns = self.columns.setdefault(site.stack, {})
        columns[site.layer] = cols if site.layer not in columns else columns[site.layer] + cols

    def stack_metrics(self, stack: str, causal: bool) -> tuple[list[int], dict[str, torch.Tensor]]:
        """``(layer ids, {metric: [batch, layers, heads]})`` of one stack, plus ``column_share`` and ``column_key``
        (the largest mean column weight ``max_j mean_i a_ij`` over real keys, and that key)."""
        layers = sorted(self.rows.get(stack, {}))
        if not layers:
            return [], {}
        rows = {n: torch.stack([self.rows[stack][i][n] for i in layers], 1) for n in self.rows[stack][layers[0]]}
        b, t = rows["entropy"].shape[0], rows["entropy"].shape[-1]
        km = self._valid(stack, b, t)
        out = reduce_rows(rows, km.valid, causal=causal)
        cols = torch.stack([self.columns[stack][i] for i in layers], 1)  # [B, L, H, T]
        v = km.valid.double()
        cols = cols * v[:, None, None, :] / v.sum(-1).clamp_min(1.0)[:, None, None, None]
        share, key = cols.max(-1)
        out["column_share"] = share.float()
        out["column_key"] = key
        return layers, out

    def head_table(
        self,
        batch: Batch,
        stack: str = "self",
        *,
        thresholds: PatternThresholds | None = None,
    ) -> pd.DataFrame:
        """One row per (layer, head) of ``stack`` (sentences averaged): ``layer``, ``head``, every metric of
        :data:`~hf_attn_inspect.stats.metrics.METRICS`, ``column_share``, ``column_target`` (the key receiving
        it: its special token's text, else ``pos j``; from the first sentence), ``entropy_ratio``, ``pattern``
        and ``class``, as :func:`~hf_attn_inspect.stats.patterns.classify_heads` gives for stored weights."""
        layers, m = self.stack_metrics(stack, stack in batch.causal_stacks)
        if not layers:
            return pd.DataFrame(columns=["layer", "head", *METRICS])
        values = {k: v.numpy() for k, v in m.items() if k != "column_key"}
        values["entropy_ratio"] = entropy_ratio(m["entropy"], m["max_entropy"]).numpy()
        heads = list(range(m["entropy"].shape[-1]))
        df = head_frame(values, [*HEAD_METRICS, "entropy_ratio"], layers, heads)
        key = m["column_key"][0].reshape(-1).numpy()
        tokens = batch.tokens(0, decoder=stack == "decoder")
        special = (batch.decoder_special if stack == "decoder" else batch.special)
        is_special = special[0].tolist() if special is not None else [False] * len(tokens)
        df["column_target"] = [tokens[j] if j < len(tokens) and is_special[j] else f"pos {j}" for j in key]
        return name_patterns(df, thresholds)
