"""The chapter's single-head pattern analysis: :func:`analyze_attention_pattern` and its printed report.

Same keys and meaning as the chapter's function for one head's ``[T, T]`` weights, computed by
:func:`hf_attn_inspect.stats.metrics.sentence_metrics` (the code behind every per-head table), so the
chapter's numbers and the tables' numbers cannot drift apart.
"""

from __future__ import annotations

import sys
from typing import Mapping, TextIO

import numpy as np
import torch

from ..core.errors import InputError
from .metrics import sentence_metrics

__all__ = [
    "analyze_attention_pattern",
    "analysis_from_metrics",
    "format_attention_analysis",
    "format_raw_fields",
    "print_attention_analysis",
]


def analyze_attention_pattern(attention_weights: torch.Tensor | np.ndarray, threshold: float = 0.3) -> dict[str, float | bool]:
    """The chapter's analysis of one head's ``[T, T]`` weights, with the chapter's keys and meaning.

    ``diagonal_mean`` (mean ``a_ii``), ``first_token_mean`` (mean ``a_i0``), ``previous_token_mean``
    (mean ``a_i,i-1`` over rows ``i >= 1``), ``weight_std`` (population std of all weights), ``sparsity``
    (share of weights ``<= threshold``), ``mean_entropy`` (mean row entropy, nats) / ``max_entropy``
    (``ln T``), and the booleans ``is_diagonal_dominant``, ``attends_to_first``, ``is_previous_dominant``
    (mean above ``threshold``) and ``is_uniform`` (``weight_std < 0.1``). Computed by the same code as
    :func:`~hf_attn_inspect.stats.tables.head_metrics`.
    """
    w = torch.as_tensor(np.asarray(attention_weights) if isinstance(attention_weights, np.ndarray) else attention_weights)
    if w.dim() != 2 or w.shape[0] != w.shape[1]:
        raise InputError(f"expected one head's [T, T] weights, got shape {tuple(w.shape)}")
    m = {k: float(v.reshape(-1)[0]) for k, v in sentence_metrics(w[None], sparsity_threshold=threshold).items()}
    return analysis_from_metrics(m, threshold)


def analysis_from_metrics(m: Mapping[str, float], threshold: float = 0.3) -> dict[str, float | bool]:
    """:func:`analyze_attention_pattern`'s dictionary from one head's metrics (the names of
    :data:`~hf_attn_inspect.stats.metrics.METRICS`, e.g. a row of a per-head table), for heads whose weights
    were never stored (long inputs); ``sparsity`` must have been measured with the same ``threshold``."""
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


def format_attention_analysis(analysis: dict[str, float | bool], title: str = "ATTENTION PATTERN ANALYSIS") -> str:
    """The chapter's report of :func:`analyze_attention_pattern` as text (shares to 3 decimals, sparsity in %)."""
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


def format_raw_fields(analysis: dict[str, float | bool], threshold: float = 0.3) -> str:
    """The numbers of :func:`analyze_attention_pattern` under their own key names, without the chapter's
    yes/no flags (``is_uniform`` is ``weight_std < 0.1``, which calls most heads of a short text uniform);
    ``sparsity`` is the share of weights at or below ``threshold``. ``hf-attn-inspect inspect`` prints
    this under the package's one verdict (:func:`hf_attn_inspect.stats.patterns.describe_pattern`)."""
    a = analysis
    return "\n".join([
        "the chapter's raw fields (analyze_attention_pattern; numbers only, not a verdict):",
        f"  diagonal_mean {a['diagonal_mean']:.3f}   first_token_mean {a['first_token_mean']:.3f}   "
        f"previous_token_mean {a['previous_token_mean']:.3f}",
        f"  weight_std {a['weight_std']:.3f}   sparsity {a['sparsity']:.1%} (weights <= {threshold})   "
        f"mean_entropy {a['mean_entropy']:.3f} / max_entropy {a['max_entropy']:.3f} nats",
    ])


def print_attention_analysis(analysis: dict[str, float | bool], file: TextIO | None = None) -> None:
    """Print :func:`format_attention_analysis` (the chapter's function; only called when asked)."""
    print(format_attention_analysis(analysis), file=file or sys.stdout)
