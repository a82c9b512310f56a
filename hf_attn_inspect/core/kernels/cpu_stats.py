"""The per-row attention statistics in PyTorch, streamed tile by tile (:func:`attention_row_stats`).

One online-softmax pass over ``[q_tile, k_tile]`` score tiles gives every row quantity of
:mod:`hf_attn_inspect.stats.metrics` without holding a ``[T, S]`` matrix; on CPU, large inputs are split
by key heads over single-threaded workers. It is the fallback of the fused kernel and the reference its
tests compare against.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import torch

from ..errors import InputError
from ..masks import LazyMask, keep_to_additive, mask_to_keep
from .common import LOCAL_WINDOW, as_4d, check_query_key, edge_lists

__all__ = ["attention_row_stats"]

_Blocks = Callable[[int, int, int, int], "tuple[torch.Tensor | None, torch.Tensor | None]"]


def _block_fn(mask: torch.Tensor | LazyMask | None) -> _Blocks:
    """Normalise ``mask`` (None, tensor, or object with ``block``) to ``f(q0,q1,k0,k1) -> (keep, bias)`` 4-D."""
    if mask is None:
        return lambda q0, q1, k0, k1: (None, None)
    if hasattr(mask, "block"):
        return lambda q0, q1, k0, k1: (mask.block(q0, q1, k0, k1), None)
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"mask must be a tensor, a LazyMask or None, got {type(mask).__name__}")
    keep, bias = mask_to_keep(as_4d(mask))

    def fn(q0: int, q1: int, k0: int, k1: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        kb = keep[..., q0:q1, k0:k1] if keep.shape[-2] > 1 else keep[..., k0:k1]
        bb = None
        if bias is not None:
            bb = bias[..., q0:q1, k0:k1] if bias.shape[-2] > 1 else bias[..., k0:k1]
        return kb, bb

    return fn


def _row_layout(x: torch.Tensor, hkv: int, g: int) -> torch.Tensor:
    """``[B, 1|H, q, k]`` -> ``[B, 1|Hkv, q, 1|G, k]``: the row order ``(query, head in group)`` of the score tiles."""
    if x.shape[1] == 1:
        return x.unsqueeze(3)
    return x.reshape(x.shape[0], hkv, g, *x.shape[2:]).transpose(2, 3)


_LOG2E = 1.0 / math.log(2.0)
_LN2 = math.log(2.0)
#: Distance edges up to this many tokens are summed from a few gathered columns around the diagonal;
#: larger ones from a prefix sum over the columns their band edges cross.
_GATHER_EDGE = 8


def attention_row_stats(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    scale: float | None = None,
    mask: torch.Tensor | LazyMask | None = None,
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
    ``[batch, S]`` key masks (missing ones give 0). Returns ``{name: float32 [batch, heads, T]}`` for
    every per-row quantity of :data:`hf_attn_inspect.stats.metrics.ROW_QUANTITIES` (``entropy`` in nats,
    ``diagonal``, ``previous_token``, ``next_token``, ``first_token``, ``special_tokens``, ``punctuation``,
    ``max_weight``, ``mean_distance`` in tokens, ``local_window`` within ``local_window`` tokens, ``mass`` =
    ``sum_j a_ij``, ``sq_sum`` = ``sum_j a_ij^2``, ``above`` = number of keys with ``a_ij >
    sparsity_threshold``; with a negative threshold every valid key) plus ``lse`` (log-sum-exp of the
    scores, ``-inf`` on fully masked rows), and, when ``distance_edges`` is given, ``within``
    ``[batch, heads, T, E]``: the weight at ``|i - j| <= edge`` for each edge. Memory:
    ``O(batch * heads * q_tile * k_tile)`` (two tile buffers, reused for every tile).

    One pass over the key tiles of each query tile (online softmax): each ``[q_tile, k_tile]`` score tile
    is one GEMM (scaled by ``log2 e``, the row reference subtracted through an extra column, key padding
    added through another), one row maximum, one subtraction where a row's maximum grew (so a row's
    largest weight is ``e = 1`` exactly, as in a two-pass softmax), one in-place ``exp2``, one GEMM of the
    exponentials against the keys augmented with indicator columns (ones, distance, special, punctuation:
    entropy, mass, distance and key-class shares at once) and one norm (``sq_sum``). Neighbour and
    local-window shares are gathered from the few columns around the diagonal, larger distance edges
    from prefix sums over the columns their band edges cross; ``above`` keeps only the keys that can still
    exceed the threshold once the final normaliser is known (at most ``1 / threshold`` per row and tile,
    looked for only in rows whose tile maximum is above it) and counts them at the end. Tiles wholly
    outside the causal/window band are skipped and the band's tiles are trimmed to it. On CPU, large
    inputs are split by key heads over threads that each run single-threaded (see :func:`_stats_workers`).
    """
    check_query_key(query, key)
    b, h, t, d = query.shape
    hkv, s = key.shape[1], key.shape[2]
    if mask is not None and not isinstance(mask, torch.Tensor) and not hasattr(mask, "block"):
        raise InputError(f"mask must be a tensor, a LazyMask or None, got {type(mask).__name__}")
    kw = dict(scale=scale, causal=causal, window=window, key_valid=key_valid, special=special,
              punctuation=punctuation, softcap=softcap, sparsity_threshold=sparsity_threshold,
              local_window=local_window, distance_edges=distance_edges, q_tile=q_tile, k_tile=k_tile)
    workers = _stats_workers(query, key, mask)
    if workers < 2:
        return _row_stats(query, key, mask, **kw)  # type: ignore[arg-type]
    # CPU: independent key-head groups in threads of one intra-op thread each (no barrier per tile op)
    bounds = [hkv * i // workers for i in range(workers + 1)]
    g = h // hkv

    def part(i: int) -> dict[str, torch.Tensor]:
        k0, k1 = bounds[i], bounds[i + 1]
        m = mask
        if isinstance(m, torch.Tensor) and m.dim() >= 3 and m.shape[-3] == h > 1:
            m = m[..., k0 * g : k1 * g, :, :]
        _WORKER.active = True
        torch.set_num_threads(1)
        try:
            return _row_stats(query[:, k0 * g : k1 * g], key[:, k0:k1], m, **kw)  # type: ignore[arg-type]
        finally:
            _WORKER.active = False

    threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(part, range(workers)))
    finally:
        torch.set_num_threads(threads)  # the workers changed the default that new threads start with
    return {name: torch.cat([p[name] for p in parts], 1) for name in parts[0]}


