"""Token rules shared by every layer: how a token is shown, and which tokens count as punctuation.

One definition each: :func:`clean_token` (what a person reads), :func:`is_punctuation` (a token made only
of Unicode punctuation once WordPiece ``##``, byte-level ``Ġ`` and SentencePiece ``▁`` markers are
removed), and its two vectorised forms, :func:`punctuation_mask` for a list of tokens and
:func:`punctuation_table` for a whole vocabulary (a token-id lookup, cached on the tokenizer).
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from typing import Protocol, Sequence

import torch

__all__ = ["clean_token", "is_punctuation", "punctuation_mask", "punctuation_table", "Tokenizer"]


class Tokenizer(Protocol):
    """What hf-attn-inspect needs of a tokenizer: a Hugging Face ``PreTrainedTokenizerBase`` has all of it."""

    def __len__(self) -> int: ...

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]: ...


@lru_cache(maxsize=1)
def _byte_level_decoder():
    """The ``tokenizers`` library's byte-level decoder (GPT-2, RoBERTa, Llama 3, Qwen vocabularies)."""
    from tokenizers.decoders import ByteLevel

    return ByteLevel()


def clean_token(token: str) -> str:
    """A token as a person reads it: byte-level ``Ġ``/``Ċ`` and SentencePiece ``▁`` markers made visible text.

    A byte-level BPE token whose characters stand for the UTF-8 bytes of whole characters is decoded
    (``æĪĳ`` -> ``我``, ``âĢĻ`` -> ``’``); one that holds only part of a character's bytes keeps its byte
    characters. Newline and tab show as ``\\n`` and ``\\t``.
    """
    if not token.isascii() and "\ufffd" not in token:
        text = _byte_level_decoder().decode([token])
        if "\ufffd" not in text:
            token = text
    return token.replace("Ġ", " ").replace("Ċ", "\\n").replace("▁", " ").replace("ĉ", "\\t").replace(
        "\n", "\\n").replace("\t", "\\t") or token


def is_punctuation(token: str) -> bool:
    """True when the token (WordPiece ``##``, byte-level and SentencePiece markers removed) is only punctuation.

    Every remaining character must be in a Unicode ``P*`` category; an empty or blank token is not
    punctuation.
    """
    text = clean_token(token)
    text = text[2:] if text.startswith("##") else text
    text = text.strip()
    return bool(text) and all(unicodedata.category(c).startswith("P") for c in text)


def punctuation_mask(tokens: Sequence[str]) -> torch.Tensor:
    """Boolean ``[len(tokens)]`` mask of tokens made only of punctuation characters (:func:`is_punctuation`)."""
    return torch.tensor([is_punctuation(t) for t in tokens], dtype=torch.bool)


def punctuation_table(tokenizer: Tokenizer) -> torch.Tensor:
    """Boolean ``[vocab]`` lookup, token id -> :func:`is_punctuation`; computed once per tokenizer and cached on it.

    Index it with a batch's ``input_ids`` (``table[ids.clamp(0, len(table) - 1)]``) to get the
    punctuation mask of every token at once, padding included (mask padding out with the valid mask).
    """
    cached = getattr(tokenizer, "_hf_attn_inspect_punct", None)
    if cached is not None:
        return cached
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    table = torch.tensor([isinstance(t, str) and is_punctuation(t) for t in tokens], dtype=torch.bool)
    try:
        tokenizer._hf_attn_inspect_punct = table  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - slotted tokenizers
        pass
    return table
