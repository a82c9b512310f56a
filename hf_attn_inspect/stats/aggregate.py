"""Aggregated views of attention: head averages, attention rollout, and word-level attention.

Every function works on whole ``[..., heads, query, key]`` tensors at once (no Python loop over heads
or tokens; rollout loops over layers only, because each layer multiplies the previous one).

* :func:`head_average` — the mean of the selected heads' weights; rows still sum to 1.
* :func:`attention_rollout` — Abnar & Zuidema (2020): per layer the heads are averaged, the residual
  connection is modelled as ``A = 0.5 W + 0.5 I`` (rows renormalised), and the layers are multiplied
  through: ``R_l = A_l R_{l-1}``. ``R_l[i, j]`` is how much of input token ``j`` reaches position ``i``
  after layer ``l``.
* :func:`word_units` / :func:`aggregate_words` / :func:`words` — sub-word pieces merged into words:
  the weights a query gives to the pieces of one word are **summed** (keys), and the rows of the
  pieces of one word are **averaged** (queries), so every row still sums to 1. Special tokens
  (``[CLS]``, ``[SEP]``, ``<s>`` ...) stay units of their own; in a sentence pair the words of the two
  texts never merge with each other.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import torch

from ..core.errors import InputError
from ..core.mixing import residual_mix, rollout_product
from ..core.stacks import is_self_attention
from ..capture.result import AttentionResult
from ..core.tokens import clean_token

__all__ = [
    "head_average",
    "attention_rollout",
    "word_units",
    "word_labels",
    "aggregate_words",
    "words",
]


def _as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x).float() if not isinstance(x, torch.Tensor) else x.float()


def head_average(weights: torch.Tensor | np.ndarray, heads: Sequence[int] | None = None) -> torch.Tensor:
    """Mean over the head axis of ``weights [..., heads, query, key]`` -> ``[..., query, key]``.

    ``heads`` are positions along the head axis to average (default: all). Because each head's rows sum
    to 1 over the visible keys, so do the averaged rows; masked keys stay 0.
    """
    w = _as_tensor(weights)
    if w.dim() < 3:
        raise InputError(f"head_average needs [..., heads, query, key] weights, got shape {tuple(w.shape)}")
    if heads is not None:
        idx = list(heads)
        if not idx:
            raise InputError("no heads selected to average")
        w = w[..., idx, :, :]
    return w.mean(-3)


def attention_rollout(
    data: AttentionResult | torch.Tensor | np.ndarray,
    *,
    which: str = "self",
    residual: float = 0.5,
    heads: Sequence[int] | None = None,
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) after each layer: ``[layers, T, T]`` float32.

    ``data`` is a result (its ``which`` stack: ``self`` or ``decoder``, which must be square) or weights
    ``[layers, heads, T, T]``. Per layer the heads (all, or the positions in ``heads``) are averaged to
    ``W``; ``A = residual * I + (1 - residual) * W`` (default 0.5/0.5) with rows renormalised to sum to
    1; then ``R_0 = A_0`` and ``R_l = A_l @ R_{l-1}``. Entry ``[l, i, j]`` is the share of input token
    ``j`` in position ``i`` after layer ``l`` (rows sum to 1). The layers are the captured ones, in
    order: capture every layer (the default) for the published definition.
    """
    if isinstance(data, AttentionResult):
        if not is_self_attention(which):
            raise InputError("rollout needs square self-attention; use which='self' or 'decoder'")
        w = data.stack(which)[0].float()
    else:
        w = _as_tensor(data)
    if w.dim() != 4 or w.shape[-1] != w.shape[-2]:
        raise InputError(f"rollout needs [layers, heads, T, T] weights, got shape {tuple(w.shape)}")
    return rollout_product(residual_mix(head_average(w, heads), residual))


def word_units(
    word_ids: Sequence[int | None] | None,
    special_tokens_mask: Sequence[bool] | None = None,
    segment_ids: Sequence[int | None] | None = None,
) -> np.ndarray:
    """The word (unit) index of every token, ``int64 [T]``, numbered 0.. in reading order.

    Consecutive tokens with the same ``(segment, word_id)`` form one unit; special tokens and tokens
    without a word id are units of their own. Without ``word_ids`` every token is its own unit.
    """
    if word_ids is None:
        n = len(special_tokens_mask or [])
        return np.arange(n, dtype=np.int64)
    n = len(word_ids)
    special = list(special_tokens_mask) if special_tokens_mask is not None else [False] * n
    seg = list(segment_ids) if segment_ids is not None else [0] * n
    units = np.empty(n, dtype=np.int64)
    unit, prev = -1, None
    for i, (w, s, sp) in enumerate(zip(word_ids, seg, special)):
        key = None if (w is None or sp) else (s, w)
        if key is None or key != prev:
            unit += 1
        units[i] = unit
        prev = key
    return units


