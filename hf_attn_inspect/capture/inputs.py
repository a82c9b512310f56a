"""`Batch`: one right-padded batch of units (tokens, or an image's class/register tokens and patches) and every
per-unit mask the engines need, built once.

Every engine (inspect, dataset statistics, compare, streaming, the monitor, diagnosis, verify) reads the
masks of a batch from here instead of building its own: ``valid`` (real tokens), ``special`` (the
tokenizer's special tokens), ``punctuation`` (tokens made only of punctuation, :mod:`~hf_attn_inspect.core.tokens`)
and ``segments`` (first or second text of a pair), for the encoder/self stack and, for encoder-decoder
models, the decoder stack. :meth:`Batch.masks` gives them per stack as :class:`KeyMasks`;
:meth:`Batch.select` takes a subset of rows with all masks sliced alike. After
:meth:`~hf_attn_inspect.capture.inspector.AttentionInspector.run`, ``causal_stacks`` names the stacks whose
attention was causal.

Each position of the encoder/self input is a *unit* with a kind, one of :data:`UNIT_KINDS`; ``Batch.kinds``
holds their codes. Text batches derive them from the tokenizer's special-tokens mask; batches built from a
processor's output (an image's ``pixel_values``) with :meth:`Batch.from_units` carry the kinds and labels
their caller computed, so images use the same batch type, masks and engines as text.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np
import torch
from transformers import BatchEncoding

from ..core.errors import InputError
from ..core.stacks import DECODER, ENCODER, SELF, STACKS, check_stack, key_stack
from .grid import PatchGrid

__all__ = ["Batch", "KeyMasks", "PAD", "STACKS", "UNIT_KINDS"]

#: The kinds of unit a position of the input can be; a unit's kind code (``Batch.kinds``) is its index here:
#: 0 ``token`` (an ordinary text token), 1 ``special`` (a tokenizer's special token: [CLS], [SEP], <s>...),
#: 2 ``class`` (a vision model's [CLS] token), 3 ``distillation`` (DeiT's distillation token), 4 ``register``
#: (DINOv2's register tokens), 5 ``patch`` (an image patch). Padding has the code :data:`PAD`.
UNIT_KINDS = ("token", "special", "class", "distillation", "register", "patch")

#: The kind code of padding positions (not a unit).
PAD = -1


def _kind_code(kind: str) -> int:
    if kind not in UNIT_KINDS:
        raise InputError(f"unknown unit kind '{kind}'; choose one of {', '.join(UNIT_KINDS)}")
    return UNIT_KINDS.index(kind)


@dataclass
class KeyMasks:
    """Boolean ``[batch, T]`` masks of one stack's tokens: ``valid`` (real, not padding), ``special``
    (the tokenizer's special tokens) and ``punctuation`` (punctuation-only tokens); padding is False in
    all three."""

    valid: torch.Tensor
    special: torch.Tensor
    punctuation: torch.Tensor


#: Prefix of model inputs that are not one entry per unit (``pixel_values``, ``pixel_mask``): :meth:`Batch.select`
#: picks their rows but does not cut them to the kept units.
_IMAGE_INPUT = "pixel_"


def _masks_of(mask: torch.Tensor, special: torch.Tensor | None, punct: torch.Tensor | None) -> KeyMasks:
    valid = mask.bool().cpu()
    zeros = torch.zeros_like(valid)
    special = zeros if special is None else special.bool().cpu() & valid
    punct = zeros if punct is None else punct.bool().cpu() & valid
    return KeyMasks(valid, special, punct)


@dataclass
class Batch:
    """One right-padded batch: the model ``inputs`` and the per-unit masks of each stack.

    ``inputs`` holds ``input_ids``, ``attention_mask`` (and ``token_type_ids``, ``decoder_input_ids``,
    ``decoder_attention_mask`` where the model has them; an image batch holds ``pixel_values`` and no mask). With right padding, sentence ``b``'s real
    tokens are positions ``0 .. lengths[b]-1``. ``encoding``/``decoder_encoding`` are the tokenizer's
    outputs (token strings, word and sequence ids), None for batches built from ids. ``truncated`` says which
    texts were cut to the maximum length and ``input_lengths`` how many tokens each (encoder) input had
    before the cut (special tokens included; empty for batches built from ids). ``special`` and
    ``punctuation`` are boolean ``[batch, T]`` masks (None = no such token); ``decoder_special`` and
    ``decoder_punctuation`` the same for the decoder input. ``causal_stacks`` is filled by
    :meth:`AttentionInspector.run <hf_attn_inspect.capture.inspector.AttentionInspector.run>`.
    ``unit_kinds`` (int8 ``[batch, T]`` codes, :data:`UNIT_KINDS`, :data:`PAD` on padding) and
    ``unit_labels`` (each row's unit strings) are set by :meth:`from_units`; None for tokenized text, whose
    :attr:`kinds` come from ``special`` and whose labels are the tokenizer's tokens. Image batches
    (:func:`~hf_attn_inspect.capture.images.encode_images`) carry their :class:`PatchGrid` in ``grid`` and each
    image as the model saw it (``uint8 [H, W, 3]``) in ``images``.
    """

    inputs: dict[str, torch.Tensor]
    texts: list[str] = field(default_factory=list)
    pairs: list[str] | None = None
    truncated: list[bool] = field(default_factory=list)
    input_lengths: list[int] = field(default_factory=list)
    encoding: BatchEncoding | None = None
    decoder_encoding: BatchEncoding | None = None
    special: torch.Tensor | None = None
    punctuation: torch.Tensor | None = None
    decoder_special: torch.Tensor | None = None
    decoder_punctuation: torch.Tensor | None = None
    causal_stacks: set[str] = field(default_factory=set)
    unit_kinds: torch.Tensor | None = None
    unit_labels: list[list[str]] | None = None
    grid: PatchGrid | None = None
    images: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        if not {"input_ids", "inputs_embeds", "pixel_values"} & set(self.inputs):
            raise InputError("a batch needs input_ids (or inputs_embeds, or an image's pixel_values)")
        if "attention_mask" not in self.inputs and "pixel_values" not in self.inputs and self.unit_kinds is None:
            ids = self.inputs.get("input_ids", self.inputs.get("inputs_embeds"))
            self.inputs["attention_mask"] = torch.ones(ids.shape[:2], dtype=torch.long, device=ids.device)
        if "decoder_input_ids" in self.inputs and "decoder_attention_mask" not in self.inputs:
            ids = self.inputs["decoder_input_ids"]
            self.inputs["decoder_attention_mask"] = torch.ones(ids.shape[:2], dtype=torch.long, device=ids.device)

    @classmethod
    def from_units(
        cls,
        inputs: Mapping[str, torch.Tensor],
        labels: Sequence[Sequence[str]],
        kinds: Sequence[Sequence[str]] | torch.Tensor,
        *,
        texts: Sequence[str] | None = None,
    ) -> "Batch":
        """A batch from a processor's output (e.g. ``{"pixel_values": [B, 3, H, W]}``) and the units the model
        will attend over, as the caller computed them: ``labels[b]`` the unit strings of row ``b`` (e.g.
        ``["[CLS]", "p(0,0)", ...]``) and ``kinds[b]`` their kind names from :data:`UNIT_KINDS` (or an int
        ``[B, T]`` tensor of codes, :data:`PAD` on padding). Rows shorter than the longest are padding at the
        end. ``inputs`` go to the model unchanged: no ``attention_mask`` is added when the processor gave none;
        ``valid``, ``lengths``, :meth:`masks` and :meth:`select` read the units instead. ``special`` marks every
        unit that is neither a text token nor a patch (class, distillation, register and special tokens), so the
        special-token metrics count them; ``punctuation`` is all False.
        """
        rows = [list(r) for r in labels]
        width = max((len(r) for r in rows), default=0)
        if not rows or width == 0:
            raise InputError("a batch needs at least one unit per row")
        if isinstance(kinds, torch.Tensor):
            codes = kinds.to(torch.int8).cpu()
            if codes.dim() != 2 or codes.shape[0] != len(rows):
                raise InputError(f"unit kinds must be a [batch, units] tensor with {len(rows)} rows, got {list(codes.shape)}")
            codes = codes[:, :width]
        else:
            if len(kinds) != len(rows):
                raise InputError(f"got {len(rows)} rows of unit labels but {len(kinds)} rows of unit kinds")
            codes = torch.full((len(rows), width), PAD, dtype=torch.int8)
            for b, row in enumerate(kinds):
                codes[b, : len(row)] = torch.tensor([_kind_code(k) for k in row], dtype=torch.int8)
        for b, row in enumerate(rows):
            if int((codes[b] != PAD).sum()) != len(row) or bool((codes[b, : len(row)] == PAD).any()):
                raise InputError(f"row {b + 1} has {len(row)} unit labels but a different number of unit kinds")
        valid = codes != PAD
        text_or_patch = (codes == _kind_code("token")) | (codes == _kind_code("patch"))
        return cls(
            inputs=dict(inputs),
            texts=list(texts) if texts is not None else [],
            special=valid & ~text_or_patch,
            punctuation=torch.zeros_like(valid),
            unit_kinds=codes,
            unit_labels=rows,
        )

    # ------------------------------------------------------------------ sizes
    @property
    def size(self) -> int:
        """Number of sentences (or images) in the batch."""
        if self.unit_kinds is not None:
            return int(self.unit_kinds.shape[0])
        return int(self.inputs.get("attention_mask", self.inputs.get("pixel_values")).shape[0])

    @property
    def width(self) -> int:
        """Positions of the (right-padded) encoder/self input: the longest row's units."""
        return int(self._mask().shape[-1])

    @property
    def lengths(self) -> list[int]:
        """Real (non-padding) tokens of each sentence of the encoder/self input."""
        return self._mask().sum(-1).tolist()

    @property
    def decoder_lengths(self) -> list[int] | None:
        """Real tokens of each decoder input, None without a decoder input."""
        mask = self.inputs.get("decoder_attention_mask")
        return None if mask is None else mask.sum(-1).tolist()

    @property
    def has_decoder(self) -> bool:
        """True when the batch has a decoder input (encoder-decoder models)."""
        return "decoder_attention_mask" in self.inputs

    # ------------------------------------------------------------------ masks
    def _mask(self) -> torch.Tensor:
        """``[batch, T]`` 1 on real units of the encoder/self input: the attention mask, else the units' kinds."""
        mask = self.inputs.get("attention_mask")
        if mask is not None:
            return mask
        if self.unit_kinds is None:
            raise InputError("this batch has no attention_mask and no units; build image batches with Batch.from_units")
        return (self.unit_kinds != PAD).long()

    @property
    def valid(self) -> torch.Tensor:
        """Boolean ``[batch, tokens]`` mask of real tokens of the encoder/self input (False on padding), on the CPU."""
        return self._mask().bool().cpu()

    @property
    def kinds(self) -> torch.Tensor:
        """Int8 ``[batch, T]`` kind code of each unit of the encoder/self input: its index in :data:`UNIT_KINDS`
        (0 token, 1 special, 2 class, 3 distillation, 4 register, 5 patch), :data:`PAD` (-1) on padding. For
        tokenized text: 1 where the tokenizer's special-tokens mask is set, else 0."""
        if self.unit_kinds is not None:
            return self.unit_kinds
        valid = self.valid
        codes = torch.full(valid.shape, PAD, dtype=torch.int8)
        codes[valid] = _kind_code("token")
        if self.special is not None:
            codes[valid & self.special.bool().cpu()] = _kind_code("special")
        return codes

    def kind_mask(self, kind: str) -> torch.Tensor:
        """Boolean ``[batch, T]``: True on the units of ``kind`` (a name of :data:`UNIT_KINDS`), False on padding."""
        return self.kinds == _kind_code(kind)

    @property
    def segments(self) -> torch.Tensor:
        """Integer ``[batch, tokens]``: 0 for the first text of a pair, 1 for the second, -1 for special tokens and padding."""
        out = torch.full(self._mask().shape, -1, dtype=torch.long)
        if self.encoding is not None and self.encoding.encodings is not None:
            for b in range(self.size):
                ids = self.encoding.sequence_ids(b)
                out[b, : len(ids)] = torch.tensor([-1 if s is None else s for s in ids], dtype=torch.long)
        return out

    def masks(self, stack: str = "self") -> KeyMasks:
        """The :class:`KeyMasks` of a stack's tokens: ``self``/``encoder`` (the input) or ``decoder``.

        ``cross`` attention's keys are the encoder's tokens, so ``cross`` gives the encoder's masks.
        """
        if key_stack(check_stack(stack)) != DECODER:
            return _masks_of(self._mask(), self.special, self.punctuation)
        if not self.has_decoder:
            raise InputError("this batch has no decoder input")
        return _masks_of(self.inputs["decoder_attention_mask"], self.decoder_special, self.decoder_punctuation)

    def stack_masks(self) -> dict[str, KeyMasks]:
        """``{stack: KeyMasks}`` for the self-attention stacks of the batch: ``self``, or ``encoder`` and ``decoder``."""
        if self.has_decoder:
            return {ENCODER: self.masks(ENCODER), DECODER: self.masks(DECODER)}
        return {SELF: self.masks(SELF)}

    # ------------------------------------------------------------------ rows
    def tokens(self, b: int, decoder: bool = False) -> list[str]:
        """The token strings of sentence ``b`` (padding excluded): the unit labels of a batch built with
        :meth:`from_units`, empty for batches built from ids."""
        if self.unit_labels is not None and not decoder:
            return list(self.unit_labels[b])
        enc = self.decoder_encoding if decoder else self.encoding
        if enc is None or enc.encodings is None:
            return []
        n = (self.decoder_lengths if decoder else self.lengths)[b]
        return enc.tokens(b)[:n]

    def select(self, rows: Sequence[int] | torch.Tensor) -> "Batch":
        """The sentences ``rows`` (in that order) as a new batch, trimmed to their longest input.

        Inputs and masks are sliced alike; token strings are not carried (``encoding`` is None), unit labels
        are. A batch whose model input has no ``attention_mask`` (an image's pixels) keeps its width: the model
        makes as many units as its pixels give.
        """
        idx = torch.as_tensor(rows, dtype=torch.long)
        mask = self.inputs.get("attention_mask")
        enc_len = int(mask[idx].sum(-1).max()) if mask is not None else self.width
        dec = self.inputs.get("decoder_attention_mask")
        dec_len = int(dec[idx].sum(-1).max()) if dec is not None else 0

        def cut(x: torch.Tensor | None, n: int) -> torch.Tensor | None:
            return None if x is None else x[idx, :n].contiguous()

        inputs = {k: v[idx].contiguous() if k.startswith(_IMAGE_INPUT) else cut(v, dec_len if k.startswith("decoder_") else enc_len)
                  for k, v in self.inputs.items()}
        pick = idx.tolist()
        return replace(
            self,
            inputs=inputs,
            texts=[self.texts[i] for i in pick] if self.texts else [],
            pairs=None if self.pairs is None else [self.pairs[i] for i in pick],
            truncated=[self.truncated[i] for i in pick] if self.truncated else [],
            input_lengths=[self.input_lengths[i] for i in pick] if self.input_lengths else [],
            encoding=None,
            decoder_encoding=None,
            special=cut(self.special, enc_len),
            punctuation=cut(self.punctuation, enc_len),
            decoder_special=cut(self.decoder_special, dec_len),
            decoder_punctuation=cut(self.decoder_punctuation, dec_len),
            causal_stacks=set(),
            unit_kinds=cut(self.unit_kinds, enc_len),
            unit_labels=None if self.unit_labels is None else [self.unit_labels[i] for i in pick],
            images=None if self.images is None else [self.images[i] for i in pick],
        )
