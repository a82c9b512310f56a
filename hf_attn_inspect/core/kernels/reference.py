"""The reference attention with weights, the fast CPU path and torch's fused-sdpa output.

:func:`scaled_dot_product_attention_with_weights` is exact for every mask and dtype (every weight shown
to a user comes from it); :func:`fast_attention_with_weights` gives its numbers for the common float32
case without the mask analysis; :func:`fast_attention_output` is the output alone, from torch's fused
``scaled_dot_product_attention``. See :mod:`hf_attn_inspect.core.kernels` for the shared conventions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..masks import LazyMask, additive_masked, keep_to_additive, mask_to_keep

_LOG2E = 1.0 / math.log(2.0)  # scores in base 2 for exp2

__all__ = [
    "repeat_kv",
    "scaled_dot_product_attention_with_weights",
    "fast_attention_with_weights",
    "fast_attention_output",
]


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
    than the arithmetic. The returned weights may therefore be ``scratch`` itself. The exponent is taken
    in base 2 (``exp2`` of the scores times ``log2 e``, the same values to float32 rounding): torch's CPU
    ``exp`` slows down ~8x on the huge negative scores of masked keys (causal rows, padding), ``exp2``
    does not.
    """
    scale = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
    shape = (*query.shape[:-1], key.shape[-2])
    if scratch is not None and tuple(scratch.shape) == shape:
        scores = torch.matmul(query, key.transpose(-1, -2), out=scratch)
    else:
        scores = torch.matmul(query, key.transpose(-1, -2))
    scores.mul_(scale * _LOG2E)
    if mask is not None:  # in base 2 too (a position bias folded into the mask), the dtype minimum kept finite
        scores.add_(torch.mul(mask, _LOG2E).clamp_(min=torch.finfo(scores.dtype).min))
    scores.sub_(scores.amax(-1, keepdim=True)).exp2_()
    scores.div_(scores.sum(-1, keepdim=True))
    return torch.matmul(scores, value), scores


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
        add = keep_to_additive(keep, query.dtype, device=query.device)
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
            add = keep_to_additive(keep, torch.float32, fill=minimum, device=query.device)
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
        return ~additive_masked(self.bias(q0, q1)[..., k0:k1])
