"""Per-head metrics as tables, and the chapter's single-head pattern analysis.

:func:`head_metrics` turns one result, a list of results (padded into one batch) or a weights tensor
into a :class:`pandas.DataFrame` with one row per (layer, head); the definitions live in
:mod:`hf_attn_inspect.metrics`. :func:`analyze_attention_pattern` and :func:`print_attention_analysis`
keep the chapter's keys and meaning for a single ``[T, T]`` head.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence, TextIO

import numpy as np
import pandas as pd
import torch

from .errors import InputError
from .metrics import METRICS, punctuation_mask, sentence_metrics
from .result import AttentionResult

__all__ = [
    "head_metrics",
    "batch_results",
    "analyze_attention_pattern",
    "format_attention_analysis",
    "print_attention_analysis",
]


def batch_results(results: Sequence[AttentionResult], which: str = "self") -> dict[str, Any]:
    """Pad results of different lengths into one batch: ``weights [B, L, H, T, T]`` and ``[B, T]`` masks.

    Returns a dict with ``weights``, ``valid``, ``special``, ``punctuation``, ``causal``, ``layer_ids``
    and ``head_ids``; every result must have the same layers and heads.
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
        mask = r.special_tokens_mask if which in ("self", "encoder") else r.decoder_special_tokens_mask
        special[i, :n] = torch.tensor(mask or [False] * n, dtype=torch.bool)
        punct[i, :n] = punctuation_mask(tk)
    causal = first.is_causal if which in ("self", "encoder") else which == "decoder"
    return {
        "weights": weights,
        "valid": valid,
        "special": special,
        "punctuation": punct,
        "causal": causal,
        "layer_ids": first.layer_ids,
        "head_ids": first.head_ids,
    }


def head_metrics(
    data: AttentionResult | Sequence[AttentionResult] | torch.Tensor | np.ndarray,
    valid: torch.Tensor | None = None,
    *,
    which: str = "self",
    causal: bool | None = None,
    sparsity_threshold: float = 0.3,
    per_sentence: bool = False,
) -> pd.DataFrame:
    """One row per (layer, head) with every metric of :mod:`hf_attn_inspect.metrics`, 0-indexed ``layer``, ``head``.

    ``data`` is a result, a list of results (each sentence weighs the same in the mean), or weights
    ``[..., layers, heads, T, T]`` / ``[heads, T, T]`` / ``[T, T]`` with an optional boolean ``valid``
    ``[batch, T]`` mask (padding rows and columns never count). ``which`` picks ``self``/``decoder``
    attention of encoder-decoder results. With ``per_sentence=True`` the rows are per (sentence, layer,
    head) with a ``sentence`` column. Computed for all sentences, layers and heads at once.
    """
    if isinstance(data, AttentionResult):
        data = [data]
    if isinstance(data, (list, tuple)):
        batch = batch_results(data, which)
        weights = batch["weights"]
        m = sentence_metrics(
            weights,
            batch["valid"],
            special=batch["special"],
            punctuation=batch["punctuation"],
            causal=batch["causal"] if causal is None else causal,
            sparsity_threshold=sparsity_threshold,
        )
        layer_ids, head_ids = batch["layer_ids"], batch["head_ids"]
    else:
        weights = torch.as_tensor(data).float()
        while weights.dim() < 5:
            weights = weights.unsqueeze(0)
        if weights.dim() != 5:
            raise InputError(f"weights must be at most [batch, layers, heads, T, T], got {tuple(weights.shape)}")
        m = sentence_metrics(weights, valid, causal=bool(causal), sparsity_threshold=sparsity_threshold)
        layer_ids, head_ids = list(range(weights.shape[1])), list(range(weights.shape[2]))
    b, nl, nh = weights.shape[:3]
    values = {k: v.detach().cpu().numpy() for k, v in m.items()}  # each [b, L, H]
    if per_sentence:
        s, l, h = np.meshgrid(np.arange(b), layer_ids, head_ids, indexing="ij")
        frame = {"sentence": s.ravel(), "layer": l.ravel(), "head": h.ravel()}
        frame.update({k: values[k].ravel() for k in METRICS})
    else:
        l, h = np.meshgrid(layer_ids, head_ids, indexing="ij")
        frame = {"layer": l.ravel(), "head": h.ravel()}
        frame.update({k: values[k].mean(0).ravel() for k in METRICS})
    return pd.DataFrame(frame)


def analyze_attention_pattern(attention_weights: torch.Tensor | np.ndarray, threshold: float = 0.3) -> dict[str, Any]:
    """The chapter's analysis of one head's ``[T, T]`` weights, with the chapter's keys and meaning.

    ``diagonal_mean`` (mean ``a_ii``), ``first_token_mean`` (mean ``a_i0``), ``previous_token_mean``
    (mean ``a_i,i-1``), ``weight_std`` (std of all weights), ``sparsity`` (share of weights
    ``<= threshold``), ``mean_entropy``/``max_entropy`` (nats), and the booleans
    ``is_diagonal_dominant``, ``attends_to_first``, ``is_previous_dominant`` (mean above ``threshold``)
    and ``is_uniform`` (``weight_std < 0.1``). Computed by the same code as :func:`head_metrics`.
    """
    w = torch.as_tensor(np.asarray(attention_weights) if isinstance(attention_weights, np.ndarray) else attention_weights)
    if w.dim() != 2 or w.shape[0] != w.shape[1]:
        raise InputError(f"expected one head's [T, T] weights, got shape {tuple(w.shape)}")
    m = {k: float(v.reshape(-1)[0]) for k, v in sentence_metrics(w[None], sparsity_threshold=threshold).items()}
    return {
        "diagonal_mean": m["diagonal"],
        "is_diagonal_dominant": m["diagonal"] > threshold,
        "first_token_mean": m["first_token"],
        "attends_to_first": m["first_token"] > threshold,
        "previous_token_mean": m["previous_token"],
        "is_previous_dominant": m["previous_token"] > threshold,
        "weight_std": m["weight_std"],
        "is_uniform": m["weight_std"] < 0.1,
        "sparsity": m["sparsity"],
        "mean_entropy": m["entropy"],
        "max_entropy": m["max_entropy"],
    }


def format_attention_analysis(analysis: dict[str, Any], title: str = "ATTENTION PATTERN ANALYSIS") -> str:
    """The chapter's report of :func:`analyze_attention_pattern` as text."""
    yes = lambda flag: "yes" if flag else "no"  # noqa: E731
    a = analysis
    lines = [
        "=" * 50,
        title,
        "=" * 50,
        "Diagonal (self) attention:",
        f"  mean diagonal weight: {a['diagonal_mean']:.3f}   dominant: {yes(a['is_diagonal_dominant'])}",
        "First token attention:",
        f"  mean attention to first: {a['first_token_mean']:.3f}   attends to first: {yes(a['attends_to_first'])}",
        "Previous token attention:",
        f"  mean previous attention: {a['previous_token_mean']:.3f}   dominant: {yes(a['is_previous_dominant'])}",
        "Distribution:",
        f"  weight std: {a['weight_std']:.3f}   uniform: {yes(a['is_uniform'])}",
        f"  sparsity: {a['sparsity']:.1%}",
        f"  mean entropy: {a['mean_entropy']:.3f} / {a['max_entropy']:.3f} nats",
        "=" * 50,
    ]
    return "\n".join(lines)


def print_attention_analysis(analysis: dict[str, Any], file: TextIO | None = None) -> None:
    """Print :func:`format_attention_analysis` (the chapter's function; only called when asked)."""
    print(format_attention_analysis(analysis), file=file or sys.stdout)
