"""The layer's attention output and every per-row statistic in one pass over cache-sized score tiles (CPU).

:func:`attention_output_row_stats` is the dataset engines' path at paragraph and document length: for each
sequence and a block of its heads and query rows it forms the score tile ``q k^T`` (only the sequence's
own keys: a key-padding mask becomes a key range, so padding is never computed), takes the row maximum,
``e = exp(s - max)`` in place, and one GEMM of ``e`` against the values augmented with indicator columns
(ones, special keys, punctuation keys, key position) gives the output and the row sums behind ``mass``,
``special_tokens``, ``punctuation`` and ``mean_distance`` at once. Entropy is ``ln l - sum_j e_ij (s_ij -
max_i) / l`` (the log-sum-exp form of ``long``'s kernel), ``max_weight`` is ``1 / l`` (the maximum's ``e``
is exactly 1), neighbours and the local window are gathered from the few columns around the diagonal,
``above`` is counted only in rows whose maximum weight exceeds the threshold, and the column sums behind
``column_share`` are one matrix-vector product per tile. No ``[batch, heads, T, S]`` tensor is formed;
the tile buffers live in a :class:`TileWorkspace` reused from layer to layer. Work is split over
single-threaded worker threads by sequence (as the tiled statistics of ``long`` do), so no tile
operation waits at a barrier of torch's intra-op threads.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..masks import keep_to_additive, mask_to_keep
from .common import LOCAL_WINDOW, as_4d
from .reference import repeat_kv

__all__ = ["TilePlan", "TileWorkspace", "plan_tiles", "attention_output_row_stats", "TILE_ELEMENTS", "TILE_MIN_LENGTH"]

#: From this many tokens per batch the dataset engines take the tiles on the CPU; shorter batches are
#: cheaper on the materialised weights (measured with ``scripts/bench_doclength.py``).
TILE_MIN_LENGTH = 64

#: Score elements per tile (``heads x rows x keys``): about 1 MiB of float32, so a tile's dozen passes stay in cache.
TILE_ELEMENTS = 1 << 18

#: The row quantities returned, in order (the :data:`~hf_attn_inspect.stats.metrics.ROW_QUANTITIES`).
_ROWS = ("entropy", "diagonal", "previous_token", "next_token", "first_token", "special_tokens", "punctuation",
         "max_weight", "mean_distance", "local_window", "mass", "sq_sum", "above")


@dataclass
class TilePlan:
    """How one batch's mask is applied, prepared once per batch (:func:`plan_tiles`): per sequence either
    its contiguous key range ``ranges[b] = (lo, hi)`` (a key-padding mask: keys outside are never
    computed) or, when ``additive`` is set, the full keys with the additive mask ``[batch, 1|heads, T, S]``
    added to every tile (causal or other masks)."""

    ranges: list[tuple[int, int]]
    additive: torch.Tensor | None = None


def plan_tiles(mask: torch.Tensor | None, valid: torch.Tensor, heads: int) -> TilePlan | None:
    """The :class:`TilePlan` of a batch, or None when the exact statistics cannot come from the tiles.

    ``mask`` is the model's mask (None, or a tensor read by :func:`~hf_attn_inspect.core.masks.mask_to_keep`,
    broadcasting to ``[batch, 1|heads, T, S]``); ``valid`` the boolean ``[batch, S]`` real tokens of the
    statistics. The statistics zero padding keys without renormalising; they equal the tiles' only when
    the mask already hides every padding key from every real query, so None is returned otherwise (and
    for square-less or unusual masks), and the caller keeps the materialised-weights path.
    """
    b, s = valid.shape
    valid = valid.bool()
    if mask is None:
        if not bool(valid.all()):
            return None
        return TilePlan([(0, s)] * b)
    keep, bias = mask_to_keep(as_4d(mask))
    if keep.dim() != 4 or keep.shape[-1] != s or keep.shape[1] not in (1, heads) or keep.shape[0] not in (1, b):
        return None
    keep = keep.expand(b, keep.shape[1], keep.shape[2], s)
    rows = keep.shape[2]
    real = valid if rows == s else torch.ones(b, rows, dtype=torch.bool)
    # every real query must not see a padding key
    if bool((keep & ~valid[:, None, None, :] & real[:, None, :, None]).any()):
        return None
    key_only = bias is None and keep.shape[1] == 1 and bool((keep == valid[:, None, None, :]).all(-1)[
        real[:, None, :].expand(b, 1, rows)].all())
    if key_only:
        ranges = []
        for i in range(b):
            idx = valid[i].nonzero().flatten()
            if idx.numel() == 0 or int(idx[-1] - idx[0]) + 1 != idx.numel():
                break
            ranges.append((int(idx[0]), int(idx[-1]) + 1))
        else:
            return TilePlan(ranges)
    add = keep_to_additive(keep, torch.float32)  # finite fill: a fully masked (padding) row stays finite
    if bias is not None:
        add = add + bias.float()
    return TilePlan([(0, s)] * b, additive=add)


class TileWorkspace:
    """Tile buffers kept from layer to layer (one set per worker thread), grown when a larger tile comes."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, str], torch.Tensor] = {}

    def get(self, worker: int, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A float32 buffer of ``shape`` (uninitialised) for ``worker``; the same memory on every call."""
        n = math.prod(shape)
        buf = self._buffers.get((worker, name))
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, dtype=torch.float32)
            self._buffers[(worker, name)] = buf
        return buf[:n].view(shape)


_WORKER = threading.local()


def attention_output_row_stats(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    plan: TilePlan,
    *,
    valid: torch.Tensor,
    special: torch.Tensor | None = None,
    punctuation: torch.Tensor | None = None,
    scale: float | None = None,
    sparsity_threshold: float = 0.3,
    local_window: int = LOCAL_WINDOW,
    workspace: TileWorkspace | None = None,
    tile_elements: int = TILE_ELEMENTS,
    workers: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """``(output, rows, column_sums)`` of softmax attention, computed tile by tile on the CPU.

    ``query`` ``[batch, heads, T, d]``, ``key``/``value`` ``[batch, kv_heads, T, d]`` (float32,
    self-attention: keys and queries are the same tokens); ``plan`` from :func:`plan_tiles`. ``output`` is
    ``softmax(q k^T * scale + mask) v`` ``[batch, heads, T, d]`` (the model's output up to float32
    rounding). ``rows`` holds, for every query row, the row quantities of
    :func:`~hf_attn_inspect.stats.metrics.row_quantities` (``{name: [batch, heads, T]}``: entropy in nats,
    diagonal, previous/next/first token, special and punctuation shares, max weight, mean distance in
    tokens, weight within ``local_window`` tokens, ``mass``, ``sq_sum``, and ``above`` = number of weights
    above ``sparsity_threshold``, which must be >= 0). ``column_sums`` ``[batch, heads, T]`` is
    ``sum_i a_ij`` over the ``valid`` query rows (for ``column_share``). Padding query rows (``valid``
    False) get finite values that the reductions ignore. ``workspace`` holds the tile buffers (default:
    one per calling thread, kept between calls).
    """
    if query.device.type != "cpu" or query.dtype != torch.float32:
        raise InputError("the tiled CPU attention takes float32 CPU tensors")
    if sparsity_threshold < 0:
        raise InputError("the tiled CPU attention counts weights above a non-negative threshold")
    b, h, t, d = query.shape
    key, value = repeat_kv(key, h), repeat_kv(value, h)
    if key.shape[2] != t:
        raise InputError("the tiled CPU attention is self-attention: as many keys as queries")
    if workspace is None:
        workspace = getattr(_WORKER, "workspace", None) or TileWorkspace()
        _WORKER.workspace = workspace  # this thread's buffers, kept for the next call
    ws = workspace
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    out = torch.empty(b, h, t, d, dtype=torch.float32)
    rows = torch.zeros(len(_ROWS), b, h, t, dtype=torch.float32)
    cols = torch.zeros(b, h, t, dtype=torch.float32)
    row_w = valid.to(torch.float32)
    extras = [x.to(torch.float32) if x is not None else None for x in (special, punctuation)]
    # items: (sequence, head block); heads split only when there are fewer sequences than threads
    n_workers = workers or _workers(b * h * t * t)
    split = max(1, min(h, -(-2 * n_workers // b))) if n_workers > 1 else 1
    bounds = [h * i // split for i in range(split + 1)]
    items = [(i, bounds[k], bounds[k + 1]) for i in range(b) for k in range(split)]
    args = (query, key, value, plan, out, rows, cols, row_w, extras, scale, float(sparsity_threshold),
            int(local_window), ws, tile_elements)
    if n_workers < 2:
        for item in items:
            _item(0, item, *args)
    else:
        def work(w: int) -> None:
            _WORKER.active = True
            torch.set_num_threads(1)
            try:
                for item in items[w::n_workers]:
                    _item(w, item, *args)
            finally:
                _WORKER.active = False

        threads = torch.get_num_threads()
        try:
            with ThreadPoolExecutor(n_workers) as pool:
                list(pool.map(work, range(n_workers)))
        finally:
            torch.set_num_threads(threads)
    return out, dict(zip(_ROWS, rows.unbind(0))), cols


#: Below this many score elements (``batch * heads * T * T``) the tiles run in the caller's thread.
_PARALLEL_MIN = 1 << 20


def _workers(elements: int) -> int:
    if getattr(_WORKER, "active", False) or not torch.backends.openmp.is_available() or elements < _PARALLEL_MIN:
        return 1
    return max(1, torch.get_num_threads())


def _item(
    w: int,
    item: tuple[int, int, int],
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    plan: TilePlan,
    out: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    row_w: torch.Tensor,
    extras: list[torch.Tensor | None],
    scale: float,
    thr: float,
    lw: int,
    ws: TileWorkspace,
    tile_elements: int,
) -> None:
    """One sequence ``bi`` and heads ``h0:h1``: every query tile against the sequence's keys."""
    bi, h0, h1 = item
    n = h1 - h0
    t, d = query.shape[2], query.shape[3]
    lo, hi = plan.ranges[bi]
    sb = hi - lo
    f32 = torch.float32
    # values augmented with indicator columns: v | 1 | special | punctuation | key position
    c_one, c_sp, c_pu, c_pos = d, d + 1, d + 2, d + 3
    vaug = ws.get(w, "vaug", (n, sb, d + 4))
    vaug[..., :d] = value[bi, h0:h1, lo:hi]
    vaug[..., c_one] = 1.0
    for c, x in ((c_sp, extras[0]), (c_pu, extras[1])):
        vaug[..., c] = 0.0 if x is None else x[bi, lo:hi]
    kpos = torch.arange(lo, hi, dtype=f32)
    kt = key[bi, h0:h1, lo:hi].transpose(1, 2)
    add = None if plan.additive is None else plan.additive[bi]  # [1|H, T, S]
    if add is not None and add.shape[0] > 1:
        add = add[h0:h1]
    tq = max(1, min(t, tile_elements // max(1, n * sb)))
    rs = max(1, lw)
    near = torch.arange(-rs, rs + 1)
    for q0 in range(0, t, tq):
        q1 = min(t, q0 + tq)
        m_ = q1 - q0
        vaug[..., c_pos] = kpos - q0  # key positions from the tile's first row: small sums, no cancellation
        qs = torch.mul(query[bi, h0:h1, q0:q1], scale, out=ws.get(w, "q", (n, m_, d)))
        sc = torch.bmm(qs, kt, out=ws.get(w, "s", (n, m_, sb)))
        if add is not None:
            sc.add_(add[:, q0:q1, lo:hi])
        mx = sc.amax(-1, keepdim=True)
        sc.sub_(mx)
        e = torch.exp(sc, out=ws.get(w, "e", (n, m_, sb)))
        # the GEMM split at the first key after the tile's rows: keys beyond are all to the right of every row
        u0 = min(sb, max(0, q1 - lo))
        agg = torch.bmm(e[..., :u0], vaug[:, :u0], out=ws.get(w, "agg", (n, m_, d + 4))) if u0 > 0 else None
        if u0 < sb:
            right = torch.bmm(e[..., u0:], vaug[:, u0:], out=ws.get(w, "agg_r", (n, m_, d + 4)))
            r_mass, r_pos = right[..., c_one].clone(), right[..., c_pos].clone()
            agg = right if agg is None else agg.add_(right)
        else:
            r_mass = r_pos = None
        l = agg[..., c_one]
        il = 1.0 / l
        out[bi, h0:h1, q0:q1] = agg[..., :d] * il.unsqueeze(-1)
        qi = torch.arange(q0, q1, dtype=f32)
        qr = qi - q0
        # entropy: ln l - sum_j e (s - max) / l (s already shifted)
        es = sc.mul_(e).sum(-1)
        r = rows[:, bi, h0:h1, q0:q1]
        r[0] = torch.log(l) - es * il
        # neighbours and local window: columns i - rs .. i + rs around each row's diagonal
        cidx = (qi.long() - lo)[:, None] + near[None, :]
        inside = ((cidx >= 0) & (cidx < sb)).to(f32)
        vals = e.gather(-1, cidx.clamp(0, sb - 1).expand(n, m_, 2 * rs + 1)).mul_(inside)
        r[1] = vals[..., rs] * il
        r[2] = vals[..., rs - 1] * il
        r[3] = vals[..., rs + 1] * il
        r[4] = e[..., 0] * il if lo == 0 else 0.0
        r[5] = agg[..., c_sp] * il
        r[6] = agg[..., c_pu] * il
        r[7] = il
        # mean distance: sum e (i - j) over the keys left of u0, a correction inside the diagonal block,
        # sum e (j - i) over the keys right of it
        left_mass = l - (0.0 if r_mass is None else r_mass)
        left_pos = agg[..., c_pos] - (0.0 if r_pos is None else r_pos)
        dist = qr * left_mass - left_pos
        if r_mass is not None:
            dist = dist + r_pos - qr * r_mass
        b0 = max(0, q0 - lo)
        if b0 < u0:  # keys j in the block with j > i were counted as (i - j): add 2 (j - i)
            jb = torch.arange(lo + b0, lo + u0, dtype=f32)
            up = (jb[None, :] - qi[:, None]).clamp_min_(0.0)
            dist = dist + 2.0 * (e[..., b0:u0] * up).sum(-1)
        r[8] = dist * il
        r[9] = (vals.sum(-1) if lw >= 1 else vals[..., rs]) * il
        r[10] = l * il
        r[11] = torch.linalg.vector_norm(e, dim=-1).square_() * il.square()
        hit = il > thr  # only rows whose largest weight exceeds the threshold can have weights above it
        if bool(hit.any()):
            hn, hq = hit.nonzero(as_tuple=True)
            r[12][hn, hq] = (e[hn, hq] > (thr * l[hn, hq]).unsqueeze(-1)).sum(-1).to(f32)
        # column sums over the valid query rows
        wq = (row_w[bi, q0:q1] * il).unsqueeze(1)  # [n, 1, m]
        cols[bi, h0:h1, lo:hi] += torch.bmm(wq, e).squeeze(1)
