"""Per-head attention statistics streamed tile by tile from the query and key: no ``[T, T]`` matrix.

Long inputs cannot have their attention weights materialised (one 32-head layer at 32k tokens is 128 GiB
in float32). This module computes the per-row quantities of :mod:`hf_attn_inspect.stats.metrics`
(:data:`~hf_attn_inspect.stats.metrics.ROW_QUANTITIES`: entropy, diagonal, previous/next token, first token
(sink share), special tokens, punctuation, max weight, mean distance, local-window share, and the sums
behind ``weight_std``/``sparsity``) directly from the post-RoPE query and key, one query tile x key tile
block at a time, in two passes per query tile (flash-attention style):

1. row maximum ``m_i`` and normaliser ``l_i = sum_j exp(s_ij - m_i)`` (so ``lse_i = m_i + ln l_i``);
2. ``p_ij = exp(s_ij - lse_i)`` per block, accumulated into the row quantities; the entropy is
   ``lse_i - sum_j p_ij s_ij`` (computed as ``ln l_i - sum_j p_ij (s_ij - m_i)`` for float32 accuracy).

Peak memory is one ``[batch, heads, q_tile, k_tile]`` block plus ``O(T)`` per head. The rows are reduced
to metrics by :func:`hf_attn_inspect.stats.metrics.reduce_rows`, the same function that reduces the rows of
materialised weights, so both paths share every definition.

Inside a model, :class:`StreamingStatsProbe` receives every attention call through the one capture path
(:mod:`hf_attn_inspect.capture.interface`): it computes the layer's output with torch's fused
``scaled_dot_product_attention`` (the model's forward pass is unchanged up to sdpa rounding) and the
statistics with :func:`attention_row_stats`; it never builds the model's ``[B, 1, T, T]`` mask either:
masks arrive as a :class:`LazyMask` that evaluates transformers' own mask function block by block.
:func:`streaming_head_metrics` runs texts through an inspector and returns the one-row-per-(layer, head)
table of :func:`hf_attn_inspect.stats.analysis.head_metrics`, without ever holding weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers.masking_utils import (
    bidirectional_mask_function,
    causal_mask_function,
    prepare_padding_mask,
    sdpa_mask,
)

from ..capture.interface import Probe, Site, register_implementation
from ..core.kernels import mask_to_keep, repeat_kv
from ..core.errors import CaptureError, InputError
from ..core.tokens import punctuation_mask
from .metrics import LOCAL_WINDOW, METRICS, ROW_QUANTITIES, reduce_rows, row_quantities

__all__ = [
    "STREAMING_NAME",
    "DISTANCE_EDGES",
    "DISTANCE_BUCKETS",
    "LazyMask",
    "KeyMasks",
    "attention_row_stats",
    "distance_bucket_mass",
    "streaming_metrics",
    "fast_attention_output",
    "StreamingStatsProbe",
    "streaming_head_metrics",
    "run_streaming",
]

#: Attention implementation name under which the streaming probe's mask function is registered.
STREAMING_NAME = "hf_attn_inspect_streaming"

#: Upper edges (inclusive, in tokens of ``|i - j|``) of the distance buckets: 0, 1, 2-4, 5-16, ..., >4096.
DISTANCE_EDGES: tuple[int, ...] = (0, 1, 4, 16, 64, 256, 1024, 4096)
#: Labels of the buckets delimited by :data:`DISTANCE_EDGES` (the last one is open-ended).
DISTANCE_BUCKETS: tuple[str, ...] = ("0", "1", "2-4", "5-16", "17-64", "65-256", "257-1024", "1025-4096", ">4096")


# --------------------------------------------------------------------------------------------- masks
@dataclass
class LazyMask:
    """A model's attention mask that is never materialised: :meth:`block` builds one tile of it.

    Holds what transformers' mask builders receive (mask function, 2-D padding mask, offsets) and
    evaluates them with transformers' own ``sdpa_mask`` for ``[q0, q1) x [k0, k1)`` only, so every mask
    pattern a model defines (causal, bidirectional, sliding window, chunked, packed) is reproduced
    exactly with ``O(tile)`` memory. ``padding`` is the boolean ``[batch, kv]`` key mask, None when every
    key is real.
    """

    batch_size: int
    q_length: int
    kv_length: int
    q_offset: int
    kv_offset: int
    mask_function: Callable[..., Any]
    padding: torch.Tensor | None
    use_vmap: bool
    device: torch.device

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch_size, 1, self.q_length, self.kv_length)

    @property
    def plain_causal(self) -> bool:
        return self.mask_function is causal_mask_function

    @property
    def bidirectional(self) -> bool:
        return self.mask_function is bidirectional_mask_function

    @property
    def key_padding(self) -> torch.Tensor | None:
        """Boolean ``[batch, kv_length]`` mask of real keys, or None when all are real."""
        if self.padding is None:
            return None
        return self.padding[:, self.kv_offset : self.kv_offset + self.kv_length]

    def block(self, q0: int, q1: int, k0: int, k1: int) -> torch.Tensor:
        """Boolean keep-mask ``[batch, 1, q1 - q0, k1 - k0]`` of query rows ``q0..q1-1`` and keys ``k0..k1-1``."""
        out = sdpa_mask(
            batch_size=self.batch_size,
            q_length=q1 - q0,
            kv_length=k1 - k0,
            q_offset=self.q_offset + q0,
            kv_offset=self.kv_offset + k0,
            mask_function=self.mask_function,
            attention_mask=self.padding,
            allow_is_causal_skip=False,
            use_vmap=self.use_vmap,
            device=self.device,
        )
        return out


def _streaming_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Callable[..., Any] = causal_mask_function,
    attention_mask: torch.Tensor | None = None,
    use_vmap: bool = False,
    device: torch.device | str = "cpu",
    **kwargs: Any,
) -> LazyMask:
    """Mask function registered under :data:`STREAMING_NAME`: returns a :class:`LazyMask`, builds nothing."""
    padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
    if padding is not None:
        padding = padding.bool()
        if bool(padding.all()):
            padding = None
    return LazyMask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=int(q_offset),
        kv_offset=int(kv_offset),
        mask_function=mask_function,
        padding=padding,
        use_vmap=use_vmap,
        device=torch.device(device),
    )


register_implementation(STREAMING_NAME, _streaming_mask)


def _block_fn(mask: Any, t: int, s: int) -> Callable[[int, int, int, int], tuple[torch.Tensor | None, torch.Tensor | None]]:
    """Normalise ``mask`` (None, tensor, or object with ``block``) to ``f(q0,q1,k0,k1) -> (keep, bias)`` 4-D."""
    if mask is None:
        return lambda q0, q1, k0, k1: (None, None)
    if hasattr(mask, "block"):
        return lambda q0, q1, k0, k1: (mask.block(q0, q1, k0, k1), None)
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"mask must be a tensor, a LazyMask or None, got {type(mask).__name__}")
    m = mask
    while m.dim() < 4:
        m = m.unsqueeze(0)
    keep, bias = mask_to_keep(m)

    def fn(q0: int, q1: int, k0: int, k1: int):
        kb = keep[..., q0:q1, k0:k1] if keep.shape[-2] > 1 else keep[..., k0:k1]
        bb = None
        if bias is not None:
            bb = bias[..., q0:q1, k0:k1] if bias.shape[-2] > 1 else bias[..., k0:k1]
        return kb, bb

    return fn


def _to5(x: torch.Tensor, hkv: int, g: int) -> torch.Tensor:
    """``[B, 1|H, q, k]`` -> ``[B, 1|Hkv, 1|G, q, k]`` matching the grouped score layout."""
    b, h = x.shape[0], x.shape[1]
    if h == 1:
        return x.unsqueeze(2)
    return x.reshape(b, hkv, g, *x.shape[2:])


# ----------------------------------------------------------------------------------------- engine
def attention_row_stats(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    scale: float | None = None,
    mask: Any = None,
    causal: bool = False,
    window: int | None = None,
    key_valid: torch.Tensor | None = None,
    special: torch.Tensor | None = None,
    punctuation: torch.Tensor | None = None,
    softcap: float | None = None,
    sparsity_threshold: float = 0.3,
    local_window: int = LOCAL_WINDOW,
    distance_edges: Sequence[int] | None = None,
    q_tile: int = 256,
    k_tile: int = 1024,
) -> dict[str, torch.Tensor]:
    """Per-row attention quantities of every head, streamed from ``query`` and ``key`` tile by tile.

    ``query`` is ``[batch, heads, T, d]`` and ``key`` ``[batch, kv_heads, S, d]`` (``kv_heads`` dividing
    ``heads``: grouped-query heads share their key without it being repeated). Weights are
    ``softmax(q k^T * scale (+ softcap) + mask)`` exactly as in
    :func:`~hf_attn_inspect.core.kernels.scaled_dot_product_attention_with_weights`: ``mask`` is None, a boolean
    or additive tensor broadcasting to ``[batch, 1|heads, T, S]``, or a :class:`LazyMask`; ``causal``
    additionally masks keys after the query and ``window`` keys ``window`` or more tokens away (query
    ``i`` sits at position ``S - T + i``). Rows whose keys are all masked get all-zero weights.
    ``key_valid`` (boolean ``[batch, S]``) zeroes weights on padding keys without renormalising, as
    :func:`~hf_attn_inspect.stats.metrics.sentence_metrics` does; ``special``/``punctuation`` are boolean
    ``[batch, S]`` key masks. Returns ``{name: float32 [batch, heads, T]}`` for every name of
    :data:`~hf_attn_inspect.stats.metrics.ROW_QUANTITIES` plus ``lse`` (log-sum-exp of the scores, ``-inf`` on
    fully masked rows), and, when ``distance_edges`` is given, ``within`` ``[batch, heads, T, E]``: the
    weight at ``|i - j| <= edge`` for each edge. Memory: ``O(batch * heads * q_tile * k_tile)``.
    """
    if query.dim() != 4 or key.dim() != 4:
        raise InputError(f"query and key must be [batch, heads, T, d], got {tuple(query.shape)} and {tuple(key.shape)}")
    b, h, t, d = query.shape
    hkv, s = key.shape[1], key.shape[2]
    if h % hkv:
        raise InputError(f"{h} query heads cannot share {hkv} key heads evenly")
    g = h // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    q_tile, k_tile = max(1, int(q_tile)), max(1, int(k_tile))
    dev = query.device
    offset = s - t
    blocks = _block_fn(mask, t, s)
    edges = sorted(set(int(e) for e in (distance_edges or ())))
    all_edges = sorted(set(edges) | {int(local_window)})
    qg = query.reshape(b, hkv, g, t, d)
    kv5 = None
    if key_valid is not None:
        kvb = key_valid.to(dev).bool()
        if not bool(kvb.all()):
            kv5 = kvb.reshape(b, 1, 1, 1, s)
    # keys augmented with columns so that one GEMM e @ kaug gives, per row: e@K (entropy), sum e (mass),
    # sum e (j - k0) and sum e ((k1-1) - j) (distances, filled per tile), and the special/punctuation shares
    extra_names = [n for n, km in (("special_tokens", special), ("punctuation", punctuation)) if km is not None]
    kaug = torch.zeros(b, hkv, 1, s, d + 4 + len(extra_names), device=dev)
    kaug[..., :d] = key.unsqueeze(2).float()
    kaug[..., d] = 1.0
    for c, km in enumerate(km for km in (special, punctuation) if km is not None):
        kaug[..., d + 4 + c] = km.to(dev).float().reshape(b, 1, 1, s)
    col_one, col_fwd, col_bwd = d, d + 1, d + 2  # col d+3: spare (the -m column of the augmented query)
    ninf = float("-inf")
    zero = torch.zeros((), device=dev)
    bilinear = softcap is None

    out = {name: torch.zeros(b, hkv, g, t, device=dev) for name in ROW_QUANTITIES}
    out["lse"] = torch.full((b, hkv, g, t), ninf, device=dev)
    within_all = torch.zeros(b, hkv, g, t, len(all_edges), device=dev)
    max_edge = max(all_edges)

    for q0 in range(0, t, q_tile):
        q1 = min(t, q0 + q_tile)
        tq = q1 - q0
        qs = qg[..., q0:q1, :].float() * scale
        pmin, pmax = q0 + offset, q1 - 1 + offset
        qpos = torch.arange(pmin, pmax + 1, device=dev)
        tiles = []
        for k0 in range(0, s, k_tile):
            k1 = min(s, k0 + k_tile)
            if causal and k0 > pmax:
                break
            if window is not None and (k1 - 1 <= pmin - window or (not causal and k0 >= pmax + window)):
                continue
            if k1 - 1 <= pmin:
                lo, hi, side = pmin - (k1 - 1), pmax - k0, 1  # every key at or before every query
            elif k0 >= pmax:
                lo, hi, side = k0 - pmax, k1 - 1 - pmin, -1  # every key at or after every query
            else:
                lo, hi, side = 0, max(pmax - k0, k1 - 1 - pmin), (1 if causal else 0)  # causal: later keys masked
            index_mask = (causal and k1 - 1 > pmin) or (window is not None and hi >= window)
            tiles.append((k0, k1, lo, hi, side, index_mask))

        def scores(qmat: torch.Tensor, kmat: torch.Tensor, k0: int, k1: int, index_mask: bool):
            sc = torch.matmul(qmat, kmat[..., k0:k1, :].transpose(-1, -2))
            if softcap is not None:
                sc = torch.tanh(sc / softcap) * softcap
            keep, bias = blocks(q0, q1, k0, k1)
            if bias is not None:
                bias = _to5(bias.to(dev).float(), hkv, g)
                sc = sc + bias
            allow = None
            if index_mask:
                dd = qpos[:, None] - torch.arange(k0, k1, device=dev)[None, :]
                if causal:
                    allow = dd >= 0
                if window is not None:
                    near = dd < window if causal else dd.abs() < window
                    allow = near if allow is None else allow & near
            if keep is not None and not bool(keep.all()):
                k5 = _to5(keep.to(dev).bool(), hkv, g)
                allow = k5 if allow is None else allow & k5
            if allow is not None:
                sc.masked_fill_(~allow, ninf)
            return sc, bias

        # pass 1: row max m and normaliser l = sum_j exp(s_ij - m)
        m = torch.full((b, hkv, g, tq), ninf, device=dev)
        l = torch.zeros_like(m)
        kf = kaug[..., :d]
        for k0, k1, _, _, _, index_mask in tiles:
            sc, _ = scores(qs, kf, k0, k1, index_mask)
            m_new = torch.maximum(m, sc.amax(-1))
            m_safe = torch.where(torch.isinf(m_new), zero, m_new)
            l = l * torch.exp(m - m_safe) + sc.sub_(m_safe.unsqueeze(-1)).exp_().sum(-1)
            m = m_new
        m_safe = torch.where(torch.isinf(m), zero, m)
        has = l > 0
        inv_l = torch.where(has, 1.0 / l.clamp_min(1e-38), zero)
        log_l = torch.where(has, torch.log(l.clamp_min(1e-38)), zero)
        thr_l = (sparsity_threshold * l).unsqueeze(-1)  # p > thr  <=>  e > thr * l   (e = exp(s - m), p = e / l)

        # pass 2: e = exp(s - m) block by block (the -m comes out of the GEMM through an extra column)
        qaug = torch.zeros(*qs.shape[:-1], kaug.shape[-1], device=dev)
        qaug[..., :d] = qs
        qaug[..., d + 3] = -m_safe
        kaug[..., d + 3] = 1.0
        es = torch.zeros_like(m)
        sq = torch.zeros_like(m)
        above_n = torch.zeros_like(m)
        mass = torch.zeros_like(m)
        dist_sum = torch.zeros_like(m)
        first = torch.zeros_like(m)
        extra_acc = torch.zeros(*m.shape, len(extra_names), device=dev)
        nbr = torch.zeros(*m.shape, 3, device=dev)  # diagonal, previous, next
        emax = torch.zeros_like(m) if kv5 is not None else None
        within = torch.zeros(*m.shape, len(all_edges), device=dev)
        for k0, k1, lo, hi, side, index_mask in tiles:
            kaug[..., k0:k1, col_fwd] = torch.arange(0, k1 - k0, device=dev, dtype=torch.float32)
            kaug[..., k0:k1, col_bwd] = torch.arange(k1 - 1 - k0, -1, -1, device=dev, dtype=torch.float32)
            if bilinear:
                e, bias = scores(qaug, kaug, k0, k1, index_mask)
                e = e.exp_()
            else:  # softcap is not linear in the score: subtract the row max after it
                sc_full, bias = scores(qs, kf, k0, k1, index_mask)
                sc_full = sc_full - m_safe.unsqueeze(-1)
                e = torch.exp(sc_full)
            if kv5 is not None:
                kvt = kv5[..., k0:k1]
                if not bool(kvt.all()):
                    e = e * kvt
                emax = torch.maximum(emax, e.amax(-1))
            agg = torch.matmul(e, kaug[..., k0:k1, :])  # [.., tq, d + 4 + extras]
            rowsum = agg[..., col_one]
            mass += rowsum
            if bilinear:  # sum_j e_ij (s_ij - m_i) = q_i . (sum_j e_ij k_j) - m_i sum_j e_ij
                es += (agg[..., :d] * qs).sum(-1) - m_safe * rowsum
                if bias is not None:
                    es += (e * torch.where(e > 0, bias, zero)).sum(-1)
            else:
                es += torch.where(e > 0, e * sc_full, zero).sum(-1)
            sq += torch.linalg.vector_norm(e, dim=-1).square()
            above = e > thr_l
            if kv5 is not None and sparsity_threshold < 0:
                above = above & kv5[..., k0:k1]
            above_n += torch.count_nonzero(above, dim=-1)
            if extra_names:
                extra_acc += agg[..., d + 4 :]
            if side == 1:  # |i - j| = (i - (k1-1)) + ((k1-1) - j)
                dist_sum += agg[..., col_bwd] + rowsum * (qpos - (k1 - 1)).float()
            elif side == -1:  # |i - j| = (k0 - i) + (j - k0)
                dist_sum += agg[..., col_fwd] + rowsum * (k0 - qpos).float()
            else:
                dd = qpos[:, None] - torch.arange(k0, k1, device=dev)[None, :]
                dist_sum += (e * dd.abs().float()).sum(-1)
            if k0 == 0:
                first = e[..., 0].clone()
            if lo <= max_edge:
                # keys within |i - j| <= r of row i are one contiguous range: prefix sums answer every edge
                rel = (qpos - k0).unsqueeze(-1)  # row i's own column in this tile (may lie outside)
                if lo <= 1:
                    cols = rel + torch.tensor([0, -1, 1], device=dev)
                    inside = (cols >= 0) & (cols < k1 - k0)
                    picked = e.gather(-1, cols.clamp(0, k1 - k0 - 1).expand(*e.shape[:-1], 3))
                    nbr += torch.where(inside, picked, zero)
                todo = [(i, r) for i, r in enumerate(all_edges) if lo <= r < hi]
                for i, r in enumerate(all_edges):
                    if hi <= r:
                        within[..., i] += rowsum
                if todo:
                    csum = torch.nn.functional.pad(e.cumsum(-1), (1, 0))  # csum[.., c] = sum of columns < c
                    radius = torch.tensor([r for _, r in todo], device=dev)
                    left = (rel - radius).clamp(0, k1 - k0)
                    right = (rel + radius + 1).clamp(0, k1 - k0)
                    shape = (*e.shape[:-1], len(todo))
                    part = csum.gather(-1, right.expand(shape)) - csum.gather(-1, left.expand(shape))
                    within[..., [i for i, _ in todo]] += part

        sl = slice(q0, q1)
        il = inv_l
        mass = mass * il
        out["entropy"][..., sl] = torch.where(has, log_l * mass - es * il, zero)
        out["diagonal"][..., sl] = nbr[..., 0] * il
        out["previous_token"][..., sl] = nbr[..., 1] * il
        out["next_token"][..., sl] = nbr[..., 2] * il
        out["first_token"][..., sl] = first * il
        for c, name in enumerate(extra_names):
            out[name][..., sl] = extra_acc[..., c] * il
        out["mean_distance"][..., sl] = dist_sum * il
        out["mass"][..., sl] = mass
        out["sq_sum"][..., sl] = sq * il.square()
        out["above"][..., sl] = above_n
        out["max_weight"][..., sl] = il if emax is None else emax * il
        out["local_window"][..., sl] = within[..., all_edges.index(int(local_window))] * il
        out["lse"][..., sl] = torch.where(has, m_safe + log_l, torch.full_like(l, ninf))
        within_all[..., sl, :] = within * il.unsqueeze(-1)

    result = {name: v.reshape(b, h, t) for name, v in out.items()}
    if edges:
        idx = torch.tensor([all_edges.index(e) for e in edges], device=dev)
        result["within"] = within_all.index_select(-1, idx).reshape(b, h, t, len(edges))
    return result


def distance_bucket_mass(within: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """Weight per distance bucket ``[..., E + 1]`` from cumulative ``within`` ``[..., E]`` and total ``mass`` ``[...]``.

    Bucket ``0`` is ``|i - j| <= edge_0``, bucket ``k`` is ``edge_{k-1} < |i - j| <= edge_k``, the last one
    is beyond the last edge; the buckets of a row sum to its ``mass`` (1 for a real row).
    """
    cum = torch.cat([within, mass.unsqueeze(-1)], -1)
    return torch.diff(cum, dim=-1, prepend=torch.zeros_like(cum[..., :1])).clamp_min(0.0)


def streaming_metrics(
    query: torch.Tensor,
    key: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    causal: bool = False,
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
    """The :data:`~hf_attn_inspect.stats.metrics.METRICS` ``{name: [batch, heads]}`` of one attention call, streamed.

    Same numbers as :func:`~hf_attn_inspect.stats.metrics.sentence_metrics` on the materialised weights:
    ``valid`` (boolean ``[batch, T]``, default all real) selects the query rows that count and zeroes
    padding keys; ``causal`` also sets ``max_entropy``'s definition. Other keyword arguments go to
    :func:`attention_row_stats`.
    """
    b, t = query.shape[0], query.shape[-2]
    if valid is None:
        valid = torch.ones(b, t, dtype=torch.bool, device=query.device)
    kwargs.setdefault("key_valid", valid)
    rows = attention_row_stats(query, key, causal=causal, **kwargs)
    return reduce_rows(rows, valid.to(query.device), causal=causal)


# ------------------------------------------------------------------------------------- fast output
def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw: Any) -> torch.Tensor:
    if k.shape[1] != q.shape[1]:
        try:
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
        except (TypeError, RuntimeError):
            k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
    return F.scaled_dot_product_attention(q, k, v, **kw)


def fast_attention_output(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: Any,
    *,
    scale: float | None,
    softcap: float | None = None,
    q_tile: int = 1024,
) -> torch.Tensor:
    """The attention output ``[batch, heads, T, d]`` computed with torch's fused ``scaled_dot_product_attention``.

    Plain causal masks use ``is_causal`` (with right padding the real rows are unaffected; padding rows
    may then attend to padding keys, which no real token ever reads), bidirectional masks a
    ``[batch, 1, 1, S]`` key mask; any other :class:`LazyMask` (sliding window, chunked...) or a softcap
    is computed in query chunks of ``q_tile`` rows, so no ``[T, S]`` mask is built. Tensor masks are
    passed to sdpa as they are (boolean = keep, float = additive).
    """
    t, s = query.shape[-2], key.shape[-2]
    if isinstance(mask, torch.Tensor):
        keep, bias = mask_to_keep(mask)
        add = torch.zeros(keep.shape, dtype=query.dtype, device=query.device).masked_fill(
            ~keep, torch.finfo(query.dtype).min
        )
        if bias is not None:
            add = add + bias.to(query.dtype)
        if softcap is None:
            return _sdpa(query, key, value, attn_mask=add, scale=scale)
        mask = _TensorBlocks(add)
    if softcap is None and (mask is None or isinstance(mask, LazyMask)):
        if mask is None:
            return _sdpa(query, key, value, scale=scale)
        pad = mask.key_padding
        if mask.bidirectional:
            attn = None if pad is None else pad[:, None, None, :].to(query.device)
            return _sdpa(query, key, value, attn_mask=attn, scale=scale)
        right_padded = pad is None or bool((pad[:, :-1] >= pad[:, 1:]).all())
        if mask.plain_causal and t == s and mask.q_offset == 0 and mask.kv_offset == 0 and right_padded:
            return _sdpa(query, key, value, is_causal=True, scale=scale)
    # general case: chunks of query rows with their own (small) additive mask
    outs = []
    minimum = torch.finfo(query.dtype).min
    for q0 in range(0, t, q_tile):
        q1 = min(t, q0 + q_tile)
        add = None
        if mask is not None:
            keep = mask.block(q0, q1, 0, s).to(query.device)
            add = torch.zeros(keep.shape, dtype=torch.float32, device=query.device).masked_fill(~keep, minimum)
            if isinstance(mask, _TensorBlocks):
                add = mask.bias(q0, q1)
        if softcap is None:
            outs.append(_sdpa(query[..., q0:q1, :], key, value, attn_mask=None if add is None else add.to(query.dtype), scale=scale))
        else:
            kk, vv = repeat_kv(key, query.shape[1]), repeat_kv(value, query.shape[1])
            sc = torch.matmul(query[..., q0:q1, :].float(), kk.float().transpose(-1, -2))
            sc = sc * (1.0 / math.sqrt(query.shape[-1]) if scale is None else scale)
            sc = torch.tanh(sc / softcap) * softcap
            if add is not None:
                sc = sc + add.float()
            outs.append(torch.matmul(torch.softmax(sc, -1), vv.float()).to(query.dtype))
    return torch.cat(outs, dim=-2)


class _TensorBlocks:
    """Slices of an additive tensor mask, for the chunked softcap path."""

    def __init__(self, add: torch.Tensor) -> None:
        self.add = add

    def bias(self, q0: int, q1: int) -> torch.Tensor:
        return self.add[..., q0:q1, :] if self.add.shape[-2] > 1 else self.add

    def block(self, q0: int, q1: int, k0: int, k1: int) -> torch.Tensor:
        return self.bias(q0, q1)[..., k0:k1] > torch.finfo(self.add.dtype).min / 2


# ------------------------------------------------------------------------------------------ probe
@dataclass
class KeyMasks:
    """Boolean ``[batch, T]`` masks of one stack's tokens: ``valid`` (real tokens), ``special``, ``punctuation``."""

    valid: torch.Tensor | None = None
    special: torch.Tensor | None = None
    punctuation: torch.Tensor | None = None


