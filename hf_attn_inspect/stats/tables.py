"""Per-head metric tables: one row per (layer, head), from captured results or a weights tensor.

:func:`head_metrics` turns one result, a list of results (padded into one batch by :func:`batch_results`)
or a weights tensor into a :class:`pandas.DataFrame` with one row per (layer, head) and every metric of
:mod:`hf_attn_inspect.stats.metrics` (where the definitions live). :func:`head_weights` is the shared first
step (padded weights, masks and metrics of every sentence, layer and head), :func:`head_frame` the shared
last step (arrays ``[sentence, layer, head]`` to a table); the pattern classes of
:mod:`hf_attn_inspect.stats.patterns` and the streaming tables of :mod:`hf_attn_inspect.stats.streaming`
use them too. :func:`format_head_table` prints a table as fixed-width text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence, TypedDict

import numpy as np
import pandas as pd
import torch

from ..capture.result import AttentionResult
from ..core.errors import InputError
from ..core.stacks import DECODER, SELF, is_main
from ..core.masks import all_valid
from ..core.tokens import punctuation_mask
from .metrics import METRICS, sentence_metrics

__all__ = [
    "HeadData",
    "PaddedResults",
    "HeadWeights",
    "batch_results",
    "head_weights",
    "head_frame",
    "head_metrics",
    "format_head_table",
]

#: What the table functions accept: one result, a list of results, or weights ``[..., layers, heads, T, T]``.
HeadData = AttentionResult | Sequence[AttentionResult] | torch.Tensor | np.ndarray


class PaddedResults(TypedDict):
    """Results of different lengths padded into one batch (see :func:`batch_results`)."""

    weights: torch.Tensor
    valid: torch.Tensor
    special: torch.Tensor
    punctuation: torch.Tensor
    causal: bool
    layer_ids: list[int]
    head_ids: list[int]


def batch_results(results: Sequence[AttentionResult], which: str = "self") -> PaddedResults:
    """Pad results of different lengths into one batch: ``weights [B, L, H, T, T]`` and ``[B, T]`` masks.

    Returns a dict with ``weights`` (0 on padding rows and columns), ``valid`` (real tokens),
    ``special`` (the tokenizer's special tokens), ``punctuation`` (punctuation-only tokens), ``causal``,
    ``layer_ids`` and ``head_ids``; every result must have the same layers and heads.
    """
    if not results:
        raise InputError("no results given")
    first = results[0]
    for r in results[1:]:
        if r.layer_ids != first.layer_ids or r.head_ids != first.head_ids:
            raise InputError("results cover different layers or heads; capture them with the same layers/heads")
    mats = [r.stack(which)[0] for r in results]
    toks = [r.stack(which)[1] for r in results]
    t = max(m.shape[-1] for m in mats)
    b = len(results)
    weights = torch.zeros(b, first.num_layers, first.num_heads, t, t)
    valid = torch.zeros(b, t, dtype=torch.bool)
    special = torch.zeros(b, t, dtype=torch.bool)
    punct = torch.zeros(b, t, dtype=torch.bool)
    for i, (r, m, tk) in enumerate(zip(results, mats, toks)):
        n = m.shape[-1]
        weights[i, :, :, :n, :n] = m
        valid[i, :n] = True
        mask = r.special_tokens_mask if is_main(which) else r.decoder_special_tokens_mask
        special[i, :n] = torch.tensor(mask or [False] * n, dtype=torch.bool)
        punct[i, :n] = punctuation_mask(tk)
    causal = first.is_causal if is_main(which) else which == DECODER
    return {
        "weights": weights,
        "valid": valid,
        "special": special,
        "punctuation": punct,
        "causal": causal,
        "layer_ids": first.layer_ids,
        "head_ids": first.head_ids,
    }


@dataclass
class HeadWeights:
    """Weights of a batch with their masks and metrics, ready to be tabulated (see :func:`head_weights`).

    ``weights`` is ``[B, L, H, T, T]`` (padding 0), ``valid`` the boolean ``[B, T]`` real-token mask,
    ``metrics`` ``{name: [B, L, H]}`` of :func:`~hf_attn_inspect.stats.metrics.sentence_metrics`,
    ``layer_ids``/``head_ids`` the model's layer and head numbers, ``key_names`` a ``[B, T]`` object array
    naming each key position (special tokens by their text, others ``pos j``), None for plain tensors.
    """

    weights: torch.Tensor
    valid: torch.Tensor
    metrics: dict[str, torch.Tensor]
    layer_ids: list[int]
    head_ids: list[int]
    key_names: np.ndarray | None


def head_weights(
    data: HeadData,
    valid: torch.Tensor | None = None,
    *,
    which: str = "self",
    causal: bool | None = None,
    sparsity_threshold: float = 0.3,
) -> HeadWeights:
    """Weights ``[B, L, H, T, T]``, masks and per-sentence metrics of ``data`` (see :func:`head_metrics`).

    Results are padded by :func:`batch_results` (their special-token and punctuation masks count); a
    weights tensor ``[..., layers, heads, T, T]`` / ``[heads, T, T]`` / ``[T, T]`` is taken with the
    optional boolean ``valid [batch, T]`` (default all real) and no special/punctuation keys. ``causal``
    (default: the results' own, False for tensors) sets ``max_entropy``'s definition.
    """
    if isinstance(data, AttentionResult):
        data = [data]
    if isinstance(data, (list, tuple)):
        batch = batch_results(data, which)
        weights, valid = batch["weights"], batch["valid"]
        m = sentence_metrics(
            weights,
            valid,
            special=batch["special"],
            punctuation=batch["punctuation"],
            causal=batch["causal"] if causal is None else causal,
            sparsity_threshold=sparsity_threshold,
        )
        return HeadWeights(weights, valid, m, batch["layer_ids"], batch["head_ids"],
                           _key_names(data, which, weights.shape[-1]))
    weights = torch.as_tensor(data).float()
    while weights.dim() < 5:
        weights = weights.unsqueeze(0)
    if weights.dim() != 5:
        raise InputError(f"weights must be at most [batch, layers, heads, T, T], got {tuple(weights.shape)}")
    if valid is None:
        valid = all_valid(weights.shape[0], weights.shape[-1])
    valid = torch.as_tensor(valid).bool().reshape(weights.shape[0], weights.shape[-1])
    m = sentence_metrics(weights, valid, causal=bool(causal), sparsity_threshold=sparsity_threshold)
    return HeadWeights(weights, valid, m, list(range(weights.shape[1])), list(range(weights.shape[2])), None)


def _key_names(results: Sequence[AttentionResult], which: str, t: int) -> np.ndarray:
    """``[B, T]`` object array naming each key position: special tokens by their text, others ``pos j``."""
    key_which = SELF if is_main(which) else DECODER
    out = np.empty((len(results), t), dtype=object)
    out[:] = ""
    for b, r in enumerate(results):
        _, _, keys = r.stack(key_which)
        special = r.special_tokens_mask if key_which == SELF else r.decoder_special_tokens_mask
        special = special or [False] * len(keys)
        out[b, : len(keys)] = [k if s else f"pos {j}" for j, (k, s) in enumerate(zip(keys, special))]
    return out


def head_frame(
    values: Mapping[str, np.ndarray],
    names: Sequence[str],
    layer_ids: Sequence[int],
    head_ids: Sequence[int],
    *,
    per_sentence: bool = False,
) -> pd.DataFrame:
    """The table of arrays ``values[name]`` ``[sentences, layers, heads]``: one row per (layer, head).

    Columns ``layer``, ``head`` (the given ids) and ``names`` in that order, each the mean over
    sentences (every sentence weighs the same); with ``per_sentence=True`` one row per (sentence, layer,
    head) with a leading ``sentence`` column instead.
    """
    b = next(iter(values.values())).shape[0]
    if per_sentence:
        s, l, h = np.meshgrid(np.arange(b), layer_ids, head_ids, indexing="ij")
        frame = {"sentence": s.ravel(), "layer": l.ravel(), "head": h.ravel()}
        frame.update({k: values[k].ravel() for k in names})
    else:
        l, h = np.meshgrid(layer_ids, head_ids, indexing="ij")
        frame = {"layer": l.ravel(), "head": h.ravel()}
        frame.update({k: values[k].mean(0).ravel() for k in names})
    return pd.DataFrame(frame)


def head_metrics(
    data: HeadData,
    valid: torch.Tensor | None = None,
    *,
    which: str = "self",
    causal: bool | None = None,
    sparsity_threshold: float = 0.3,
    per_sentence: bool = False,
) -> pd.DataFrame:
    """One row per (layer, head) with every metric of :mod:`hf_attn_inspect.stats.metrics`, 0-indexed ``layer``, ``head``.

    ``data`` is a result, a list of results (each sentence weighs the same in the mean), or weights
    ``[..., layers, heads, T, T]`` / ``[heads, T, T]`` / ``[T, T]`` with an optional boolean ``valid``
    ``[batch, T]`` mask (padding rows and columns never count). ``which`` picks ``self``/``decoder``
    attention of encoder-decoder results. With ``per_sentence=True`` the rows are per (sentence, layer,
    head) with a ``sentence`` column. Computed for all sentences, layers and heads at once.
    """
    prep = head_weights(data, valid, which=which, causal=causal, sparsity_threshold=sparsity_threshold)
    values = {k: v.detach().cpu().numpy() for k, v in prep.metrics.items()}  # each [b, L, H]
    return head_frame(values, METRICS, prep.layer_ids, prep.head_ids, per_sentence=per_sentence)


_HIDDEN = ("weight_std", "sparsity", "local_window")  # in the head tables, not in the printed one
_SHOWN = [m for m in METRICS if m not in _HIDDEN]  # the distance last, after column_share
_TABLE_COLUMNS = ("layer", "head", "class", *_SHOWN[:-1], "column_share", _SHOWN[-1], "importance")
_TABLE_HEADERS = {
    "max_entropy": "max_ent", "previous_token": "prev", "next_token": "next", "first_token": "first",
    "special_tokens": "special", "punctuation": "punct", "max_weight": "max_w", "column_share": "column",
    "mean_distance": "distance", "diagonal": "diag",
}


def format_head_table(df: pd.DataFrame, *, columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """A fixed-width text table of :func:`~hf_attn_inspect.stats.patterns.head_table` (one line per head;
    shares and nats with ``digits`` decimals). ``columns`` picks the columns (default: class and the main
    metrics that are present)."""
    cols = [c for c in (columns or _TABLE_COLUMNS) if c in df.columns]
    if not cols:
        raise InputError("none of the requested columns is in the table")
    view = df[cols].rename(columns=_TABLE_HEADERS)
    floats = {c: (lambda x, d=digits: f"{x:.{d}f}") for c in view.columns if pd.api.types.is_float_dtype(view[c])}
    return view.to_string(index=False, formatters=floats, justify="right")
