"""Reference scaled-dot-product attention that also returns its weights.

This is the chapter's ``scaled_dot_product_attention_with_weights`` made robust enough to stand in for a
model's own attention: any leading batch/head dimensions, boolean or additive masks, grouped-query
attention, causal masking, half-precision inputs and fully masked rows. Every captured weight in
hf-attn-inspect comes from :func:`scaled_dot_product_attention_with_weights`.
"""

from __future__ import annotations

import math

import torch

__all__ = ["scaled_dot_product_attention_with_weights", "repeat_kv", "mask_to_keep"]


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
        raise ValueError(f"{num_query_heads} query heads cannot share {num_kv} key/value heads evenly")
    return key.repeat_interleave(num_query_heads // num_kv, dim=-3)


def mask_to_keep(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split a mask into a boolean *keep* mask and an optional finite additive bias.

    Boolean and integer masks follow the chapter's convention: non-zero (True) = attend, 0 = masked.
    Float masks are additive (0 = attend, ``-inf`` or the dtype's minimum = masked, other values are a
    bias added to the scores), except a float mask made only of 0s and 1s with at least one 1, which
    is read as a 0/1 keep mask. Returns ``(keep, bias)`` with ``bias`` ``None`` when there is none.
    """
    if mask.dtype == torch.bool:
        return mask, None
    if not mask.is_floating_point():
        return mask != 0, None
    is_binary = bool(((mask == 0) | (mask == 1)).all()) and bool((mask == 1).any())
    if is_binary:
        return mask != 0, None
    masked = mask <= torch.finfo(mask.dtype).min / 2  # also catches -inf
    bias = torch.where(masked, torch.zeros((), dtype=mask.dtype, device=mask.device), mask)
    if not bool((bias != 0).any()):
        bias = None
    return ~masked, bias


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
