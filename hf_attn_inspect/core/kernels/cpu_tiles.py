"""The layer's attention output and every per-row statistic in one pass over score tiles (CPU).

:func:`attention_output_row_stats` is the dataset engines' path at paragraph and document length: for each
sequence and a block of its heads and query rows it forms the score tile ``q k^T`` (only the sequence's
own keys: a key-padding mask becomes a key range, so padding is never computed), takes the row maximum,
``e = 2^(s - max)`` (scores in base 2), and one GEMM of ``e`` against the values augmented with indicator
columns (ones, special keys, punctuation keys) gives the output and the row sums behind ``mass``,
``special_tokens`` and ``punctuation`` at once; ``mean_distance`` is one dot product of each row with
``|i - j|``. Entropy is ``ln l - ln 2 * sum_j e_ij (s_ij - max_i) / l`` (the log-sum-exp form of ``long``'s
kernel, no logarithm of weights), ``max_weight`` is ``1 / l`` (the maximum's ``e``
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
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ..errors import InputError
from ..masks import keep_to_additive, mask_to_keep
from .common import LOCAL_WINDOW, as_4d
from .reference import repeat_kv

__all__ = [
    "TilePlan", "TileWorkspace", "plan_tiles", "attention_output_row_stats", "single_threaded", "TILE_ELEMENTS",
    "TILE_MIN_LENGTH",
]

#: From this many tokens per batch the dataset engines take the tiles on the CPU; shorter batches are
#: cheaper on the materialised weights (measured with ``scripts/bench_doclength.py``).
TILE_MIN_LENGTH = 64

#: Score elements per tile (``heads x rows x keys``, 4 MiB of float32): all 12 heads of a 256-token sequence,
#: 4 at 480 tokens. Measured on MiniLM's layers (one thread, 2-core EPYC): at 480 tokens 16 MiB tiles took
#: ~1.5x as long as 2-4 MiB ones (the dozen passes over a tile then run from L3 or memory), while tiles
#: under 1 MiB lose to the few dozen torch calls each tile costs.
TILE_ELEMENTS = 1 << 20

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
    """Buffers kept from layer to layer, grown when a larger tile or batch comes: one set per worker
    thread (the tiles) and one for the call (worker ``-1``: scaled queries, augmented values, row sums)."""

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
    f32 = torch.float32
    thr, lw = float(sparsity_threshold), int(local_window)
    rs = max(1, lw)  # columns i - rs .. i + rs around the diagonal are gathered
    # the layer's buffers come from the workspace (worker -1): fresh ones would page-fault on every layer
    acc = _Accumulators(
        q=torch.mul(query, scale * _LOG2E, out=ws.get(-1, "q", (b, h, t, d))),  # scores in base 2: exp2 is cheaper
        agg=ws.get(-1, "agg", (b, h, t, _width(d))),  # e @ [v | 1 | special | punctuation | 0...] per row
        raw=ws.get(-1, "raw", (len(_RAW), b, h, t)).zero_(),
        near=ws.get(-1, "near", (b, h, t, 2 * rs + 1)),  # every row written by the tiles
        cols=ws.get(-1, "cols", (b, h, t)).zero_(),
    )
    row_w = valid.to(f32)
    # values augmented with indicator columns, for every sequence at once: v | 1 | special | punctuation,
    # zero-padded to a multiple of 8 columns (a GEMM of 35 columns costs more than one of 40)
    vaug = ws.get(-1, "vaug", (b, h, t, _width(d)))
    vaug[..., :d] = value
    vaug[..., d] = 1.0
    for c, x in ((d + 1, special), (d + 2, punctuation)):
        vaug[..., c] = 0.0 if x is None else x.to(f32)[:, None, :]
    vaug[..., d + 3 :] = 0.0
    # items: (sequence, head block) of about tile_elements scores; query rows split only for long inputs
    n_workers = workers or _workers(b * h * t * t)
    items = []
    for i, (lo, hi) in enumerate(plan.ranges):
        per_head = t * (hi - lo)
        heads = max(1, min(h, tile_elements // max(1, per_head)))
        if n_workers > 1 and b * -(-h // heads) < 2 * n_workers:  # enough items for every thread
            heads = max(1, -(-h * b // (2 * n_workers)))
        heads = -(-h // -(-h // heads))  # as many blocks, of even sizes (12 heads by 8: 6 + 6, not 8 + 4)
        items += [(i, h0, min(h, h0 + heads)) for h0 in range(0, h, heads)]
    args = (key, vaug, plan, acc, row_w, thr, rs, ws, tile_elements)
    if n_workers < 2:
        for item in items:
            _item(0, item, *args)
    else:
        # items are taken from a shared queue, not dealt out in advance: on a shared machine a worker
        # whose core is taken for a while does fewer items instead of holding up the layer
        queue, lock = iter(items), threading.Lock()

        def work(w: int) -> None:
            _WORKER.active = True
            torch.set_num_threads(1)
            try:
                while True:
                    with lock:
                        item = next(queue, None)
                    if item is None:
                        return
                    _item(w, item, *args)
            finally:
                _WORKER.active = False

        threads = torch.get_num_threads()
        try:
            with ThreadPoolExecutor(n_workers) as pool:
                list(pool.map(work, range(n_workers)))
        finally:
            torch.set_num_threads(threads)
    with single_threaded():
        return _finish(acc, plan, lw, rs, d)


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run the enclosed torch operations on one intra-op thread (restored after).

    The per-row reductions are many small operations; with several intra-op threads each ends in a
    barrier, and on a loaded machine every barrier waits for a descheduled thread (tens of milliseconds
    per operation measured on a shared 2-core machine), whereas one thread does them in microseconds.
    """
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