_WORKER = threading.local()
#: Below this many score elements (``batch * heads * T * S``) the statistics run in the caller's thread.
_PARALLEL_MIN = 1 << 22


def _stats_workers(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | LazyMask | None) -> int:
    """How many threads :func:`attention_row_stats` splits the key heads over (1: no split).

    On CPU, a tile's dozen tensor operations each end in a barrier of torch's intra-op threads; on a
    loaded machine every barrier waits for a descheduled thread. Independent head groups in as many
    threads as torch may use, each running its operations single-threaded, avoid the barriers. Only with
    OpenMP (per-thread thread counts), large enough inputs and a mask without an unusual head dimension.
    """
    if query.device.type != "cpu" or getattr(_WORKER, "active", False) or not torch.backends.openmp.is_available():
        return 1
    b, h, t, _ = query.shape
    hkv, s = key.shape[1], key.shape[2]
    if isinstance(mask, torch.Tensor) and mask.dim() >= 3 and mask.shape[-3] not in (1, h):
        return 1
    if b * h * t * s < _PARALLEL_MIN:
        return 1
    return max(1, min(torch.get_num_threads(), hkv))


def _row_stats(
    query: torch.Tensor,
    key: torch.Tensor,
    mask: torch.Tensor | LazyMask | None,
    *,
    scale: float | None,
    causal: bool,
    window: int | None,
    key_valid: torch.Tensor | None,
    special: torch.Tensor | None,
    punctuation: torch.Tensor | None,
    softcap: float | None,
    sparsity_threshold: float,
    local_window: int,
    distance_edges: Sequence[int] | None,
    q_tile: int,
    k_tile: int,
) -> dict[str, torch.Tensor]:
    """The body of :func:`attention_row_stats` for validated arguments, in the calling thread."""
    b, h, t, d = query.shape
    hkv, s = key.shape[1], key.shape[2]
    g = h // hkv
    nr = b * hkv  # GEMM batch: one per (sequence, key head); the g query heads of a group are extra rows
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    q_tile, k_tile = max(1, int(q_tile)), max(1, int(k_tile))
    dev = query.device
    f32 = torch.float32
    offset = s - t
    ninf = float("-inf")
    thr = float(sparsity_threshold)
    edges, all_edges = edge_lists(distance_edges, local_window)
    small = [(i, r) for i, r in enumerate(all_edges) if r <= _GATHER_EDGE]
    large = [(i, r) for i, r in enumerate(all_edges) if r > _GATHER_EDGE]
    rs = max([1] + [r for _, r in small])  # gathered columns: the diagonal +- rs
    bilinear = softcap is None

    # ---- masks: a key-padding mask goes into the score GEMM as one extra column (0 or -inf)
    pad_keep = None
    blocks = None
    if isinstance(mask, torch.Tensor):
        keep_t, bias_t = mask_to_keep(as_4d(mask))
        if bias_t is None and keep_t.shape[1] == 1 and keep_t.shape[2] == 1:
            pad_keep = keep_t[:, 0, 0, :].to(dev).bool().expand(b, s)
            if bool(pad_keep.all()):
                pad_keep = None
        else:
            blocks = _block_fn(mask)
    elif mask is not None:
        blocks = _block_fn(mask)
    # the row reference is subtracted inside the score GEMM unless a cap or an additive bias comes after it
    gemm_ref = bilinear and blocks is None
    kv = None  # key_valid only matters where the mask does not already hide those keys
    if key_valid is not None:
        kvb = key_valid.to(dev).bool().expand(b, s)
        if not bool(kvb.all()):
            hidden = pad_keep if pad_keep is not None else (mask.key_padding if isinstance(mask, LazyMask) else None)
            if hidden is None or bool((hidden.to(dev).bool() & ~kvb).any()):
                kv = kvb.to(f32)

    # ---- key matrices [b*hkv, S, .]: scores (K | 1 for the row reference | key padding) and aggregates
    kf = key.reshape(nr, s, d)
    n_score = d + (1 if gemm_ref else 0) + (1 if pad_keep is not None and bilinear else 0)
    kscore = torch.empty(nr, s, n_score, device=dev, dtype=f32)
    kscore[..., :d] = kf
    if gemm_ref:
        kscore[..., d] = 1.0
    if bilinear and pad_keep is not None:
        padcol = keep_to_additive(pad_keep, f32, fill=ninf, device=dev)
        kscore[..., n_score - 1] = padcol.repeat_interleave(hkv, 0)
    padadd = None
    if pad_keep is not None and not bilinear:  # softcap: the padding is added after the cap
        padadd = keep_to_additive(pad_keep, f32, fill=ninf, device=dev).reshape(b, 1, 1, 1, s)
    kscore_t = kscore.transpose(1, 2)
    koff = d if bilinear else 0
    c_one, c_dist = koff, koff + 1
    extra = [km for km in (special, punctuation) if km is not None]
    n_agg = koff + 2 + len(extra)
    kagg = torch.empty(nr, s, n_agg, device=dev, dtype=f32)
    if bilinear:
        kagg[..., :d] = kf
    kagg[..., c_one] = 1.0
    kagg[..., c_dist] = 0.0
    for c, km in enumerate(extra):
        kagg[..., c_dist + 1 + c] = km.to(dev).to(f32).expand(b, s).repeat_interleave(hkv, 0)
    key_pos = torch.arange(s, device=dev, dtype=f32)

    # ---- per-row state columns: aggregates | dist | first | diag prev next | within... | entropy extra | emax
    s_dist, s_first, s_nbr = n_agg, n_agg + 1, n_agg + 2
    s_within = n_agg + 5
    s_es, s_emax = s_within + len(all_edges), s_within + len(all_edges) + 1
    n_state = s_emax + 1

    out = torch.zeros(14, b, hkv, t, g, device=dev, dtype=f32)
    within_all = torch.zeros(b, hkv, t, g, len(all_edges), device=dev, dtype=f32)
    rows_max = min(t, q_tile) * g
    tile_buf = torch.empty(nr * rows_max * min(s, k_tile), device=dev, dtype=f32)
    scratch_buf: list[torch.Tensor] = []
    agg_buf = torch.empty(nr, rows_max, n_agg, device=dev, dtype=f32)
    qg = query.reshape(b, hkv, g, t, d)
    cache: dict[tuple, torch.Tensor] = {}

    def scratch(shape: tuple[int, ...], slot: int = 0) -> torch.Tensor:
        """More tile-sized buffers (cumsum, elementwise products; slot 1: capped exponentials), allocated once."""
        while len(scratch_buf) <= slot:
            scratch_buf.append(torch.empty(tile_buf.numel(), device=dev, dtype=f32))
        return scratch_buf[slot][: math.prod(shape)].view(shape)

    def band(rel0: int, tq: int, tk: int) -> torch.Tensor:
        """Additive ``[tq, 1, tk]`` causal/window mask of a tile whose first row sits ``rel0`` keys after its first key."""
        key_ = ("band", rel0, tq, tk)
        if key_ not in cache:
            dd = rel0 + torch.arange(tq, device=dev)[:, None] - torch.arange(tk, device=dev)[None, :]
            allow = dd >= 0 if causal else torch.ones_like(dd, dtype=torch.bool)
            if window is not None:
                allow = allow & (dd < window if causal else dd.abs() < window)
            cache[key_] = keep_to_additive(allow[:, None, :], f32, fill=ninf, device=dev)
        return cache[key_]

    def absdist(rel0: int, tq: int, tk: int) -> torch.Tensor:
        key_ = ("abs", rel0, tq, tk)
        if key_ not in cache:
            dd = rel0 + torch.arange(tq, device=dev)[:, None] - torch.arange(tk, device=dev)[None, :]
            cache[key_] = dd.abs().to(f32)[:, None, :]
        return cache[key_]

    def near(rel0: int, tq: int, tk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Column index ``[tq, 1, 2 rs + 1]`` of the keys ``i - rs .. i + rs`` of each row, and which lie in the tile."""
        key_ = ("near", rel0, tq, tk)
        if key_ not in cache:
            cols = rel0 + torch.arange(tq, device=dev)[:, None] + torch.arange(-rs, rs + 1, device=dev)[None, :]
            inside = ((cols >= 0) & (cols < tk)).to(f32)[:, None, :]
            cache[key_] = (cols.clamp(0, tk - 1)[:, None, :], inside)
        return cache[key_]  # type: ignore[return-value]

    for q0 in range(0, t, q_tile):
        q1 = min(t, q0 + q_tile)
        tq = q1 - q0
        rows = tq * g
        pmin, pmax = q0 + offset, q1 - 1 + offset
        pos = torch.arange(pmin, pmax + 1, device=dev, dtype=f32).repeat_interleave(g)  # query position per row
        qt = torch.empty(nr, rows, n_score, device=dev, dtype=f32)
        qt5 = qt.view(b, hkv, tq, g, n_score)
        qt5[..., :d] = qg[:, :, :, q0:q1, :].transpose(2, 3)
        qt5[..., :d] *= scale * _LOG2E
        if gemm_ref:
            qt[..., d] = 0.0  # -r: the row reference, subtracted inside the GEMM
        if bilinear and pad_keep is not None:
            qt[..., n_score - 1] = 1.0
        ref = torch.zeros(nr, rows, device=dev, dtype=f32)
        norm = torch.zeros(nr, rows, device=dev, dtype=f32)
        sq = torch.zeros(nr, rows, device=dev, dtype=f32)
        above = torch.zeros(nr, rows, device=dev, dtype=f32)
        st = torch.zeros(nr, rows, n_state, device=dev, dtype=f32)
        cand: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        ref_moved = False

        lo_key = 0 if window is None else max(0, pmin - window + 1)
        hi_key = pmax if causal else (s - 1 if window is None else pmax + window - 1)
        for t0 in range(0, s, k_tile):
            t1 = min(s, t0 + k_tile)
            k0, k1 = max(t0, lo_key), min(t1, hi_key + 1)
            if k0 >= k1:
                continue
            tk = k1 - k0
            if k1 - 1 <= pmin:
                lo, hi, side = pmin - (k1 - 1), pmax - k0, 1  # every key at or before every query
            elif k0 >= pmax:
                lo, hi, side = k0 - pmax, k1 - 1 - pmin, -1  # every key at or after every query
            else:
                lo, hi, side = 0, max(pmax - k0, k1 - 1 - pmin), (1 if causal else 0)
            index_mask = (causal and k1 - 1 > pmin) or (window is not None and hi >= window)

            # scores s - ref, base 2, masked, in the reused tile buffer
            sc = torch.bmm(qt, kscore_t[:, :, k0:k1], out=tile_buf[: nr * rows * tk].view(nr, rows, tk))
            sc4 = sc.view(nr, tq, g, tk)
            sc5 = sc.view(b, hkv, tq, g, tk)
            if not bilinear:
                c2 = softcap * _LOG2E
                sc.mul_(1.0 / c2).tanh_().mul_(c2)
                if padadd is not None:
                    sc5.add_(padadd[..., k0:k1])
            bias5 = None
            if blocks is not None:
                keep, bias = blocks(q0, q1, k0, k1)
                if bias is not None:
                    bias5 = _row_layout(bias.to(dev).to(f32) * _LOG2E, hkv, g)
                    sc5.add_(bias5)
                if keep is not None and not bool(keep.all()):
                    addm = keep_to_additive(keep.to(dev).bool(), f32, fill=ninf)
                    sc5.add_(_row_layout(addm, hkv, g))
            if index_mask:
                sc4.add_(band(pmin - k0, tq, tk))
            if not gemm_ref and ref_moved:
                sc.sub_(ref.unsqueeze(-1))
            tmax = sc.amax(-1)
            # the reference follows the running row maximum (its key gets e = 1 exactly, as in a two-pass softmax)
            move = torch.isfinite(tmax) & ((tmax > 0) | (norm == 0))
            if bool(move.any()):
                delta = torch.where(move, tmax, torch.zeros((), device=dev))
                sc.sub_(delta.unsqueeze(-1))
                alpha = torch.where(norm > 0, torch.exp2(-delta), torch.ones((), device=dev))
                norm.mul_(alpha)
                st.mul_(alpha.unsqueeze(-1))
                sq.mul_(alpha.square())
                ref.add_(delta)
                tmax = tmax - delta
                ref_moved = True
                if gemm_ref:
                    qt[..., d] = -ref
            # e = 2^(s - ref)
            keep_scores = not bilinear
            if keep_scores:
                e = torch.exp2(sc, out=scratch((nr, rows, tk), 1))
            else:
                e = sc.exp2_()
            e5 = e.view(b, hkv, tq, g, tk)
            e4 = e.view(nr, tq, g, tk)
            if kv is not None:
                norm.add_(e.sum(-1))
                e5.mul_(kv[:, None, None, None, k0:k1])
                torch.maximum(st[..., s_emax], e.amax(-1), out=st[..., s_emax])
            kcols = kagg[:, k0:k1, :]
            if side != 0:
                anchor = min(k1 - 1, pmax) if side == 1 else max(k0, pmin)
                kcols[..., c_dist] = (anchor - key_pos[k0:k1]) if side == 1 else (key_pos[k0:k1] - anchor)
            agg = torch.bmm(e, kcols, out=agg_buf[:, :rows])
            st[..., :n_agg] += agg
            rowsum = agg[..., c_one]
            if kv is None:
                norm.add_(rowsum)
            sq.add_(torch.linalg.vector_norm(e, dim=-1).square_())
            if side != 0:
                st[..., s_dist] += agg[..., c_dist] + rowsum * ((pos - anchor) if side == 1 else (anchor - pos))
            else:
                st[..., s_dist] += torch.mul(e4, absdist(pmin - k0, tq, tk), out=scratch((nr, tq, g, tk))).view(nr, rows, tk).sum(-1)
            if bias5 is not None and bilinear:  # entropy: sum e * bias (the GEMM has the q.k part)
                st[..., s_es] += torch.mul(e5, bias5, out=scratch((b, hkv, tq, g, tk))).view(nr, rows, tk).sum(-1)
            if keep_scores:  # softcap: sum e * s directly (masked scores contribute 0)
                st[..., s_es] += torch.linalg.vecdot(e, sc.nan_to_num_(neginf=0.0)) + ref * rowsum
            if k0 == 0:
                st[..., s_first] += e[..., 0]
            # neighbours and short-range windows: a few gathered columns around the diagonal
            if lo <= rs:
                idx, inside = near(pmin - k0, tq, tk)
                vals = e4.gather(-1, idx.expand(nr, tq, g, 2 * rs + 1)).mul_(inside).view(nr, rows, 2 * rs + 1)
                st[..., s_nbr : s_nbr + 3] += vals[..., [rs, rs - 1, rs + 1]]
            for i, r in small:
                if hi <= r:
                    st[..., s_within + i] += rowsum
                elif lo <= r:
                    st[..., s_within + i] += vals[..., rs - r : rs + r + 1].sum(-1)
            todo = []
            for i, r in large:
                if hi <= r:
                    st[..., s_within + i] += rowsum
                elif lo <= r:
                    todo.append((i, r))
            if todo:  # prefix sums over the columns the band edges i - r, i + r cross
                rmax = max(r for _, r in todo)
                c_lo, c_hi = max(0, pmin - k0 - rmax), min(tk, pmax - k0 + rmax + 1)
                cs = torch.cumsum(e[..., c_lo:c_hi], -1, out=scratch((nr, rows, c_hi - c_lo)))
                cs4 = cs.view(nr, tq, g, c_hi - c_lo)
                rel = (pmin - k0 + torch.arange(tq, device=dev))[:, None]
                radius = torch.tensor([r for _, r in todo], device=dev)[None, :]
                left = (rel - radius).clamp(c_lo, c_hi)
                right = (rel + radius + 1).clamp(c_lo, c_hi)

                def prefix(x: torch.Tensor) -> torch.Tensor:
                    ix = (x - c_lo - 1).clamp_min(0)[:, None, :].expand(nr, tq, g, x.shape[-1])
                    return torch.where((x > c_lo)[:, None, :], cs4.gather(-1, ix), 0.0).reshape(nr, rows, -1)

                st[..., [s_within + i for i, _ in todo]] += prefix(right) - prefix(left)
            # above: keep the keys that may exceed the threshold once the normaliser is final
            if thr > 0:
                limit = norm * thr
                hit = tmax > torch.log2(limit)  # rows whose tile maximum may be above the threshold
                if bool(hit.any()):
                    ri, qi = hit.nonzero(as_tuple=True)
                    sub = e[ri, qi]  # those rows only, [n, tk]
                    sel = sub > limit[ri, qi].unsqueeze(-1)
                    ids = (ri * rows + qi).unsqueeze(-1).expand_as(sub)[sel]
                    cand.append((ids, sub[sel], ref.view(-1)[ids]))
            elif thr == 0:
                above += torch.gt(e, 0.0, out=scratch((nr, rows, tk))).sum(-1)

        # ---- this query tile's rows
        has = norm > 0
        il = torch.where(has, 1.0 / norm.clamp_min(1e-38), 0.0)
        log_l = torch.where(has, torch.log2(norm.clamp_min(1e-38)), 0.0)
        mass = st[..., c_one] * il
        if bilinear:  # sum_j e_ij (s_ij - ref_i) = q_i . (sum_j e_ij k_j) - ref_i sum_j e_ij (+ the bias part)
            es = (qt[..., :d] * st[..., :d]).sum(-1) - ref * st[..., c_one] + st[..., s_es]
        else:
            es = st[..., s_es] - ref * st[..., c_one]
        if thr > 0 and cand:
            ids = torch.cat([c[0] for c in cand])
            val = torch.cat([c[1] for c in cand]) * torch.exp2(torch.cat([c[2] for c in cand]) - ref.view(-1)[ids])
            above.view(-1).index_add_(0, ids, (val > thr * norm.view(-1)[ids]).to(f32))
        elif thr < 0:  # every valid key (the materialised definition: padding cells never count)
            above.fill_(float(s))
            if key_valid is not None:
                above.copy_(key_valid.to(dev).bool().expand(b, s).sum(-1).to(f32).repeat_interleave(hkv)[:, None].expand(nr, rows))
        emax = st[..., s_emax] if kv is not None else has.to(f32)  # the maximum's e is 1
        extras = {n: i for i, n in enumerate(n for n, km in (("special_tokens", special), ("punctuation", punctuation)) if km is not None)}
        vals_out = [
            torch.where(has, _LN2 * (log_l * mass - es * il), 0.0),  # entropy
            st[..., s_nbr] * il,
            st[..., s_nbr + 1] * il,
            st[..., s_nbr + 2] * il,
            st[..., s_first] * il,
            st[..., c_dist + 1 + extras["special_tokens"]] * il if "special_tokens" in extras else torch.zeros_like(il),
            st[..., c_dist + 1 + extras["punctuation"]] * il if "punctuation" in extras else torch.zeros_like(il),
            emax * il,
            st[..., s_dist] * il,
            st[..., s_within + all_edges.index(int(local_window))] * il,
            mass,
            sq * il.square(),
            above,
            torch.where(has, _LN2 * (ref + log_l), ninf),
        ]
        out[:, :, :, q0:q1, :] = torch.stack(vals_out).view(14, b, hkv, tq, g)
        within_all[:, :, q0:q1] = (st[..., s_within : s_within + len(all_edges)] * il.unsqueeze(-1)).view(b, hkv, tq, g, -1)

    result = {name: out[i].permute(0, 1, 3, 2).reshape(b, h, t) for i, name in enumerate(_ROW_NAMES)}
    if edges:
        idx = torch.tensor([all_edges.index(e) for e in edges], device=dev)
        result["within"] = within_all.index_select(-1, idx).permute(0, 1, 3, 2, 4).reshape(b, h, t, len(edges))
    return result


_ROW_NAMES = (
    "entropy", "diagonal", "previous_token", "next_token", "first_token", "special_tokens", "punctuation",
    "max_weight", "mean_distance", "local_window", "mass", "sq_sum", "above", "lse",
)
