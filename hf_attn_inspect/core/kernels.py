"""The attention kernels: every way hf-attn-inspect computes attention, behind one interface.

All kernels take the same arguments, in the layout of transformers' attention functions:

- ``query`` ``[batch, heads, T, d]``, ``key``/``value`` ``[batch, kv_heads, S, d]`` with ``kv_heads``
  dividing ``heads`` (grouped-query attention: query head ``h`` uses key head ``h // (heads // kv_heads)``);
- ``mask``: None, a tensor broadcasting to ``[batch, 1|heads, T, S]`` read by
  :func:`~hf_attn_inspect.core.masks.mask_to_keep` (boolean/integer/0-1 float = keep, other float =
  additive), or, for the output and statistics kernels, a :class:`~hf_attn_inspect.core.masks.LazyMask`
  evaluated tile by tile;
- ``scale`` (default ``1/sqrt(d)``) and, where supported, a Gemma-2 style ``softcap``.

Weights are always ``softmax(q k^T * scale (+ softcap) + mask)`` with the scores and softmax in float32,
masked keys exactly 0 and fully masked rows all 0. The kernels differ only in what they return:

- :func:`scaled_dot_product_attention_with_weights` -> ``(output, weights)``: the reference, exact for
  every mask and dtype; every weight shown to a user comes from it.
- :func:`fast_attention_with_weights` -> ``(output, weights)``: the same numbers for the common case
  (float32, no grouped heads, additive or no mask) without the reference's mask analysis, written into
  a reusable buffer.
- :func:`fast_attention_output` -> ``output``: torch's fused ``scaled_dot_product_attention``, for
  probes that need the layer's output but compute no weights.
- :func:`attention_row_stats` -> ``{name: [batch, heads, T]}``: the per-row statistics of the weights
  (entropy, neighbour shares, distances, ... the row quantities of
  :mod:`hf_attn_inspect.stats.metrics`), streamed from ``query`` and ``key`` in ``[q_tile, k_tile]``
  blocks, so no ``[T, S]`` matrix is ever held.

- :func:`fused_attention_stats` -> ``(output, rows)``: a fused Triton kernel (CUDA; CPU only through
  Triton's interpreter, for tests) giving the output and the rows of :func:`attention_row_stats` (plus the
  column sums behind ``column_share``) in one flash-style pass; :func:`fused_available` says whether it
  runs on a device. Triton is imported on first use only.

Fused kernels live here and only here; the PyTorch code stays the fallback and the reference their tests
compare against. The statistics probes of :mod:`hf_attn_inspect.stats` and :mod:`hf_attn_inspect.runs`
call the fused kernel on CUDA and the PyTorch kernels elsewhere.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import InputError
from .masks import LazyMask, mask_to_keep

__all__ = [
    "LOCAL_WINDOW",
    "repeat_kv",
    "scaled_dot_product_attention_with_weights",
    "fast_attention_with_weights",
    "fast_attention_output",
    "attention_row_stats",
    "FUSED_ENV",
    "fused_available",
    "fused_attention_stats",
    "fused_attention_packed",
    "fused_masks",
    "FusedMasks",
    "FusedLayout",
]

#: Default half-width ``w`` (in tokens) of the ``local_window`` row quantity: the weight within ``|i - j| <= w``.
LOCAL_WINDOW = 4


def repeat_kv(key: torch.Tensor, num_query_heads: int) -> torch.Tensor:
    """Repeat key/value heads (dimension -3) so there are ``num_query_heads`` of them (grouped-query attention).

    Query head ``h`` uses key/value head ``h // (num_query_heads // num_kv_heads)``, the convention of
    Llama, Mistral and every model in transformers. Tensors with fewer than three dimensions, or that
    already have ``num_query_heads`` heads, are returned unchanged.
    """
    if key.dim() < 3 or key.shape[-3] == num_query_heads:
        return key
    num_kv = key.shape[-3]
    if num_query_heads % num_kv:
        raise InputError(f"{num_query_heads} query heads cannot share {num_kv} key/value heads evenly")
    return key.repeat_interleave(num_query_heads // num_kv, dim=-3)


def scaled_dot_product_attention_with_weights(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention ``softmax(q k^T * scale + mask) v`` that returns ``(output, weights)``.

    ``query`` is ``[..., H, T, d]`` (or any ``[..., T, d]``), ``key``/``value`` ``[..., H_kv, S, d]``
    with ``H_kv`` dividing ``H`` (grouped-query heads are repeated). ``scale`` defaults to
    ``1/sqrt(d)``. ``mask`` broadcasts to ``[..., T, S]``: boolean/0-1 (0 = masked) or additive float
    (see :func:`mask_to_keep`). ``is_causal`` masks key ``j > i`` (top-left aligned, as
    ``torch.nn.functional.scaled_dot_product_attention``). ``softcap`` applies Gemma-2 style
    ``tanh(s / softcap) * softcap`` to the scores. Scores and softmax are computed in float32 whatever
    the input dtype; ``weights`` is float32 ``[..., T, S]`` whose rows sum to 1 over the unmasked keys,
    with masked keys exactly 0 and fully masked rows all 0 (never NaN); ``output`` has the query's dtype
    and is 0 on fully masked rows.
    """
    num_heads = query.shape[-3] if query.dim() >= 3 else None
    if num_heads is not None and key.dim() >= 3 and key.shape[-3] != num_heads:
        key = repeat_kv(key, num_heads)
        value = repeat_kv(value, num_heads)
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    scores = torch.matmul(query.float(), key.float().transpose(-2, -1)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    keep = None
    if mask is not None:
        keep, bias = mask_to_keep(mask)
        if bias is not None:
            scores = scores + bias.float()
    if is_causal:
        t, s = scores.shape[-2], scores.shape[-1]
        causal = torch.ones(t, s, dtype=torch.bool, device=scores.device).tril()
        keep = causal if keep is None else keep & causal
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        any_key = keep.any(dim=-1, keepdim=True)
        weights = torch.where(any_key, weights, torch.zeros((), dtype=weights.dtype, device=weights.device))
    else:
        weights = torch.softmax(scores, dim=-1)
    output = torch.matmul(weights, value.float()).to(query.dtype)
    return output, weights


def fast_attention_with_weights(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float | None,
    scratch: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and float32 weights of float32 attention without grouped heads, with an additive (or no) mask.

    Same numbers as :func:`scaled_dot_product_attention_with_weights` (scores, softmax and weighted sum in
    float32) for ``query``/``key``/``value`` of one dtype with as many key as query heads, without its mask
    analysis: ``mask`` (the model's additive eager mask, 0 / dtype minimum) is added to the scores as is,
    so masked keys get exactly 0. Rows whose keys are all masked (padding queries) come out uniform
    instead of 0; they are padding, which every statistic ignores. The scores are computed into
    ``scratch`` when it has the ``[batch, heads, T, S]`` shape (a buffer reused from layer to layer) and
    the softmax is done in place: on CPU, allocating fresh ``[batch, heads, T, S]`` tensors costs more
    than the arithmetic. The returned weights may therefore be ``scratch`` itself.
    """
    scale = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
    shape = (*query.shape[:-1], key.shape[-2])
    if scratch is not None and tuple(scratch.shape) == shape:
        scores = torch.matmul(query, key.transpose(-1, -2), out=scratch)
    else:
        scores = torch.matmul(query, key.transpose(-1, -2))
    scores.mul_(scale)
    if mask is not None:
        scores.add_(mask)
    scores.sub_(scores.amax(-1, keepdim=True)).exp_()
    scores.div_(scores.sum(-1, keepdim=True))
    return torch.matmul(scores, value), scores


# ------------------------------------------------------------------------------------- fused output
def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw: torch.Tensor | float | bool | None) -> torch.Tensor:
    """torch's fused sdpa, with grouped key/value heads (``enable_gqa``, or repeated on older torch)."""
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
    mask: torch.Tensor | LazyMask | None,
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
    passed to sdpa as they are (boolean = keep, float = additive). Rounding differs from the reference
    kernels by the fused kernel's own (about 1e-6 relative in float32).
    """
    if mask is not None and not isinstance(mask, (torch.Tensor, LazyMask)):
        raise InputError(f"mask must be a tensor, a LazyMask or None, got {type(mask).__name__}")
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


# ---------------------------------------------------------------------------------- tiled statistics
_Blocks = Callable[[int, int, int, int], "tuple[torch.Tensor | None, torch.Tensor | None]"]


def _block_fn(mask: torch.Tensor | LazyMask | None) -> _Blocks:
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
    if query.dim() != 4 or key.dim() != 4:
        raise InputError(f"query and key must be [batch, heads, T, d], got {tuple(query.shape)} and {tuple(key.shape)}")
    if query.shape[2] == 0 or key.shape[2] == 0:
        raise InputError("query and key need at least one token each")
    b, h, t, d = query.shape
    hkv, s = key.shape[1], key.shape[2]
    if h % hkv:
        raise InputError(f"{h} query heads cannot share {hkv} key heads evenly")
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
    edges = sorted(set(int(e) for e in (distance_edges or ())))
    all_edges = sorted(set(edges) | {int(local_window)})
    small = [(i, r) for i, r in enumerate(all_edges) if r <= _GATHER_EDGE]
    large = [(i, r) for i, r in enumerate(all_edges) if r > _GATHER_EDGE]
    rs = max([1] + [r for _, r in small])  # gathered columns: the diagonal +- rs
    bilinear = softcap is None

    # ---- masks: a key-padding mask goes into the score GEMM as one extra column (0 or -inf)
    pad_keep = None
    blocks = None
    if isinstance(mask, torch.Tensor):
        m4 = mask
        while m4.dim() < 4:
            m4 = m4.unsqueeze(0)
        keep_t, bias_t = mask_to_keep(m4)
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
        padcol = torch.zeros(b, s, device=dev, dtype=f32).masked_fill_(~pad_keep, ninf)
        kscore[..., n_score - 1] = padcol.repeat_interleave(hkv, 0)
    padadd = None
    if pad_keep is not None and not bilinear:  # softcap: the padding is added after the cap
        padadd = torch.zeros(b, s, device=dev, dtype=f32).masked_fill_(~pad_keep, ninf).reshape(b, 1, 1, 1, s)
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
            cache[key_] = torch.zeros(tq, 1, tk, device=dev, dtype=f32).masked_fill_(~allow[:, None, :], ninf)
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
                    addm = torch.zeros(keep.shape, device=dev, dtype=f32).masked_fill_(~keep.to(dev).bool(), ninf)
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


# =====================================================================================================
# Fused Triton kernel: attention output + every per-row statistic in one launch (CUDA; CPU interpreter)
# =====================================================================================================
# Triton is optional: it is imported on first use only, so the package works without it. The PyTorch
# code above stays the reference and the CPU fallback; nothing above depends on this section.

#: Environment switch of the fused path: ``0`` never use it, ``1`` use it wherever it can run (also on CPU
#: tensors, through Triton's interpreter ``TRITON_INTERPRET``: slow, for tests), unset = CUDA tensors only.
FUSED_ENV = "HF_ATTN_INSPECT_FUSED"

#: Row quantities written by the fused kernel, in the order of its statistics buffer.
_FUSED_STATS = (
    "entropy", "diagonal", "previous_token", "next_token", "first_token", "special_tokens", "punctuation",
    "max_weight", "mean_distance", "mass", "sq_sum", "above", "lse",
)
_FUSED_KERNELS: dict[str, object] = {}
_EDGE_TENSORS: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}
tl = None  # triton.language, bound on first use (the kernel below reads it as a global)


def _triton_mode() -> str | None:
    """``"compiled"``, ``"interpret"`` (Triton imported with ``TRITON_INTERPRET=1``) or None (no Triton).

    Triton fixes the mode of its own library functions when it is first imported, so one process runs
    either compiled kernels (CUDA tensors) or interpreted ones (CPU tensors), never both.
    """
    try:
        import triton  # noqa: F401
        import triton.language as tlang
    except Exception:  # noqa: BLE001 - any failure to import means "no Triton here"
        return None
    return "interpret" if type(tlang.sum).__name__ == "InterpretedFunction" else "compiled"


def fused_available(device: torch.device | str) -> bool:
    """Whether :func:`fused_attention_stats` runs for tensors on ``device`` in this process.

    CUDA tensors need Triton (compiled mode). CPU tensors run only through Triton's interpreter: when
    :data:`FUSED_ENV` is ``1`` and Triton was imported with ``TRITON_INTERPRET=1`` (tests; slow).
    ``HF_ATTN_INSPECT_FUSED=0`` turns the fused path off everywhere. Cheap: no device synchronisation.
    """
    import os

    flag = os.environ.get(FUSED_ENV, "").strip()
    if flag == "0":
        return False
    dev = torch.device(device)
    if dev.type == "cuda":
        return _triton_mode() == "compiled"
    return flag == "1" and dev.type == "cpu" and _triton_mode() == "interpret"


def _fused_kernel():
    """The jitted kernel (decorated once, in the mode Triton was imported in)."""
    if "kernel" not in _FUSED_KERNELS:
        import triton
        import triton.language

        globals()["tl"] = triton.language
        _FUSED_KERNELS["kernel"] = triton.jit(_fused_attention_kernel)
    return _FUSED_KERNELS["kernel"]


def _fused_attention_kernel(
    Q, K, V, O, BITS, BIAS, EDGES, STATS, COL, FLAGS,
    sq_b, sq_h, sq_t, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, so_b, so_h, so_t,
    sbias_b, sbias_h, sbias_t, sbias_s,
    H, G, T, S, D, OFFSET, n_rows, max_edge, n_tiles,
    scale, softcap, window, thr, log2_thr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    NE: tl.constexpr, BLOCK_E: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_CLASSES: tl.constexpr, FP32_DOT: tl.constexpr,
    WANT_OUT: tl.constexpr, PASS2: tl.constexpr, WANT_COL: tl.constexpr,
    NATURAL: tl.constexpr, SKIP2: tl.constexpr,
):
    """One program = one (batch, head) x BLOCK_M query rows. See :func:`fused_attention_stats`.

    Scores are kept in base-2 units (``s * log2(e)``, exp2/log2); the statistics are converted back to
    natural units when stored. Key tiles in which every key is allowed and valid (no causal/window/padding
    masking, no bias) take a cheap path without any mask work; the diagonal/first-token/class/distance
    terms are computed only in tiles that can contain them (scalar branches on the tile's indices).
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // G
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_e = tl.arange(0, BLOCK_E)
    row_ok = offs_m < T
    d_ok = offs_d < D
    qpos = offs_m + OFFSET
    q = tl.load(Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_t + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    q_first = pid_m * BLOCK_M + OFFSET
    q_last = tl.minimum(pid_m * BLOCK_M + BLOCK_M - 1, T - 1) + OFFSET
    lo = q_first * 0
    hi = q_first * 0 + S
    if CAUSAL:
        hi = tl.maximum(tl.minimum(hi, q_last + 1), 0)
        if HAS_WINDOW:
            lo = tl.maximum(q_first - window + 1, 0)
    else:
        if HAS_WINDOW:
            lo = tl.maximum(q_first - window + 1, 0)
            hi = tl.maximum(tl.minimum(hi, q_last + window), 0)
    lo = (lo // BLOCK_N) * BLOCK_N
    ninf = float("-inf")
    qk_scale = scale * 1.4426950408889634  # log2(e): scores in base 2
    flag_row = (pid_bh * tl.num_programs(0) + pid_m) * n_tiles

    m_i = tl.full([BLOCK_M], ninf, tl.float32)  # running max of the scores (base 2)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)  # sum_j e_ij, e = exp2(s - m) (every allowed key)
    mass = tl.full([BLOCK_M], 0.0, tl.float32)  # the same over valid keys
    es = tl.full([BLOCK_M], 0.0, tl.float32)  # sum_valid e_ij (s_ij - m_i) (base 2)
    sq = tl.full([BLOCK_M], 0.0, tl.float32)  # sum_valid e_ij^2
    first = tl.full([BLOCK_M], 0.0, tl.float32)
    diag = tl.full([BLOCK_M], 0.0, tl.float32)
    prev = tl.full([BLOCK_M], 0.0, tl.float32)
    nxt = tl.full([BLOCK_M], 0.0, tl.float32)
    spec = tl.full([BLOCK_M], 0.0, tl.float32)
    punc = tl.full([BLOCK_M], 0.0, tl.float32)
    dist = tl.full([BLOCK_M], 0.0, tl.float32)
    vmax = tl.full([BLOCK_M], ninf, tl.float32)  # max score over valid keys (base 2)
    within = tl.full([BLOCK_M, BLOCK_E], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)

    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        col_ok = offs_n < S
        k = tl.load(K + b * sk_b + hk * sk_h + offs_n[:, None] * sk_s + offs_d[None, :],
                    mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        if FP32_DOT:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        if NATURAL:
            s = s * scale
            if HAS_SOFTCAP:  # softcap * tanh(s / softcap), tanh from exp (no tanh in older Triton)
                x = s / softcap
                ax = tl.where(x < 0, -x, x)
                z = tl.exp(-2.0 * ax)
                th = (1.0 - z) / (1.0 + z)
                s = tl.where(x < 0, -th, th) * softcap
            if HAS_BIAS:
                s += tl.load(BIAS + b * sbias_b + h * sbias_h + offs_m[:, None] * sbias_t + offs_n[None, :] * sbias_s,
                             mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
            s = s * 1.4426950408889634
        else:
            s = s * qk_scale
        bits = tl.load(BITS + b * S + offs_n, mask=col_ok, other=0).to(tl.int32)
        # a full tile: every key in range, allowed and valid for every row (no mask work at all)
        full = tl.min(bits & 3, 0) == 3
        if CAUSAL:
            full = full & (start_n + BLOCK_N - 1 <= q_first)
            if HAS_WINDOW:
                full = full & (q_last - start_n < window)
        else:
            if HAS_WINDOW:
                full = full & (q_last - start_n < window) & (start_n + BLOCK_N - 1 - q_first < window)
        if HAS_BIAS:
            full = full & (start_n < 0)
        if full:
            tmax = tl.max(s, 1)
            m_new = tl.maximum(m_i, tmax)
            m_safe = m_new
            e = tl.math.exp2(s - m_new[:, None])
            ev = e
            l_add = tl.sum(e, 1)
            mass_add = l_add
            es_add = tl.sum(e * (s - m_new[:, None]), 1)
            vm = tmax
        else:
            keep = (bits & 1) != 0
            validk = (bits & 2) != 0
            dd = qpos[:, None] - offs_n[None, :]
            allowed = keep[None, :] & row_ok[:, None]
            if CAUSAL:
                allowed = allowed & (dd >= 0)
            if HAS_WINDOW:
                if CAUSAL:
                    allowed = allowed & (dd < window)
                else:
                    allowed = allowed & (dd < window) & (dd > -window)
            if HAS_BIAS:
                allowed = allowed & (s > ninf)
            s = tl.where(allowed, s, ninf)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == ninf, 0.0, m_new)
            e = tl.math.exp2(s - m_safe[:, None])
            use = allowed & validk[None, :]
            ev = tl.where(use, e, 0.0)
            l_add = tl.sum(e, 1)
            mass_add = tl.sum(ev, 1)
            es_add = tl.sum(ev * (tl.where(use, s, m_safe[:, None]) - m_safe[:, None]), 1)
            vm = tl.max(tl.where(use, s, ninf), 1)
        m_old = tl.where(m_i == ninf, 0.0, m_i)
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + l_add
        es = alpha * (es - (m_safe - m_old) * mass) + es_add
        mass = mass * alpha + mass_add
        sq = sq * alpha * alpha + tl.sum(ev * ev, 1)
        rel = (qpos - start_n).to(tl.float32)[:, None] - offs_n0.to(tl.float32)[None, :]  # i - j
        if CAUSAL:  # keys that count are never after the query: |i - j| = i - j
            dist = dist * alpha + tl.sum(ev * rel, 1)
        else:
            dist = dist * alpha + tl.sum(ev * tl.abs(rel), 1)
        vmax = tl.maximum(vmax, vm)
        if SKIP2:  # remember whether this tile can hold a weight above the threshold
            # lse only grows with more keys, so s - lse_now bounds s - lse_final from above
            lse_now = m_safe + tl.math.log2(tl.where(l_i > 0, l_i, 1.0))
            gap = tl.where(row_ok & (l_i > 0), vm - lse_now, ninf)
            hot = tl.max(gap, 0) > log2_thr - 0.001
            tl.store(FLAGS + flag_row + start_n // BLOCK_N, hot.to(tl.int8))
        tile_min = tl.maximum(tl.maximum(start_n - q_last, q_first - (start_n + BLOCK_N - 1)), 0)
        tile_max = tl.maximum(q_last - start_n, start_n + BLOCK_N - 1 - q_first)
        first = first * alpha
        diag = diag * alpha
        prev = prev * alpha
        nxt = nxt * alpha
        if start_n == 0:
            first += tl.sum(tl.where(offs_n0[None, :] == 0, ev, 0.0), 1)
        if tile_min <= 1:  # the diagonal and its two neighbours lie in tiles near the diagonal only
            diag += tl.sum(tl.where(rel == 0.0, ev, 0.0), 1)
            prev += tl.sum(tl.where(rel == 1.0, ev, 0.0), 1)
            nxt += tl.sum(tl.where(rel == -1.0, ev, 0.0), 1)
        if HAS_CLASSES:
            spec = spec * alpha
            punc = punc * alpha
            if tl.max(bits & 4, 0) != 0:
                spec += tl.sum(tl.where(((bits & 4) != 0)[None, :], ev, 0.0), 1)
            if tl.max(bits & 8, 0) != 0:
                punc += tl.sum(tl.where(((bits & 8) != 0)[None, :], ev, 0.0), 1)
        within = within * alpha[:, None]
        if tile_min <= max_edge:  # only tiles near the diagonal hold keys within an edge
            for ei in range(NE):
                edge = tl.load(EDGES + ei)
                if tile_min <= edge:
                    if tile_max <= edge:  # the whole tile lies within this edge
                        part = mass_add
                    else:
                        part = tl.sum(tl.where(tl.abs(rel) <= edge, ev, 0.0), 1)
                    within += tl.where(offs_e[None, :] == ei, part[:, None], 0.0)
        if WANT_OUT:
            v = tl.load(V + b * sv_b + hk * sv_h + offs_n[:, None] * sv_s + offs_d[None, :],
                        mask=col_ok[:, None] & d_ok[None, :], other=0.0)
            if FP32_DOT:
                acc = acc * alpha[:, None] + tl.dot(e.to(v.dtype), v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(e.to(v.dtype), v)
        m_i = m_new

    has = l_i > 0
    l_safe = tl.where(has, l_i, 1.0)
    inv_l = tl.where(has, 1.0 / l_safe, 0.0)
    log2_l = tl.where(has, tl.math.log2(l_safe), 0.0)
    m_fin = tl.where(m_i == ninf, 0.0, m_i)
    lse2 = tl.where(has, m_fin + log2_l, ninf)  # base 2
    lse2_safe = tl.where(has, lse2, 0.0)
    if WANT_OUT:
        o = acc * inv_l[:, None]
        tl.store(O + b * so_b + h * so_h + offs_m[:, None] * so_t + offs_d[None, :], o.to(O.dtype.element_ty),
                 mask=row_ok[:, None] & d_ok[None, :])
    row = STATS + pid_bh * T + offs_m
    tl.store(row + 0 * n_rows, tl.where(has, (log2_l * mass - es) * 0.6931471805599453 * inv_l, 0.0), mask=row_ok)
    tl.store(row + 1 * n_rows, diag * inv_l, mask=row_ok)
    tl.store(row + 2 * n_rows, prev * inv_l, mask=row_ok)
    tl.store(row + 3 * n_rows, nxt * inv_l, mask=row_ok)
    tl.store(row + 4 * n_rows, first * inv_l, mask=row_ok)
    tl.store(row + 5 * n_rows, spec * inv_l, mask=row_ok)
    tl.store(row + 6 * n_rows, punc * inv_l, mask=row_ok)
    tl.store(row + 7 * n_rows, tl.math.exp2(vmax - m_fin) * inv_l, mask=row_ok)
    tl.store(row + 8 * n_rows, dist * inv_l, mask=row_ok)
    tl.store(row + 9 * n_rows, mass * inv_l, mask=row_ok)
    tl.store(row + 10 * n_rows, sq * inv_l * inv_l, mask=row_ok)
    tl.store(row + 12 * n_rows, lse2 * 0.6931471805599453, mask=row_ok)
    tl.store(row[:, None] + (13 + offs_e[None, :]) * n_rows, within * inv_l[:, None],
             mask=row_ok[:, None] & (offs_e[None, :] < NE))

    if PASS2:  # quantities that need the final normaliser: the sparsity count and the column sums
        above = tl.full([BLOCK_M], 0.0, tl.float32)
        if WANT_COL:
            qbits = tl.load(BITS + b * S + qpos, mask=row_ok & (qpos >= 0) & (qpos < S), other=0).to(tl.int32)
            qvalid = ((qbits & 2) != 0) & has
        for start_n in range(lo, hi, BLOCK_N):
            go = start_n >= 0
            if SKIP2:  # tiles that pass 1 proved hold no weight above the threshold are skipped
                go = tl.load(FLAGS + flag_row + start_n // BLOCK_N) != 0
            if go:
                offs_n = start_n + offs_n0
                col_ok = offs_n < S
                k = tl.load(K + b * sk_b + hk * sk_h + offs_n[:, None] * sk_s + offs_d[None, :],
                            mask=col_ok[:, None] & d_ok[None, :], other=0.0)
                if FP32_DOT:
                    s = tl.dot(q, tl.trans(k), input_precision="ieee")
                else:
                    s = tl.dot(q, tl.trans(k))
                if NATURAL:
                    s = s * scale
                    if HAS_SOFTCAP:
                        x = s / softcap
                        ax = tl.where(x < 0, -x, x)
                        z = tl.exp(-2.0 * ax)
                        th = (1.0 - z) / (1.0 + z)
                        s = tl.where(x < 0, -th, th) * softcap
                    if HAS_BIAS:
                        s += tl.load(BIAS + b * sbias_b + h * sbias_h + offs_m[:, None] * sbias_t
                                     + offs_n[None, :] * sbias_s,
                                     mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
                    s = s * 1.4426950408889634
                else:
                    s = s * qk_scale
                bits = tl.load(BITS + b * S + offs_n, mask=col_ok, other=0).to(tl.int32)
                dd = qpos[:, None] - offs_n[None, :]
                use = ((bits & 3) == 3)[None, :] & row_ok[:, None] & has[:, None]
                if CAUSAL:
                    use = use & (dd >= 0)
                if HAS_WINDOW:
                    if CAUSAL:
                        use = use & (dd < window)
                    else:
                        use = use & (dd < window) & (dd > -window)
                if HAS_BIAS:
                    use = use & (s > ninf)
                p = tl.where(use, tl.math.exp2(tl.where(use, s, 0.0) - lse2_safe[:, None]), 0.0)
                above += tl.sum(tl.where(p > thr, 1.0, 0.0), 1)
                if WANT_COL:
                    colv = tl.sum(tl.where(qvalid[:, None], p, 0.0), 0)
                    tl.atomic_add(COL + pid_bh * S + offs_n, colv, mask=col_ok)
        tl.store(row + 11 * n_rows, above, mask=row_ok)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


class FusedMasks:
    """The key masks of one attention call, prepared for the fused kernel (see :func:`fused_masks`).

    ``bits`` is int8 ``[batch, S]`` (1 = a query may attend to the key, 2 = the key is valid, i.e. not
    padding, 4 = special token, 8 = punctuation); ``bias`` the additive float32 bias or None; ``causal``
    whether positions mask future keys; ``has_classes`` whether bits 4/8 are set anywhere. Build it once
    per batch and pass it to every layer (no per-layer mask work).
    """

    __slots__ = ("bits", "bias", "causal", "has_classes")

    def __init__(self, bits: torch.Tensor, bias: torch.Tensor | None, causal: bool, has_classes: bool) -> None:
        self.bits, self.bias, self.causal, self.has_classes = bits, bias, causal, has_classes


def fused_masks(
    batch: int,
    keys: int,
    device: torch.device | str,
    *,
    mask: torch.Tensor | LazyMask | None = None,
    causal: bool = False,
    key_keep: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    key_valid: torch.Tensor | None = None,
    special: torch.Tensor | None = None,
    punctuation: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> FusedMasks:
    """The :class:`FusedMasks` of ``batch`` rows over ``keys`` keys from the arguments of :func:`fused_attention_stats`.

    Same meaning as there (``mask``: None, a tensor or a plain causal/bidirectional :class:`LazyMask`;
    a tensor is read without host synchronisation). The result does not depend on the layer: compute it
    once per batch and hand it to :func:`fused_attention_packed` for every layer.
    """
    b, s, dev = int(batch), int(keys), torch.device(device)
    keep_vec = torch.ones(b, s, dtype=torch.bool, device=dev)
    if isinstance(mask, LazyMask):
        plain = (mask.plain_causal or mask.bidirectional) and mask.q_offset == 0 and mask.kv_offset == 0
        if not plain:
            raise InputError("the fused kernel takes plain causal/bidirectional LazyMasks; use attention_row_stats")
        causal = causal or mask.plain_causal
        if mask.key_padding is not None:
            keep_vec = keep_vec & mask.key_padding.to(dev).bool()
    elif isinstance(mask, torch.Tensor):
        # read without host synchronisation: boolean/integer = keep, float = additive (the masks
        # transformers hands an attention function); values <= dtype min / 2 count as masked
        m = mask.to(dev)
        while m.dim() < 4:
            m = m.unsqueeze(0)
        if not m.is_floating_point():
            if m.shape[1] == 1 and m.shape[2] == 1:
                keep_vec = keep_vec & (m[:, 0, 0, :] != 0).expand(b, s)
                m = None
            else:
                m = torch.zeros(m.shape, device=dev).masked_fill_(m == 0, float("-inf"))
        else:
            m = m.float().masked_fill(m <= torch.finfo(m.dtype).min / 2, float("-inf"))
        if m is not None:
            bias = m if bias is None else bias.to(dev).float() + m
    elif mask is not None:
        raise InputError(f"mask must be a tensor, a LazyMask or None, got {type(mask).__name__}")
    if key_keep is not None:
        keep_vec = keep_vec & key_keep.to(dev).bool()
    if lengths is not None:
        keep_vec = keep_vec & (torch.arange(s, device=dev)[None, :] < lengths.to(dev).reshape(b, 1))
    bits = keep_vec.to(torch.int8)
    bits = bits | (2 * (torch.ones_like(keep_vec) if key_valid is None else key_valid.to(dev).bool())).to(torch.int8)
    has_classes = special is not None or punctuation is not None
    if special is not None:
        bits = bits | (4 * special.to(dev).bool()).to(torch.int8)
    if punctuation is not None:
        bits = bits | (8 * punctuation.to(dev).bool()).to(torch.int8)
    return FusedMasks(bits.contiguous(), None if bias is None else bias.to(dev), bool(causal), has_classes)


class FusedLayout:
    """Where each row quantity lies in the packed statistics buffer of :func:`fused_attention_packed`.

    The buffer is float32 ``[P, *lead]`` (``lead`` = ``[batch, heads, T]`` for one call, or any stack of
    such buffers along a new dimension after the first); :meth:`rows` returns views ``{name: [*lead]}``
    (``within`` ``[*lead, E]``), the same dictionary :func:`fused_attention_stats` returns.
    """

    __slots__ = ("all_edges", "local_window", "edges", "above")

    def __init__(self, all_edges: Sequence[int], local_window: int, edges: Sequence[int], above: bool) -> None:
        self.all_edges, self.local_window = tuple(all_edges), int(local_window)
        self.edges, self.above = tuple(edges), bool(above)

    def rows(self, packed: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``packed`` ``[P, *lead]`` by row name (no copies)."""
        rows = {name: packed[i] for i, name in enumerate(_FUSED_STATS) if self.above or name != "above"}
        base = len(_FUSED_STATS)
        rows["local_window"] = packed[base + self.all_edges.index(self.local_window)]
        if self.edges:
            idx = [base + self.all_edges.index(e) for e in self.edges]
            rows["within"] = packed[idx[0] : idx[-1] + 1].movedim(0, -1) if idx == list(range(idx[0], idx[-1] + 1)) \
                else packed[idx].movedim(0, -1)
        return rows


def fused_attention_stats(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor | None,
    *,
    scale: float | None = None,
    mask: torch.Tensor | LazyMask | None = None,
    causal: bool = False,
    window: int | None = None,
    key_keep: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    key_valid: torch.Tensor | None = None,
    special: torch.Tensor | None = None,
    punctuation: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    sparsity_threshold: float = 0.3,
    local_window: int = LOCAL_WINDOW,
    distance_edges: Sequence[int] | None = None,
    column_sums: bool = False,
    count_above: bool = True,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """Attention output and every per-row statistic in one fused Triton kernel: ``(output, rows)``.

    Same inputs and the same ``rows`` as :func:`attention_row_stats` (``query`` ``[batch, heads, T, d]``,
    ``key``/``value`` ``[batch, kv_heads, S, d]``, grouped heads read in place, never repeated; query ``i``
    sits at position ``S - T + i``; ``mask`` None, a tensor or a plain causal/bidirectional
    :class:`LazyMask`; ``causal``/``window``; ``key_valid`` zeroes weights on padding keys without
    renormalising; ``special``/``punctuation`` key masks; ``softcap``), plus ``key_keep`` (boolean
    ``[batch, S]``, keys a query may attend to) or ``lengths`` (``[batch]`` real tokens, keys ``j >=
    length`` masked), and ``bias``, an additive float tensor broadcasting to ``[batch, 1|heads, T, S]``
    (``-inf`` = masked). A tensor ``mask`` is read without host synchronisation: boolean/integer = keep,
    float = additive (values at or below half the dtype's minimum = masked; unlike :func:`mask_to_keep`,
    a float mask of 0s and 1s is additive too, as transformers' masks always are). ``output`` is ``softmax(...) @ value`` in the query's dtype (0 on fully masked
    rows; None when ``value`` is None); ``rows`` holds float32 ``[batch, heads, T]`` tensors (``within``
    ``[batch, heads, T, E]`` when ``distance_edges`` is given) and, with ``column_sums=True``,
    ``column_sum`` ``[batch, heads, S]``: ``sum_i a_ij`` over the valid query rows (``key_valid`` at the
    query's position) of the padding-zeroed weights, from which
    :func:`~hf_attn_inspect.stats.metrics.column_share` is ``max_j column_sum_j / n``.

    Algorithm: one program per (batch x head, ``block_m`` query rows) makes one pass over the key tiles
    with the online softmax of flash attention (running max ``m``, running sum ``l``; every accumulator is
    a sum of ``e_ij = exp(s_ij - m_i)`` terms and is rescaled by ``exp(m_old - m_new)`` when the max grows,
    ``sum e (s - m)`` with its shift term), float32 throughout, scores and output products with full
    float32 precision for float32 inputs (no TF32). Tiles that a causal mask or a window rule out are never
    visited. Two quantities cannot be rescaled online, because they compare or add *normalised* weights
    across rows or against a threshold: ``above`` (the number of keys with ``a_ij > sparsity_threshold``)
    and ``column_sum``; they take a second pass over the same key tiles with the final ``lse`` (scores
    only, no value product; still no ``[T, S]`` memory; column sums accumulate with atomic adds).
    ``max_weight`` comes from the running max over valid keys, ``exp(max - lse)``. Memory: the output,
    ``O(batch x heads x T)`` statistics and ``O(batch x heads x S)`` column sums. Rounding differs from
    :func:`attention_row_stats` by float32 summation order (about 1e-6 relative in float32).
    Pass 1 marks the key tiles that can hold a weight above the threshold (``s - lse`` is bounded by the
    running ``lse``), so without column sums the second pass only visits those tiles (few: the diagonal,
    sinks). ``count_above=False`` (and no column sums) skips the second pass and leaves ``above`` out.
    ``sparsity_threshold`` must be >= 0. Runs on CUDA tensors, or on CPU tensors through Triton's
    interpreter (see :func:`fused_available`).
    """
    if query.dim() != 4 or key.dim() != 4:
        raise InputError(f"query and key must be [batch, heads, T, d], got {tuple(query.shape)} and {tuple(key.shape)}")
    masks = fused_masks(query.shape[0], key.shape[2], query.device, mask=mask, causal=causal, key_keep=key_keep,
                        lengths=lengths, key_valid=key_valid, special=special, punctuation=punctuation, bias=bias)
    out, packed, col, layout = fused_attention_packed(
        query, key, value, masks, scale=scale, window=window, softcap=softcap, sparsity_threshold=sparsity_threshold,
        local_window=local_window, distance_edges=distance_edges, column_sums=column_sums, count_above=count_above,
        block_m=block_m, block_n=block_n,
    )
    rows = layout.rows(packed)
    if col is not None:
        rows["column_sum"] = col
    return out, rows


def fused_attention_packed(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor | None,
    masks: FusedMasks,
    *,
    scale: float | None = None,
    window: int | None = None,
    softcap: float | None = None,
    sparsity_threshold: float = 0.3,
    local_window: int = LOCAL_WINDOW,
    distance_edges: Sequence[int] | None = None,
    column_sums: bool = False,
    count_above: bool = True,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None, FusedLayout]:
    """:func:`fused_attention_stats` with prepared masks and the rows packed in one buffer: ``(output, packed, column_sum, layout)``.

    ``masks`` comes from :func:`fused_masks` (built once per batch); ``packed`` is float32 ``[P, batch,
    heads, T]`` holding every row quantity (``layout.rows(packed)`` gives the named views), ``column_sum``
    ``[batch, heads, S]`` or None. The per-call host work is a few allocations and one kernel launch, so
    probes can keep ``packed`` per layer and reduce all layers at once after the forward pass.
    """
    if query.dim() != 4 or key.dim() != 4:
        raise InputError(f"query and key must be [batch, heads, T, d], got {tuple(query.shape)} and {tuple(key.shape)}")
    b, h, t, d = query.shape
    hkv, s = key.shape[1], key.shape[2]
    if t == 0 or s == 0:
        raise InputError("query and key need at least one token each")
    if h % hkv:
        raise InputError(f"{h} query heads cannot share {hkv} key heads evenly")
    if sparsity_threshold < 0:
        raise InputError("the fused kernel needs sparsity_threshold >= 0; use attention_row_stats for negative ones")
    if d > 256:
        raise InputError(f"the fused kernel supports head dimensions up to 256, got {d}")
    dev = query.device
    if dev.type not in ("cuda", "cpu") or key.device != dev or (value is not None and value.device != dev):
        raise InputError("query, key and value must be on one CUDA (or, interpreted, CPU) device")
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    bits = masks.bits
    if tuple(bits.shape) != (b, s) or bits.device != dev:
        raise InputError(f"the prepared masks are [batch, keys] = {tuple(bits.shape)}, the call needs {(b, s)} on {dev}")

    bias = masks.bias
    bias_args = (0, 0, 0, 0)
    if bias is not None:
        bb = bias
        while bb.dim() < 4:
            bb = bb.unsqueeze(0)
        bb = bb.expand(b, bb.shape[1], t, s)
        if bb.shape[1] not in (1, h):
            raise InputError(f"bias must broadcast to [batch, 1|heads, T, S], got {tuple(bias.shape)}")
        bias_args = (bb.stride(0), 0 if bb.shape[1] == 1 else bb.stride(1), bb.stride(2), bb.stride(3))
        bias = bb

    edges = sorted(set(int(e) for e in (distance_edges or ())))
    all_edges = sorted(set(edges) | {int(local_window)})
    cache_key = (str(dev), tuple(all_edges))
    if cache_key not in _EDGE_TENSORS:  # built once: a fresh host-to-device copy per call would synchronise
        _EDGE_TENSORS[cache_key] = torch.tensor(all_edges, dtype=torch.int32, device=dev)
    edges_t = _EDGE_TENSORS[cache_key]

    on_gpu = dev.type == "cuda"
    q = query if query.stride(-1) == 1 else query.contiguous()
    k = key if key.stride(-1) == 1 else key.contiguous()
    v = None if value is None else (value if value.stride(-1) == 1 else value.contiguous())
    if not on_gpu and q.dtype in (torch.bfloat16, torch.float16):
        # Triton's interpreter mis-reads 16-bit floats in tl.dot; upcasting is exact for the products
        # (the GPU multiplies 16-bit inputs exactly and accumulates in float32 too)
        q = q.float()
    if v is not None and v.dtype != q.dtype:
        v = v.to(q.dtype)
    if k.dtype != q.dtype:
        k = k.to(q.dtype)
    pass2 = bool(count_above) or bool(column_sums)
    out = None if v is None else torch.empty(b, h, t, d, dtype=query.dtype, device=dev)
    packed = torch.empty(len(_FUSED_STATS) + len(all_edges), b, h, t, dtype=torch.float32, device=dev)
    col = torch.zeros(b, h, s, dtype=torch.float32, device=dev) if column_sums else None
    # GPU tiles: 128 x 64 for 16-bit inputs (flash-attention sizes for H100), 64 x 64 for float32 with
    # d <= 64, 32 x 32 for wide float32 heads (whose tiles would not fit in shared memory)
    wide32 = q.element_size() == 4 and d > 64
    if on_gpu:
        dm, dn = (32, 32) if wide32 else ((64, 64) if q.element_size() == 4 else (128, 64))
    else:
        dm, dn = 32, 32
    bm = max(16, _next_pow2(int(block_m or dm)))
    bn = max(16, _next_pow2(int(block_n or dn)))
    n_mblk, n_tiles = _cdiv(t, bm), _cdiv(s, bn)
    flags = (torch.empty(b * h * n_mblk * n_tiles, dtype=torch.int8, device=dev)
             if pass2 and not column_sums else packed)
    mode = _triton_mode()
    if mode is None or (mode == "interpret") == on_gpu:
        need = "Triton compiled for CUDA tensors" if on_gpu else "Triton's interpreter (TRITON_INTERPRET=1 before import)"
        raise InputError(f"the fused kernel needs {need}; use attention_row_stats instead")
    kernel = _fused_kernel()
    grid = (n_mblk, b * h)
    o_arg = out if out is not None else q
    v_arg = v if v is not None else k
    thr = float(sparsity_threshold)
    kernel[grid](
        q, k, v_arg, o_arg, bits, bias if bias is not None else packed, edges_t, packed,
        col if col is not None else packed, flags,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v_arg.stride(0), v_arg.stride(1), v_arg.stride(2), o_arg.stride(0), o_arg.stride(1), o_arg.stride(2),
        *bias_args,
        h, h // hkv, t, s, d, s - t, b * h * t, max(all_edges), n_tiles,
        scale, float(softcap) if softcap is not None else 1.0, int(window) if window is not None else 0,
        thr, math.log2(thr) if thr > 0 else float("-inf"),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=max(16, _next_pow2(d)), NE=len(all_edges),
        BLOCK_E=max(2, _next_pow2(len(all_edges))),
        CAUSAL=bool(masks.causal), HAS_WINDOW=window is not None, HAS_SOFTCAP=softcap is not None,
        HAS_BIAS=bias is not None, HAS_CLASSES=masks.has_classes, FP32_DOT=q.dtype == torch.float32,
        WANT_OUT=out is not None, PASS2=pass2, WANT_COL=bool(column_sums),
        NATURAL=softcap is not None or bias is not None, SKIP2=pass2 and not column_sums,
        num_warps=8 if (bm >= 128 or d > 64) else 4, num_stages=3 if on_gpu and bm >= 128 else 2,
    )
    return out, packed, col, FusedLayout(all_edges, local_window, edges, pass2)


def _cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive integers (the kernel's grid size)."""
    return -(-int(a) // int(b))
