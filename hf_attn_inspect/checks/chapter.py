"""The chapter's three single-call debug functions: uniform attention, attention collapse, NaN attention.

Each takes tensors (queries and keys, or weights), computes a few numbers and returns a
:class:`~hf_attn_inspect.checks.findings.Finding` with the status, those numbers, the likely causes and
the fix. Nothing is printed unless ``verbose=True``. :func:`collapsed_rows` (the per-row count behind
:func:`debug_attention_collapse`) is shared with :mod:`~hf_attn_inspect.checks.diagnose`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..core.kernels import repeat_kv
from ..core.masks import mask_to_keep
from .findings import Finding

__all__ = ["debug_uniform_attention", "debug_attention_collapse", "debug_nan_attention", "collapsed_rows"]


def debug_uniform_attention(
    Q: torch.Tensor, K: torch.Tensor, *, scale: float | None = None, low_std: float = 0.1, verbose: bool = False
) -> Finding:
    """Why attention might be uniform (the chapter's check), for queries ``[..., T, d]`` and keys ``[..., S, d]``.

    Numbers: mean/std of Q and K, std of the raw scores ``Q K^T`` and of the scaled scores (``scale``,
    default ``1/sqrt(d_k)``), and ``d_k``. Fails when the scaled scores' std is below ``low_std`` (0.1:
    then every ``exp(score)`` is within ~10% of the others and softmax is nearly ``1/n``); warns when Q
    or K has std below ``low_std`` but the scores still vary, or when ``d_k > 512`` (check the scale).
    """
    Q, K = Q.detach().float(), K.detach().float()
    d_k = K.shape[-1]
    scale = 1.0 / math.sqrt(d_k) if scale is None else scale
    if Q.dim() >= 3 and K.dim() >= 3 and K.shape[-3] != Q.shape[-3]:
        K = repeat_kv(K, Q.shape[-3])
    raw = Q @ K.transpose(-2, -1)
    scaled = raw * scale
    nums = {
        "q_mean": float(Q.mean()), "q_std": float(Q.std()), "k_mean": float(K.mean()), "k_std": float(K.std()),
        "raw_score_std": float(raw.std()), "scaled_score_std": float(scaled.std()), "d_k": d_k, "scale": float(scale),
    }
    causes: list[str] = []
    if nums["q_std"] < low_std or nums["k_std"] < low_std:
        causes.append(f"Q or K has very low variance (std < {low_std}): check initialisation of the projections")
    if scale * math.sqrt(d_k) < 0.5:
        causes.append(f"the scale {scale:.4g} is much smaller than 1/sqrt(d_k) = {1 / math.sqrt(d_k):.4g}")
    if nums["scaled_score_std"] < low_std:
        status, summary = "fail", f"scaled scores have std {nums['scaled_score_std']:.3g} < {low_std}: attention is uniform"
    elif causes or d_k > 512:
        status, summary = "warn", "scores vary, but " + ("Q/K variance is low" if causes else f"d_k = {d_k} is large")
        if d_k > 512:
            causes.append(f"large d_k ({d_k}): make sure 1/sqrt(d_k) scaling is applied")
    else:
        status, summary = "ok", f"scaled scores vary (std {nums['scaled_score_std']:.3g})"
    finding = Finding("uniform_attention", status, summary, nums, causes or ["scores do not vary across keys"],
                      "re-initialise the Q/K projections (e.g. std 0.02 with unit-variance inputs), check the scale is 1/sqrt(d_k), "
                      "check the inputs are not constant (normalised embeddings, no zeroed hidden states)")
    if verbose:
        finding.print()
    return finding


def collapsed_rows(weights: torch.Tensor, valid: torch.Tensor | None, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per leading index of ``weights [..., T, S]``: ``(collapsed, rows)``, two integer tensors ``[...]``.

    ``collapsed`` counts the query rows whose largest weight exceeds ``threshold`` and ``rows`` the rows
    counted at all; ``valid`` (boolean, broadcastable to ``[..., T]``; None = every row) restricts both
    to real query rows.
    """
    w = weights.float()
    collapsed = w.amax(-1) > threshold  # [..., T]
    rows = torch.ones_like(collapsed) if valid is None else valid.to(collapsed.device).expand_as(collapsed)
    return (collapsed & rows).sum(-1), rows.sum(-1)