class StreamingStatsProbe(Probe):
    """A probe that keeps per-row attention statistics instead of weights.

    For every self-attention call (``self``/``encoder``/``decoder`` stacks; ``cross`` attention only
    gets its output computed), :meth:`attend` returns the output of torch's fused sdpa and stores
    :func:`attention_row_stats` as float32 CPU tensors in ``rows[stack][layer]`` (``{name: [batch,
    heads, T]}``); it returns no weights. ``masks`` maps a stack to its :class:`KeyMasks` (padding keys
    zeroed, special/punctuation shares); ``layers`` restricts which layers are measured;
    ``distance_edges`` adds the cumulative ``within`` rows; ``keep`` limits which rows are stored (by
    default all of :data:`~hf_attn_inspect.stats.metrics.ROW_QUANTITIES`, ``lse`` and ``within``). Models that
    do not dispatch through transformers' attention interface reach :meth:`record` with full weights
    (eager fallback), whose rows are then computed by :func:`~hf_attn_inspect.stats.metrics.row_quantities`.
    """

    implementation = STREAMING_NAME

    def __init__(
        self,
        masks: dict[str, KeyMasks] | None = None,
        *,
        layers: Sequence[int] | None = None,
        sparsity_threshold: float = 0.3,
        local_window: int = LOCAL_WINDOW,
        distance_edges: Sequence[int] | None = None,
        q_tile: int = 256,
        k_tile: int = 1024,
        keep: Sequence[str] | None = None,
        reduce: bool = False,
    ) -> None:
        self.masks = masks or {}
        self.reduce = reduce
        self.metrics: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
        self.layers = None if layers is None else set(layers)
        self.sparsity_threshold = sparsity_threshold
        self.local_window = local_window
        self.distance_edges = tuple(distance_edges) if distance_edges else None
        self.q_tile, self.k_tile = q_tile, k_tile
        self.keep = None if keep is None else set(keep)
        self.rows: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
        self.causal: dict[str, bool] = {}

    def _wanted(self, site: Site) -> bool:
        return site.stack != "cross" and (self.layers is None or site.layer in self.layers)

    def _store(self, site: Site, rows: dict[str, torch.Tensor], causal: bool = False) -> None:
        if self.reduce:
            valid = self.masks.get(site.stack, KeyMasks()).valid
            ref = rows["entropy"]
            if valid is None:
                valid = torch.ones(ref.shape[0], ref.shape[-1], dtype=torch.bool)
            metrics = reduce_rows(rows, valid.to(ref.device), causal=causal)
            self.metrics.setdefault(site.stack, {})[site.layer] = {k: v.detach().cpu() for k, v in metrics.items()}
            self.rows.setdefault(site.stack, {})[site.layer] = {}
            return
        kept = {k: v.detach().to("cpu", torch.float32) for k, v in rows.items() if self.keep is None or k in self.keep}
        self.rows.setdefault(site.stack, {})[site.layer] = kept

    def attend(
        self,
        site: Site,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: Any,
        scaling: float | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        softcap = kwargs.get("softcap")
        window = kwargs.get("sliding_window") or None
        output = fast_attention_output(query, key, value, mask, scale=scaling, softcap=softcap)
        if self._wanted(site):
            km = self.masks.get(site.stack, KeyMasks())
            is_causal = bool(getattr(module, "is_causal", False))
            stats_mask = mask
            if isinstance(mask, LazyMask):
                pad = mask.key_padding
                if (mask.plain_causal or mask.bidirectional) and mask.q_offset == 0 and mask.kv_offset == 0:
                    # plain patterns: positions give causality, padding is a [batch, 1, 1, S] key mask
                    stats_mask = None if pad is None else pad[:, None, None, :]
                    causal = mask.plain_causal
                else:
                    causal = is_causal and not mask.use_vmap and not mask.bidirectional
            else:
                causal = False  # a tensor mask already says everything; no index shortcut
            self.causal[site.stack] = self.causal.get(site.stack, False) or is_causal
            dev = query.device
            rows = attention_row_stats(
                query,
                key,
                scale=scaling,
                mask=stats_mask,
                causal=causal,
                window=window if causal else None,
                key_valid=None if km.valid is None else km.valid.to(dev),
                special=None if km.special is None else km.special.to(dev),
                punctuation=None if km.punctuation is None else km.punctuation.to(dev),
                softcap=softcap,
                sparsity_threshold=self.sparsity_threshold,
                local_window=self.local_window,
                distance_edges=self.distance_edges,
                q_tile=self.q_tile,
                k_tile=self.k_tile,
            )
            self._store(site, rows, is_causal)
        return output, None

    def record(self, site: Site, weights: torch.Tensor) -> None:
        if not self._wanted(site) or weights.shape[-1] != weights.shape[-2]:
            return
        km = self.masks.get(site.stack, KeyMasks())
        b, t = weights.shape[0], weights.shape[-1]
        valid = km.valid if km.valid is not None else torch.ones(b, t, dtype=torch.bool)
        w = weights.float()
        rows = row_quantities(w, valid.to(w.device), special=km.special, punctuation=km.punctuation,
                              sparsity_threshold=self.sparsity_threshold, local_window=self.local_window)
        if self.distance_edges:
            idx = torch.arange(t, device=w.device)
            dist = (idx[:, None] - idx[None, :]).abs()
            w0 = w * valid.to(w.device).float().reshape(b, *(1,) * (w.dim() - 3), 1, t)
            rows["within"] = torch.stack([(w0 * (dist <= e)).sum(-1) for e in self.distance_edges], -1)
        self._store(site, rows)

    def stacked(self, stack: str) -> dict[str, torch.Tensor]:
        """``{name: [batch, layers, heads, T]}`` of one stack, layers in increasing order."""
        layers = self.rows.get(stack, {})
        if not layers:
            return {}
        order = sorted(layers)
        names = layers[order[0]].keys()
        return {n: torch.stack([layers[i][n] for i in order], 1) for n in names}


# ------------------------------------------------------------------------------------- high level
def _stack_masks(inspector: Any, batch: Any) -> dict[str, KeyMasks]:
    """Per-stack key masks of a batch: real tokens, special tokens, punctuation."""
    def masks(encoding: Any, lengths: list[int], attention: torch.Tensor) -> KeyMasks:
        valid = attention.bool().cpu()
        special = encoding["special_tokens_mask"].bool() & valid if "special_tokens_mask" in encoding else None
        punct = torch.zeros_like(valid)
        if getattr(encoding, "encodings", None) is not None:
            for i, n in enumerate(lengths):
                punct[i, :n] = punctuation_mask(encoding.tokens(i)[:n])
        return KeyMasks(valid, special, punct)

    first = masks(batch.encoding, batch.lengths, batch.inputs["attention_mask"])
    if inspector.is_encoder_decoder and batch.decoder_encoding is not None:
        dec = masks(batch.decoder_encoding, batch.decoder_lengths, batch.inputs["decoder_attention_mask"])
        return {"encoder": first, "decoder": dec}
    return {"self": first}


def run_streaming(
    inspector: Any,
    batch: Any,
    *,
    layers: Sequence[int] | None = None,
    sparsity_threshold: float = 0.3,
    local_window: int = LOCAL_WINDOW,
    distance_edges: Sequence[int] | None = None,
    q_tile: int = 256,
    k_tile: int = 1024,
    keep: Sequence[str] | None = None,
    reduce: bool = False,
) -> StreamingStatsProbe:
    """Run one encoded ``batch`` through the inspector's model with a :class:`StreamingStatsProbe`; return the probe.

    Only the model's backbone (``model.base_model``) runs, so no language-model head turns a long input
    into a ``[T, vocab]`` logits tensor. The probe's ``rows`` hold the per-row statistics (``O(layers x
    heads x T)`` floats on CPU), or with ``reduce=True`` only ``probe.metrics[stack][layer]`` (``{metric:
    [batch, heads]}``); the stacks' causality is in ``probe.causal``.
    """
    from ..capture.inspector import AttentionInspector

    probe = StreamingStatsProbe(
        _stack_masks(inspector, batch),
        layers=layers,
        sparsity_threshold=sparsity_threshold,
        local_window=local_window,
        distance_edges=distance_edges,
        q_tile=q_tile,
        k_tile=k_tile,
        keep=keep,
        reduce=reduce,
    )
    backbone = getattr(inspector.model, "base_model", inspector.model)
    runner = AttentionInspector(backbone, inspector.tokenizer, name=inspector.name) if backbone is not inspector.model else inspector
    runner.run(batch, probe, implementation=STREAMING_NAME)
    for stack in getattr(runner, "last_causal_stacks", set()) or set():
        probe.causal[stack] = True
    if not probe.rows:
        raise CaptureError(f"{type(inspector.model).__name__} produced no self-attention statistics")
    return probe


def streaming_head_metrics(
    inspector: Any,
    texts: str | Sequence[str],
    pairs: Sequence[str] | None = None,
    *,
    which: str | None = None,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    truncation: bool = True,
    sparsity_threshold: float = 0.3,
    local_window: int = LOCAL_WINDOW,
    per_sentence: bool = False,
    q_tile: int = 256,
    k_tile: int = 1024,
) -> pd.DataFrame:
    """One row per (layer, head) with every :data:`~hf_attn_inspect.stats.metrics.METRICS`, never materialising weights.

    The same table as :func:`hf_attn_inspect.stats.analysis.head_metrics` on captured results (columns
    ``layer``, ``head`` and the metrics; each sentence weighs the same in the mean; padding never
    counts), computed from the query and key by :func:`attention_row_stats` while the model runs with
    fused sdpa. Memory is ``O(T)`` per head instead of ``O(T^2)``. ``which`` picks the stack of
    encoder-decoder models (``encoder`` by default, or ``decoder``); ``layers`` restricts the layers;
    ``per_sentence=True`` gives one row per (sentence, layer, head) with a ``sentence`` column.
    """
    if isinstance(texts, str):
        texts = [texts]
        pairs = [pairs] if isinstance(pairs, str) else pairs
    texts = list(texts)
    if not texts:
        raise InputError("no texts given")
    stack = which or ("encoder" if inspector.is_encoder_decoder else "self")
    per: list[dict[str, torch.Tensor]] = []
    layer_ids: list[int] | None = None
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        pchunk = None if pairs is None else list(pairs)[start : start + batch_size]
        batch = inspector.encode(chunk, pchunk, max_length=max_length, truncation=truncation)
        probe = run_streaming(inspector, batch, layers=layers, sparsity_threshold=sparsity_threshold,
                              local_window=local_window, q_tile=q_tile, k_tile=k_tile, reduce=True)
        if stack not in probe.rows:
            raise InputError(f"no '{stack}' attention in this model; choose one of {sorted(probe.rows)}")
        layer_ids = sorted(probe.rows[stack])
        if stack in probe.metrics:
            found = probe.metrics[stack]
            per.append({k: torch.stack([found[i][k] for i in layer_ids], 1) for k in METRICS})
        else:  # eager fallback: rows from full weights, reduced here
            rows = probe.stacked(stack)
            valid = probe.masks.get(stack, KeyMasks()).valid
            if valid is None:
                valid = torch.ones(rows["entropy"].shape[0], rows["entropy"].shape[-1], dtype=torch.bool)
            per.append(reduce_rows(rows, valid, causal=probe.causal.get(stack, False)))
    values = {k: torch.cat([m[k] for m in per], 0).numpy() for k in METRICS}  # [N, L, H]
    n, nl, nh = values[METRICS[0]].shape
    head_ids = list(range(nh))
    if per_sentence:
        s, l, h = np.meshgrid(np.arange(n), layer_ids, head_ids, indexing="ij")
        frame: dict[str, Any] = {"sentence": s.ravel(), "layer": l.ravel(), "head": h.ravel()}
        frame.update({k: values[k].ravel() for k in METRICS})
    else:
        l, h = np.meshgrid(layer_ids, head_ids, indexing="ij")
        frame = {"layer": l.ravel(), "head": h.ravel()}
        frame.update({k: values[k].mean(0).ravel() for k in METRICS})
    return pd.DataFrame(frame)
