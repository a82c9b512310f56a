"""`Batch`: one tokenized, right-padded batch and every per-token mask the engines need, built once.

Every engine (inspect, dataset statistics, compare, streaming, the monitor, diagnosis, verify) reads the
masks of a batch from here instead of building its own: ``valid`` (real tokens), ``special`` (the
tokenizer's special tokens), ``punctuation`` (tokens made only of punctuation, :mod:`~hf_attn_inspect.core.tokens`)
and ``segments`` (first or second text of a pair), for the encoder/self stack and, for encoder-decoder
models, the decoder stack. :meth:`Batch.masks` gives them per stack as :class:`KeyMasks`;
:meth:`Batch.select` takes a subset of rows with all masks sliced alike. After
:meth:`~hf_attn_inspect.capture.inspector.AttentionInspector.run`, ``causal_stacks`` names the stacks whose
attention was causal.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import torch
from transformers import BatchEncoding

from ..core.errors import InputError

__all__ = ["Batch", "KeyMasks", "STACKS"]

#: The attention stacks a model can have: ``self`` (encoder-only or decoder-only models), ``encoder``,
#: ``decoder`` and ``cross`` (encoder-decoder models).
STACKS = ("self", "encoder", "decoder", "cross")


@dataclass
class KeyMasks:
    """Boolean ``[batch, T]`` masks of one stack's tokens: ``valid`` (real, not padding), ``special``
    (the tokenizer's special tokens) and ``punctuation`` (punctuation-only tokens); padding is False in
    all three."""

    valid: torch.Tensor
    special: torch.Tensor
    punctuation: torch.Tensor


def _masks_of(mask: torch.Tensor, special: torch.Tensor | None, punct: torch.Tensor | None) -> KeyMasks:
    valid = mask.bool().cpu()
    zeros = torch.zeros_like(valid)
    special = zeros if special is None else special.bool().cpu() & valid
    punct = zeros if punct is None else punct.bool().cpu() & valid
    return KeyMasks(valid, special, punct)


@dataclass
class Batch:
    """One tokenized, right-padded batch: the model ``inputs`` and the per-token masks of each stack.

    ``inputs`` holds ``input_ids``, ``attention_mask`` (and ``token_type_ids``, ``decoder_input_ids``,
    ``decoder_attention_mask`` where the model has them; an image batch holds ``pixel_values`` and no mask). With right padding, sentence ``b``'s real
    tokens are positions ``0 .. lengths[b]-1``. ``encoding``/``decoder_encoding`` are the tokenizer's
    outputs (token strings, word and sequence ids), None for batches built from ids. ``special`` and
    ``punctuation`` are boolean ``[batch, T]`` masks (None = no such token); ``decoder_special`` and
    ``decoder_punctuation`` the same for the decoder input. ``causal_stacks`` is filled by
    :meth:`AttentionInspector.run <hf_attn_inspect.capture.inspector.AttentionInspector.run>`.
    """

    inputs: dict[str, torch.Tensor]
    texts: list[str] = field(default_factory=list)
    pairs: list[str] | None = None
    truncated: list[bool] = field(default_factory=list)
    encoding: BatchEncoding | None = None
    decoder_encoding: BatchEncoding | None = None
    special: torch.Tensor | None = None
    punctuation: torch.Tensor | None = None
    decoder_special: torch.Tensor | None = None
    decoder_punctuation: torch.Tensor | None = None
    causal_stacks: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not {"input_ids", "inputs_embeds", "pixel_values"} & set(self.inputs):
            raise InputError("a batch needs input_ids (or inputs_embeds, or an image's pixel_values)")
        if "attention_mask" not in self.inputs and "pixel_values" not in self.inputs:
            ids = self.inputs.get("input_ids", self.inputs.get("inputs_embeds"))
            self.inputs["attention_mask"] = torch.ones(ids.shape[:2], dtype=torch.long, device=ids.device)
        if "decoder_input_ids" in self.inputs and "decoder_attention_mask" not in self.inputs:
            ids = self.inputs["decoder_input_ids"]
            self.inputs["decoder_attention_mask"] = torch.ones(ids.shape[:2], dtype=torch.long, device=ids.device)

    # ------------------------------------------------------------------ sizes
    @property
    def size(self) -> int:
        """Number of sentences (or images) in the batch."""
        return int(self.inputs.get("attention_mask", self.inputs.get("pixel_values")).shape[0])

    @property
    def lengths(self) -> list[int]:
        """Real (non-padding) tokens of each sentence of the encoder/self input."""
        return self.inputs["attention_mask"].sum(-1).tolist()

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
    @property
    def valid(self) -> torch.Tensor:
        """Boolean ``[batch, tokens]`` mask of real tokens of the encoder/self input (False on padding), on the CPU."""
        return self.inputs["attention_mask"].bool().cpu()

    @property
    def segments(self) -> torch.Tensor:
        """Integer ``[batch, tokens]``: 0 for the first text of a pair, 1 for the second, -1 for special tokens and padding."""
        out = torch.full(self.inputs["attention_mask"].shape, -1, dtype=torch.long)
        if self.encoding is not None and self.encoding.encodings is not None:
            for b in range(self.size):
                ids = self.encoding.sequence_ids(b)
                out[b, : len(ids)] = torch.tensor([-1 if s is None else s for s in ids], dtype=torch.long)
        return out

    def masks(self, stack: str = "self") -> KeyMasks:
        """The :class:`KeyMasks` of a stack's tokens: ``self``/``encoder`` (the input) or ``decoder``.

        ``cross`` attention's keys are the encoder's tokens, so ``cross`` gives the encoder's masks.
        """
        if stack in ("self", "encoder", "cross"):
            return _masks_of(self.inputs["attention_mask"], self.special, self.punctuation)
        if stack == "decoder":
            if not self.has_decoder:
                raise InputError("this batch has no decoder input")
            return _masks_of(self.inputs["decoder_attention_mask"], self.decoder_special, self.decoder_punctuation)
        raise InputError(f"unknown stack '{stack}'; choose one of {', '.join(STACKS)}")

    def stack_masks(self) -> dict[str, KeyMasks]:
        """``{stack: KeyMasks}`` for the self-attention stacks of the batch: ``self``, or ``encoder`` and ``decoder``."""
        if self.has_decoder:
            return {"encoder": self.masks("encoder"), "decoder": self.masks("decoder")}
        return {"self": self.masks("self")}

    # ------------------------------------------------------------------ rows
    def tokens(self, b: int, decoder: bool = False) -> list[str]:
        """The token strings of sentence ``b`` (padding excluded); empty for batches built from ids."""
        enc = self.decoder_encoding if decoder else self.encoding
        if enc is None or enc.encodings is None:
            return []
        n = (self.decoder_lengths if decoder else self.lengths)[b]
        return enc.tokens(b)[:n]

    def select(self, rows: Sequence[int] | torch.Tensor) -> "Batch":
        """The sentences ``rows`` (in that order) as a new batch, trimmed to their longest input.

        Inputs and masks are sliced alike; token strings are not carried (``encoding`` is None).
        """
        idx = torch.as_tensor(rows, dtype=torch.long)
        enc_len = int(self.inputs["attention_mask"][idx].sum(-1).max())
        dec = self.inputs.get("decoder_attention_mask")
        dec_len = int(dec[idx].sum(-1).max()) if dec is not None else 0

        def cut(x: torch.Tensor | None, n: int) -> torch.Tensor | None:
            return None if x is None else x[idx, :n].contiguous()

        inputs = {k: cut(v, dec_len if k.startswith("decoder_") else enc_len) for k, v in self.inputs.items()}
        pick = idx.tolist()
        return replace(
            self,
            inputs=inputs,
            texts=[self.texts[i] for i in pick] if self.texts else [],
            pairs=None if self.pairs is None else [self.pairs[i] for i in pick],
            truncated=[self.truncated[i] for i in pick] if self.truncated else [],
            encoding=None,
            decoder_encoding=None,
            special=cut(self.special, enc_len),
            punctuation=cut(self.punctuation, enc_len),
            decoder_special=cut(self.decoder_special, dec_len),
            decoder_punctuation=cut(self.decoder_punctuation, dec_len),
            causal_stacks=set(),
        )
