"""Attention masks: how a mask tensor is read, and a model mask that is never materialised.

Two things every kernel of :mod:`hf_attn_inspect.core.kernels` shares:

- :func:`mask_to_keep` reads any mask tensor (boolean, integer, 0/1 float or additive float) as a
  boolean *keep* mask plus an optional finite additive bias. This is the one place where the mask
  conventions are decided.
- :class:`LazyMask` is a model's attention mask described by what transformers' mask builders receive
  (mask function, padding, offsets), evaluated tile by tile by :meth:`LazyMask.block`. :func:`lazy_mask`
  has the signature of a transformers mask builder (``sdpa_mask``), so registering it as an attention
  implementation's mask function (see :func:`hf_attn_inspect.capture.interface.register_implementation`)
  makes the model hand a :class:`LazyMask` to the attention function instead of a ``[B, 1, T, S]`` tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from transformers.masking_utils import (
    bidirectional_mask_function,
    causal_mask_function,
    prepare_padding_mask,
    sdpa_mask,
)

__all__ = ["mask_to_keep", "additive_masked", "keep_to_additive", "all_valid", "LazyMask", "lazy_mask", "MaskFunction"]

#: A transformers mask function: ``(batch_idx, head_idx, q_idx, kv_idx) -> keep`` (True = attend).
MaskFunction = Callable[[int, int, int, int], "torch.Tensor | bool"]


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
    masked = additive_masked(mask)
    bias = torch.where(masked, torch.zeros((), dtype=mask.dtype, device=mask.device), mask)
    if not bool((bias != 0).any()):
        bias = None
    return ~masked, bias


def additive_masked(mask: torch.Tensor) -> torch.Tensor:
    """Where an additive float mask masks: True at or below half of its dtype's minimum (also ``-inf``),
    False where it attends (0) or adds a finite bias."""
    return mask <= torch.finfo(mask.dtype).min / 2


def keep_to_additive(
    keep: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    *,
    fill: float | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The additive mask of a boolean *keep* mask, to add to attention scores: 0 where ``keep`` is True and
    ``fill`` where it is False (default: the smallest finite value of ``dtype``, as transformers' masks; kernels
    that want exact zero weights pass ``float("-inf")``). A ``dtype`` tensor of ``keep``'s shape on ``device``
    (default: ``keep``'s)."""
    add = torch.zeros(keep.shape, dtype=dtype, device=keep.device if device is None else device)
    return add.masked_fill_(~keep, torch.finfo(dtype).min if fill is None else fill)


def all_valid(batch: int, length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """A ``[batch, length]`` boolean mask with every token valid (True): the query/key validity mask used when
    none is given (no padding)."""
    return torch.ones(batch, length, dtype=torch.bool, device=device)


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
    mask_function: MaskFunction
    padding: torch.Tensor | None
    use_vmap: bool
    device: torch.device

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The shape ``(batch, 1, q_length, kv_length)`` the materialised mask would have."""
        return (self.batch_size, 1, self.q_length, self.kv_length)

    @property
    def plain_causal(self) -> bool:
        """True when the mask is transformers' plain causal pattern (key ``j <= i``, plus padding)."""
        return self.mask_function is causal_mask_function

    @property
    def bidirectional(self) -> bool:
        """True when the mask is transformers' bidirectional pattern (every real key)."""
        return self.mask_function is bidirectional_mask_function

    @property
    def key_padding(self) -> torch.Tensor | None:
        """Boolean ``[batch, kv_length]`` mask of real keys, or None when all are real."""
        if self.padding is None:
            return None
        return self.padding[:, self.kv_offset : self.kv_offset + self.kv_length]

    def block(self, q0: int, q1: int, k0: int, k1: int) -> torch.Tensor:
        """Boolean keep-mask ``[batch, 1, q1 - q0, k1 - k0]`` of query rows ``q0..q1-1`` and keys ``k0..k1-1``."""
        return sdpa_mask(
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


def lazy_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: MaskFunction = causal_mask_function,
    attention_mask: torch.Tensor | None = None,
    use_vmap: bool = False,
    device: torch.device | str = "cpu",
    **kwargs: object,
) -> LazyMask:
    """A transformers mask builder that builds nothing: returns the :class:`LazyMask` of these arguments.

    Same arguments as transformers' ``sdpa_mask`` (other keywords, e.g. ``config``, are ignored).
    ``attention_mask`` is the 2-D ``[batch, kv]`` padding mask (1 = real token); a padding mask in which
    every key is real is dropped (``padding`` None).
    """
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
