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
    "analyze_cross_attention",
    "format_cross_analysis",
    "analysis_from_metrics",
    "format_attention_analysis",
    "format_raw_fields",
    "print_attention_analysis",
]


def analyze_attention_pattern(attention_weights: torch.Tensor | np.ndarray, threshold: float = 0.3, *,
                              causal: bool = False) -> dict[str, float | bool]:
    """The chapter's analysis of one head's ``[T, T]`` weights, with the chapter's keys and meaning.

    ``diagonal_mean`` (mean ``a_ii``), ``first_token_mean`` (mean ``a_i0``), ``previous_token_mean``
    (mean ``a_i,i-1`` over rows ``i >= 1``), ``weight_std`` (population std of all weights), ``sparsity``
    (share of weights ``<= threshold``), ``mean_entropy`` (mean row entropy, nats) / ``max_entropy``
    (``ln T``; with ``causal=True``, a causal head whose row ``i`` sees ``i + 1`` keys, the mean over rows
    of ``ln(i + 1)``: the same maximum as the per-head tables' ``entropy_ratio``), and the booleans ``is_diagonal_dominant``, ``attends_to_first``, ``is_previous_dominant``
    (mean above ``threshold``) and ``is_uniform`` (``weight_std < 0.1``). Computed by the same code as
    :func:`~hf_attn_inspect.stats.tables.head_metrics`.
    """
    w = torch.as_tensor(np.asarray(attention_weights) if isinstance(attention_weights, np.ndarray) else attention_weights)
    if w.dim() != 2 or w.shape[0] != w.shape[1]:
        raise InputError(f"expected one head's [T, T] weights, got shape {tuple(w.shape)}")
    m = sentence_metrics(w[None], causal=causal, sparsity_threshold=threshold)
    return analysis_from_metrics({k: float(v.reshape(-1)[0]) for k, v in m.items()}, threshold)


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


def format_raw_fields(analysis: dict[str, float | bool], threshold: float = 0.3, *, causal: bool | None = None) -> str:
    """The numbers of :func:`analyze_attention_pattern` under their own key names, without the chapter's
    yes/no flags (``is_uniform`` is ``weight_std < 0.1``, which calls most heads of a short text uniform);
    ``sparsity`` is the share of weights at or below ``threshold``. ``hf-attn-inspect inspect`` prints
    this under the package's one verdict (:func:`hf_attn_inspect.stats.patterns.describe_pattern`); with
    ``causal`` given (True or False: how the analysis was made), a last line says which maximum
    ``max_entropy`` is and the ratio the verdict's ``entropy ... of its maximum`` quotes."""
    a = analysis
    lines = [
        "the chapter's raw fields (analyze_attention_pattern; numbers only, not a verdict):",
        f"  diagonal_mean {a['diagonal_mean']:.3f}   first_token_mean {a['first_token_mean']:.3f}   "
        f"previous_token_mean {a['previous_token_mean']:.3f}",
        f"  weight_std {a['weight_std']:.3f}   sparsity {a['sparsity']:.1%} (weights <= {threshold})   "
        f"mean_entropy {a['mean_entropy']:.3f} / max_entropy {a['max_entropy']:.3f} nats",
    ]
    if causal is not None:
        ratio = a["mean_entropy"] / a["max_entropy"] if a["max_entropy"] > 0 else 1.0
        seen = ("the mean over query rows of ln(keys the row can see), row i seeing i + 1 keys (causal)" if causal
                else "ln(number of keys): every row sees every key")
        lines.append(f"  max_entropy is {seen};")
        lines.append(f"  the verdict's 'entropy ... of its maximum' is mean_entropy / max_entropy = {ratio:.2f}")
    return "\n".join(lines)


def analyze_cross_attention(attention_weights: torch.Tensor | np.ndarray) -> dict[str, float | int]:
    """The pattern numbers of one cross-attention head's ``[decoder tokens, encoder tokens]`` weights (each
    row a decoder token's attention over the encoder's tokens, summing to 1), where the self-attention
    classes (previous, next token...) do not apply: ``mean_entropy`` (mean row entropy, nats) and
    ``max_entropy`` (``ln`` of the number of encoder tokens), ``entropy_ratio`` (their ratio: 1 = spread
    evenly over the whole input), ``max_weight`` (mean over rows of the row's largest weight),
    ``top_key`` (the encoder token with the largest mean weight) and ``top_key_share`` (that mean),
    and ``same_position`` (mean ``a_ii``, the share on the encoder token at the decoder token's position,
    for as many rows as both have: high when the decoder copies its input, as BART reading its own text)."""
    w = torch.as_tensor(np.asarray(attention_weights) if isinstance(attention_weights, np.ndarray) else attention_weights)
    if w.dim() != 2:
        raise InputError(f"expected one head's [decoder tokens, encoder tokens] weights, got shape {tuple(w.shape)}")
    w = w.double()
    entropy = float(-(w * torch.log(w + 1e-10)).sum(-1).mean())
    max_entropy = float(np.log(w.shape[1]))
    column = w.mean(0)
    n = min(w.shape)
    return {
        "mean_entropy": entropy,
        "max_entropy": max_entropy,
        "entropy_ratio": entropy / max_entropy if max_entropy > 0 else 1.0,
        "max_weight": float(w.max(-1).values.mean()),
        "top_key": int(column.argmax()),
        "top_key_share": float(column.max()),
        "same_position": float(torch.diagonal(w[:n, :n]).mean()),
    }


def format_cross_analysis(analysis: Mapping[str, float | int], key_tokens: list[str] | None = None) -> str:
    """:func:`analyze_cross_attention`'s numbers as the lines ``hf-attn-inspect inspect --attention cross`` prints."""
    a = analysis
    key = int(a["top_key"])
    name = f" {key_tokens[key]!r}" if key_tokens is not None and key < len(key_tokens) else ""
    return "\n".join([
        f"  entropy {a['mean_entropy']:.3f} of max_entropy {a['max_entropy']:.3f} nats = ln(encoder tokens): "
        f"{a['entropy_ratio']:.2f} of its maximum",
        f"  mean row maximum {a['max_weight']:.2f}; most attended encoder token: #{key}{name} "
        f"({a['top_key_share']:.2f} of a row's attention on average)",
        f"  share on the encoder token at the same position: {a['same_position']:.2f}",
    ])


def print_attention_analysis(analysis: dict[str, float | bool], file: TextIO | None = None) -> None:
    """Print :func:`format_attention_analysis` (the chapter's function; only called when asked)."""
    print(format_attention_analysis(analysis), file=file or sys.stdout)
