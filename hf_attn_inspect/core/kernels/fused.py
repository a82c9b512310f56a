"""The fused Triton kernel's host side: attention output and every row statistic in one launch.

:func:`fused_attention_stats` (and :func:`fused_attention_packed` with masks prepared once per batch by
:func:`fused_masks`) run the kernel of :mod:`.triton_kernel` on CUDA, or on CPU through Triton's
interpreter (tests); :func:`fused_available` says whether it can run. Triton stays optional: nothing is
imported from it until a kernel runs. The PyTorch kernels stay the fallback and the reference.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from ..errors import InputError
from ..masks import LazyMask, additive_masked, all_valid, keep_to_additive
from .common import LOCAL_WINDOW, as_4d, check_query_key, check_rank, edge_lists
from .triton_kernel import fused_kernel, triton_mode

__all__ = [
    "FUSED_ENV",
    "fused_available",
    "fused_attention_stats",
    "fused_attention_packed",
    "fused_masks",
    "FusedMasks",
    "FusedLayout",
]

#: Environment switch of the fused path: ``0`` never use it, ``1`` use it wherever it can run (also on CPU
#: tensors, through Triton's interpreter ``TRITON_INTERPRET``: slow, for tests), unset = CUDA tensors only.
FUSED_ENV = "HF_ATTN_INSPECT_FUSED"

#: Row quantities written by the fused kernel, in the order of its statistics buffer.
_FUSED_STATS = (
    "entropy", "diagonal", "previous_token", "next_token", "first_token", "special_tokens", "punctuation",
    "max_weight", "mean_distance", "mass", "sq_sum", "above", "lse",
)
_EDGE_TENSORS: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}


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
        return triton_mode() == "compiled"
    return flag == "1" and dev.type == "cpu" and triton_mode() == "interpret"


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
    keep_vec = all_valid(b, s, dev)
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
        m = as_4d(mask.to(dev))
        if not m.is_floating_point():
            if m.shape[1] == 1 and m.shape[2] == 1:
                keep_vec = keep_vec & (m[:, 0, 0, :] != 0).expand(b, s)
                m = None
            else:
                m = keep_to_additive(m != 0, fill=float("-inf"))
        else:
            m = m.float().masked_fill(additive_masked(m), float("-inf"))
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
    mask: torch.Tensor | LazyMask | None = None,
    causal: bool = False,
    key_keep: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    key_valid: torch.Tensor | None = None,
    special: torch.Tensor | None = None,
    punctuation: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    **options: Any,
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """Attention output and every per-row statistic in one fused Triton kernel: ``(output, rows)``.

    Same inputs and the same ``rows`` as :func:`attention_row_stats` (``query`` ``[batch, heads, T, d]``,
    ``key``/``value`` ``[batch, kv_heads, S, d]``, grouped heads read in place, never repeated; query ``i``
    sits at position ``S - T + i``; ``mask`` None, a tensor or a plain causal/bidirectional
    :class:`LazyMask`; ``causal``/``window``; ``key_valid`` zeroes weights on padding keys without
    renormalising; ``special``/``punctuation`` key masks; ``softcap``); ``options`` are the kernel options of
    :func:`fused_attention_packed` (``scale``, ``window``, ``softcap``, ``sparsity_threshold`` (default 0.3),
    ``local_window``, ``distance_edges``, ``column_sums`` (default False), ``count_above`` (default True),
    ``block_m``, ``block_n``; an unknown one raises ``TypeError``). The masks are given as ``key_keep`` (boolean
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
    check_rank(query, key)
    masks = fused_masks(query.shape[0], key.shape[2], query.device, mask=mask, causal=causal, key_keep=key_keep,
                        lengths=lengths, key_valid=key_valid, special=special, punctuation=punctuation, bias=bias)
    out, packed, col, layout = fused_attention_packed(query, key, value, masks, **options)
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
    check_query_key(query, key)
    b, h, t, d = query.shape
    hkv, s = key.shape[1], key.shape[2]
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
        bb = as_4d(bias)
        bb = bb.expand(b, bb.shape[1], t, s)
        if bb.shape[1] not in (1, h):
            raise InputError(f"bias must broadcast to [batch, 1|heads, T, S], got {tuple(bias.shape)}")
        bias_args = (bb.stride(0), 0 if bb.shape[1] == 1 else bb.stride(1), bb.stride(2), bb.stride(3))
        bias = bb

    edges, all_edges = edge_lists(distance_edges, local_window)
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
    mode = triton_mode()
    if mode is None or (mode == "interpret") == on_gpu:
        need = "Triton compiled for CUDA tensors" if on_gpu else "Triton's interpreter (TRITON_INTERPRET=1 before import)"
        raise InputError(f"the fused kernel needs {need}; use attention_row_stats instead")
    kernel = fused_kernel()
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