def word_labels(tokens: Sequence[str], units: np.ndarray) -> list[str]:
    """A readable label per unit: its pieces joined, WordPiece ``##`` and byte-level/SentencePiece markers removed."""
    labels: list[str] = [""] * (int(units.max()) + 1 if len(units) else 0)
    for tok, u in zip(tokens, units.tolist()):
        piece = clean_token(tok)
        if labels[u]:
            piece = piece[2:] if piece.startswith("##") else piece
        labels[u] += piece
    return [lab.strip() or lab for lab in labels]


def _membership(units: np.ndarray) -> torch.Tensor:
    n_units = int(units.max()) + 1 if len(units) else 0
    m = torch.zeros(len(units), n_units, dtype=torch.float32)
    m[torch.arange(len(units)), torch.as_tensor(units)] = 1.0
    return m


def aggregate_words(
    weights: torch.Tensor | np.ndarray,
    query_units: np.ndarray,
    key_units: np.ndarray | None = None,
) -> torch.Tensor:
    """Merge ``weights [..., query, key]`` into ``[..., query_words, key_words]``.

    Keys: the weights of the pieces of one word are summed. Queries: the rows of the pieces of one
    word are averaged. A row that summed to 1 still sums to 1. ``query_units``/``key_units`` come from
    :func:`word_units` (``key_units`` defaults to ``query_units``, i.e. self-attention).
    """
    w = _as_tensor(weights)
    key_units = query_units if key_units is None else key_units
    if w.shape[-2] != len(query_units) or w.shape[-1] != len(key_units):
        raise InputError(
            f"weights {tuple(w.shape[-2:])} do not match {len(query_units)} query and {len(key_units)} key tokens"
        )
    mq, mk = _membership(np.asarray(query_units)), _membership(np.asarray(key_units))
    mq = mq / mq.sum(0, keepdim=True)  # mean over the pieces of a query word
    return mq.T @ w @ mk


def _special_units(special: Sequence[bool] | None, units: np.ndarray) -> list[bool]:
    n = int(units.max()) + 1 if len(units) else 0
    out = [False] * n
    for sp, u in zip(special or [False] * len(units), units.tolist()):
        out[u] = out[u] or bool(sp)
    return out


def _first_per_unit(values: Sequence | None, units: np.ndarray) -> list | None:
    if values is None:
        return None
    n = int(units.max()) + 1 if len(units) else 0
    out: list = [None] * n
    seen = [False] * n
    for v, u in zip(values, units.tolist()):
        if not seen[u]:
            out[u], seen[u] = v, True
    return out


def words(result: AttentionResult) -> AttentionResult:
    """The word-level version of a result: same layers and heads, one unit per word (see :func:`aggregate_words`).

    ``tokens`` become the word labels (:func:`word_labels`), ``word_ids`` number the words of each text,
    special tokens stay units of their own and ``segment_ids``/``special_tokens_mask`` follow the units.
    Decoder and cross attention of encoder-decoder results are merged the same way.
    """
    enc = word_units(result.word_ids, result.special_tokens_mask, result.segment_ids)
    kw: dict = {}
    if result.is_encoder_decoder:
        dec = word_units(result.decoder_word_ids, result.decoder_special_tokens_mask)
        kw = {
            "decoder_tokens": word_labels(result.decoder_tokens or [], dec),
            "decoder_attentions": aggregate_words(result.decoder_attentions, dec),
            "cross_attentions": None
            if result.cross_attentions is None
            else aggregate_words(result.cross_attentions, dec, enc),
            "decoder_word_ids": _first_per_unit(result.decoder_word_ids, dec),
            "decoder_special_tokens_mask": _special_units(result.decoder_special_tokens_mask, dec),
        }
    return replace(
        result,
        tokens=word_labels(result.tokens, enc),
        attentions=aggregate_words(result.attentions, enc),
        word_ids=_first_per_unit(result.word_ids, enc),
        segment_ids=_first_per_unit(result.segment_ids, enc),
        special_tokens_mask=_special_units(result.special_tokens_mask, enc),
        **kw,
    )