def debug_attention_collapse(
    attention_weights: torch.Tensor,
    threshold: float = 0.95,
    *,
    valid: torch.Tensor | None = None,
    max_share: float = 0.5,
    verbose: bool = False,
) -> Finding:
    """Attention collapse (the chapter's check): rows whose largest weight exceeds ``threshold`` (0.95).

    ``attention_weights`` is ``[..., T, S]``; ``valid`` an optional boolean mask of query rows
    broadcastable to ``[..., T]``. Fails when more than ``max_share`` (50%) of the rows collapsed.
    Numbers: collapsed and total rows, their share, and the dominant key positions (the key receiving
    each collapsed row's maximum, with counts).
    """
    w = attention_weights.detach().float()
    n_col, n_rows = collapsed_rows(w, valid, threshold)
    collapsed, total = int(n_col.sum()), int(n_rows.sum())
    share = collapsed / max(total, 1)
    top = w.argmax(-1)
    mask = w.amax(-1) > threshold
    if valid is not None:
        mask = mask & valid.to(mask.device).expand_as(mask)
    counts = torch.bincount(top[mask].flatten(), minlength=w.shape[-1]) if collapsed else torch.zeros(w.shape[-1], dtype=torch.long)
    dominant = {int(p): int(c) for p, c in enumerate(counts.tolist()) if c}
    nums = {"collapsed_rows": collapsed, "total_rows": total, "share": share, "threshold": threshold,
            "dominant_positions": dict(sorted(dominant.items(), key=lambda kv: -kv[1])[:5])}
    status = "fail" if share > max_share else "ok"
    summary = f"{collapsed}/{total} rows ({share:.0%}) put more than {threshold:.0%} of their weight on one key"
    finding = Finding("attention_collapse", status, summary, nums,
                      ["scores not scaled (missing 1/sqrt(d_k))", "learning rate too high (Q/K weights grew)",
                       "embeddings not normalised"],
                      "check the 1/sqrt(d_k) scale, lower the learning rate or add warm-up, clip gradients, check LayerNorm")
    if verbose:
        finding.print()
    return finding


def debug_nan_attention(
    Q: torch.Tensor,
    K: torch.Tensor,
    V: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    verbose: bool = False,
) -> Finding:
    """Step through plain attention to find where NaN/Inf appear (the chapter's check).

    ``mask`` uses the chapter's convention (1/True = attend, 0 = masked) or an additive float mask.
    Computes scores, masks them with ``-inf``, applies a plain softmax (as a naive implementation
    would) and multiplies by V, counting non-finite values at each step (the numbers are those counts
    and the number of fully masked query rows). Fails when any step has NaN/Inf or any query row is
    fully masked (softmax of all ``-inf`` is NaN).
    """
    Q, K, V = Q.detach().float(), K.detach().float(), V.detach().float()
    nums: dict[str, Any] = {
        "q_nan": int(torch.isnan(Q).sum()), "k_nan": int(torch.isnan(K).sum()), "v_nan": int(torch.isnan(V).sum()),
    }
    scale = 1.0 / math.sqrt(K.shape[-1]) if scale is None else scale
    scores = Q @ K.transpose(-2, -1) * scale
    nums["scores_nan"] = int(torch.isnan(scores).sum())
    nums["scores_inf"] = int(torch.isinf(scores).sum())
    fully = 0
    if mask is not None:
        keep, bias = mask_to_keep(mask)
        keep = keep.expand_as(scores) if keep.shape != scores.shape else keep
        if bias is not None:
            scores = scores + bias.float()
        scores = scores.masked_fill(~keep, float("-inf"))
        fully = int((~keep.any(-1)).sum())
    nums["fully_masked_rows"] = fully
    weights = torch.softmax(scores, dim=-1)
    nums["weights_nan"] = int(torch.isnan(weights).sum())
    output = weights @ V
    nums["output_nan"] = int(torch.isnan(output).sum())
    causes = []
    if nums["q_nan"] or nums["k_nan"] or nums["v_nan"]:
        causes.append("NaN already in Q/K/V: look upstream (embeddings, LayerNorm, a previous layer, fp16 overflow)")
    if nums["scores_inf"] or nums["scores_nan"]:
        causes.append("scores overflow: unscaled scores or half precision; compute scores in float32")
    if fully:
        causes.append("some query rows have every key masked: softmax of all -inf is exp(-inf)/exp(-inf) = NaN")
    bad = any(nums[k] for k in ("q_nan", "k_nan", "v_nan", "scores_nan", "scores_inf", "weights_nan", "output_nan")) or fully
    if bad:
        first = next((k for k in ("q_nan", "k_nan", "v_nan", "scores_nan", "scores_inf", "fully_masked_rows", "weights_nan", "output_nan") if nums[k]), "")
        summary = f"non-finite values or fully masked rows (first at: {first})"
    else:
        summary = "no NaN/Inf at any step and no fully masked row"
    finding = Finding("nan_attention", "fail" if bad else "ok", summary, nums, causes,
                      "give every query at least one key (or zero fully masked rows: torch.nan_to_num(weights, nan=0.0) "
                      "after softmax), compute scores in float32, fix NaN inputs upstream")
    if verbose:
        finding.print()
    return finding