_LOG2E = 1.0 / math.log(2.0)
_LN2 = math.log(2.0)
_RAW = ("es", "sq", "dist", "first", "above")


def _width(d: int) -> int:
    """Columns of the augmented values: ``d`` plus three indicator columns, rounded up to a multiple of 8."""
    return -(-(d + 3) // 8) * 8


@dataclass
class _Accumulators:
    """Per-row sums of one call, filled tile by tile (disjoint slices per tile)."""

    q: torch.Tensor  # scaled queries [b, h, t, d]
    agg: torch.Tensor  # [b, h, t, _width(d)]
    raw: torch.Tensor  # [len(_RAW), b, h, t]
    near: torch.Tensor  # [b, h, t, 2 rs + 1]: e at keys i - rs .. i + rs (clamped into the key range)
    cols: torch.Tensor  # [b, h, t]


def _finish(acc: _Accumulators, plan: TilePlan, lw: int, rs: int, d: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Every row quantity from the per-row sums, all sequences and heads at once."""
    b, h, t, _ = acc.agg.shape
    l = acc.agg[..., d]
    il = 1.0 / l
    out = acc.agg[..., :d] * il.unsqueeze(-1)
    es, sq, dist, first, above = acc.raw.unbind(0)
    # gathered columns outside the sequence's key range were clamped copies: zero them
    lo = torch.tensor([r[0] for r in plan.ranges]).reshape(b, 1, 1)
    hi = torch.tensor([r[1] for r in plan.ranges]).reshape(b, 1, 1)
    cidx = torch.arange(t).reshape(1, t, 1) + torch.arange(-rs, rs + 1).reshape(1, 1, -1)
    inside = ((cidx >= lo) & (cidx < hi)).to(torch.float32).unsqueeze(1)  # [b, 1, t, 2 rs + 1]
    near = acc.near * inside
    rows = {
        "entropy": torch.log(l) - _LN2 * es * il,
        "diagonal": near[..., rs] * il,
        "previous_token": near[..., rs - 1] * il,
        "next_token": near[..., rs + 1] * il,
        "first_token": first * il,
        "special_tokens": acc.agg[..., d + 1] * il,
        "punctuation": acc.agg[..., d + 2] * il,
        "max_weight": il,
        "mean_distance": dist * il,
        "local_window": (near[..., rs - lw : rs + lw + 1].sum(-1)) * il,
        "mass": l * il,
        "sq_sum": sq.square() * il.square(),
        "above": above.clone(),
    }
    return out, rows, acc.cols.clone()  # the accumulators are the workspace's: the next call reuses them


def _cached(ws: TileWorkspace, key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    cache = ws.__dict__.setdefault("_cache", {})
    if key not in cache:
        if len(cache) > 256:
            cache.clear()
        cache[key] = make()
    return cache[key]


def _item(
    w: int,
    item: tuple[int, int, int],
    key: torch.Tensor,
    vaug: torch.Tensor,
    plan: TilePlan,
    acc: _Accumulators,
    row_w: torch.Tensor,
    thr: float,
    rs: int,
    ws: TileWorkspace,
    tile_elements: int,
) -> None:
    """One sequence ``bi`` and heads ``h0:h1``: every query tile against the sequence's keys."""
    bi, h0, h1 = item
    n = h1 - h0
    t, d = acc.q.shape[2], acc.q.shape[3]
    lo, hi = plan.ranges[bi]
    sb = hi - lo
    f32 = torch.float32
    vaug = vaug[bi, h0:h1, lo:hi]  # a strided view: the GEMM reads it in place
    kt = key[bi, h0:h1, lo:hi].transpose(1, 2)  # a view: the GEMM reads the keys transposed, no copy
    add = None if plan.additive is None else plan.additive[bi]  # [1|H, T, S]
    if add is not None and add.shape[0] > 1:
        add = add[h0:h1]
    tq = max(1, min(t, tile_elements // max(1, n * sb)))
    whole = tq == t  # one tile of every row: the accumulators' slices are contiguous
    for q0 in range(0, t, tq):
        q1 = min(t, q0 + tq)
        m_ = q1 - q0
        sc = torch.bmm(acc.q[bi, h0:h1, q0:q1], kt, out=ws.get(w, "s", (n, m_, sb)))
        if add is not None:
            sc.add_(add[:, q0:q1, lo:hi])
        sc.sub_(sc.amax(-1, keepdim=True))
        e = torch.exp2(sc, out=ws.get(w, "e", (n, m_, sb)))
        if whole:
            agg = torch.bmm(e, vaug, out=acc.agg[bi, h0:h1])
        else:
            agg = torch.bmm(e, vaug, out=ws.get(w, "agg", (n, m_, vaug.shape[-1])))
            acc.agg[bi, h0:h1, q0:q1] = agg
        raw = acc.raw[:, bi, h0:h1, q0:q1]
        torch.sum(sc.mul_(e), -1, out=raw[0])  # sum_j e (s - max) in base 2: the entropy's numerator
        torch.linalg.vector_norm(e, dim=-1, out=raw[1])
        absd = _cached(ws, ("abs", q0, q1, lo, hi), lambda: (torch.arange(q0, q1, dtype=f32)[:, None]
                                                              - torch.arange(lo, hi, dtype=f32)[None, :]).abs_())
        torch.sum(torch.mul(e, absd, out=sc), -1, out=raw[2])  # sc is free from here on: scratch
        if lo == 0:
            raw[3] = e[..., 0]
        idx = _cached(ws, ("near", q0, q1, lo, hi), lambda: (torch.arange(q0 - lo, q1 - lo)[:, None]
                                                             + torch.arange(-rs, rs + 1)[None, :]).clamp_(0, sb - 1))
        acc.near[bi, h0:h1, q0:q1] = e.gather(-1, idx.expand(n, m_, 2 * rs + 1))
        il = 1.0 / agg[..., d]
        # above: only rows whose largest weight (1 / l: the maximum's e is 1) can exceed the threshold
        # (comparisons written as float 0/1 and summed: several times faster than a boolean result)
        hit = il > thr
        n_hit = int(hit.sum())
        if n_hit > hit.numel() // 16:  # many such rows: one pass over the tile
            lim = (thr * agg[..., d]).unsqueeze(-1)
            torch.sum(torch.gt(e, lim, out=sc), -1, out=raw[4])
        elif n_hit:
            hn, hq = hit.nonzero(as_tuple=True)
            sel = e[hn, hq]
            raw[4][hn, hq] = torch.gt(sel, (thr * agg[hn, hq, d]).unsqueeze(-1), out=sel).sum(-1)
        # column sums over the valid query rows
        acc.cols[bi, h0:h1, lo:hi] += torch.bmm((row_w[bi, q0:q1] * il).unsqueeze(1), e).squeeze(1)


#: Below this many score elements (``batch * heads * T * T``) the tiles run in the caller's thread.
_PARALLEL_MIN = 1 << 20


def _workers(elements: int) -> int:
    if getattr(_WORKER, "active", False) or not torch.backends.openmp.is_available() or elements < _PARALLEL_MIN:
        return 1
    return max(1, torch.get_num_threads())
