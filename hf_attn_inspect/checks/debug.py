"""Diagnose broken attention: the chapter's three debug functions and a full checklist on a real model.

Every check returns a :class:`Finding`: the check's name, a status (``ok``, ``warn`` or ``fail``), the
numbers that justify it, the likely causes and the fix to try. Nothing is printed unless asked
(``verbose=True``, :meth:`Finding.print`, :meth:`Report.print`).

:func:`diagnose` runs the whole checklist on a model. Its statistics come from
:class:`DiagnosticProbe`, a :class:`~hf_attn_inspect.capture.interface.Probe` in the one capture path: while the
model runs, it sees every layer's post-RoPE query and key, the scale and the mask the model passes,
and the weights and output the reference core computes, and keeps only per-head statistics (never the
full ``[layers, heads, T, T]`` weights), except the weights of one sentence for the padding comparison.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence, TextIO

import numpy as np
import pandas as pd
import torch

from ..capture.interface import Probe, Site, attention_implementation
from ..core.kernels import mask_to_keep, repeat_kv, scaled_dot_product_attention_with_weights
from ..core.errors import InputError
from ..stats.metrics import sentence_metrics

__all__ = [
    "Finding",
    "Report",
    "DiagnosticProbe",
    "DiagnoseThresholds",
    "DEFAULT_TEXTS",
    "CHECKS",
    "debug_uniform_attention",
    "debug_attention_collapse",
    "debug_nan_attention",
    "diagnose",
]

STATUSES = ("ok", "warn", "fail")
_MARKS = {"ok": "[ok]  ", "warn": "[warn]", "fail": "[FAIL]"}

CHECKS = (
    "nan_inf",
    "fully_masked_rows",
    "row_sums",
    "padding_leak",
    "uniform_heads",
    "collapsed_heads",
    "attention_scale",
    "masks_dropped",
    "sdpa_trap",
)

DEFAULT_TEXTS = [
    "The cat sat on the mat because it was warm.",
    "Attention tells each token which other tokens matter.",
    "Hi!",
    "A much longer sentence, with commas, numbers like 42 and several clauses, makes sure the batch is padded.",
    "Where did the model put its attention?",
    "Short text.",
]


@dataclass
class Finding:
    """The result of one check: ``status`` is ``ok``, ``warn`` or ``fail``; ``numbers`` justify it;
    ``causes`` are the likely reasons when it is not ok and ``fix`` what to try."""

    check: str
    status: str
    summary: str
    numbers: dict[str, Any] = field(default_factory=dict)
    causes: list[str] = field(default_factory=list)
    fix: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    @property
    def ok(self) -> bool:
        """True unless the check failed (a warning passes)."""
        return self.status != "fail"

    def format(self, details: bool = True) -> str:
        """One line with the mark, the check and its summary; with ``details``, numbers, causes and fix."""
        lines = [f"{_MARKS[self.status]} {self.check}: {self.summary}"]
        if details:
            if self.numbers:
                nums = ", ".join(f"{k}={_fmt(v)}" for k, v in self.numbers.items())
                lines.append(f"         numbers: {nums}")
            if self.status != "ok":
                for cause in self.causes:
                    lines.append(f"         cause: {cause}")
                if self.fix:
                    lines.append(f"         fix: {self.fix}")
        return "\n".join(lines)

    def print(self, file: TextIO | None = None) -> None:
        """Print :meth:`format` (to stdout by default)."""
        print(self.format(), file=file or sys.stdout)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and len(v) > 8:
        return "[" + ", ".join(map(str, v[:8])) + f", ... {len(v) - 8} more]"
    return str(v)


@dataclass
class Report:
    """The checklist's findings for one model; ``status`` is the worst of them, ``exit_code`` 0 or 1."""

    model: str
    findings: list[Finding]
    texts: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return max((f.status for f in self.findings), key=STATUSES.index, default="ok")

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return self.status != "fail"

    @property
    def exit_code(self) -> int:
        """0 when healthy (warnings allowed), 1 when a check fails (the ``debug`` command's exit code)."""
        return 0 if self.ok else 1

    @property
    def failed(self) -> list[str]:
        return [f.check for f in self.findings if f.status == "fail"]

    def __getitem__(self, check: str) -> Finding:
        for f in self.findings:
            if f.check == check:
                return f
        raise KeyError(f"no check '{check}'; checks: {', '.join(f.check for f in self.findings)}")

    def to_frame(self) -> pd.DataFrame:
        """One row per check: ``check``, ``status``, ``summary``, ``fix``."""
        return pd.DataFrame([{"check": f.check, "status": f.status, "summary": f.summary, "fix": f.fix} for f in self.findings])

    def format(self, details: bool = True) -> str:
        head = f"Attention checklist for {self.model} ({len(self.texts)} texts)"
        body = [f.format(details) for f in self.findings]
        verdict = {"ok": "healthy", "warn": "healthy, with warnings", "fail": "BROKEN: " + ", ".join(self.failed)}[self.status]
        return "\n".join([head, "-" * len(head), *body, "-" * len(head), f"result: {verdict}"])

    def print(self, file: TextIO | None = None, details: bool = True) -> None:
        print(self.format(details), file=file or sys.stdout)


# --------------------------------------------------------------------------- the chapter's three functions
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


def _collapsed_rows(weights: torch.Tensor, valid: torch.Tensor | None, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per leading index: (rows whose max weight > threshold, valid rows), over the query dimension."""
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
    n_col, n_rows = _collapsed_rows(w, valid, threshold)
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
    would) and multiplies by V, counting non-finite values at each step. Fails when any step has
    NaN/Inf or any query row is fully masked (softmax of all ``-inf`` is NaN).
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


# ----------------------------------------------------------------------------------------- the probe
class DiagnosticProbe(Probe):
    """Per-head statistics of every attention call of one batch, for :func:`diagnose`.

    ``valid`` is ``{stack: (query_valid [B, Q], key_valid [B, K])}`` (real tokens, False on padding).
    From the query and key (:meth:`attend`): non-finite counts of Q, K, V, scores, weights and output,
    per-head std of Q and K over real tokens, variance of the scaled scores over real (query, key)
    pairs, the scale used and ``d_k``. From the weights (:meth:`record`, also fed by the eager
    fallback): fully masked real rows, the worst row-sum error, the largest weight on padding, and per
    head the entropy ratio ``entropy / max_entropy`` (via :func:`~hf_attn_inspect.stats.metrics.sentence_metrics`)
    and the share of collapsed rows (max weight > 0.95). ``keep`` names a sentence whose real-token
    weights are kept per layer (``kept[stack][layer]``, ``[H, n, n]``) for the padding comparison.
    Subclasses may change the inputs before calling ``super().attend`` (see :mod:`hf_attn_inspect.checks.faults`).
    """

    collapse_threshold = 0.95

    def __init__(self, valid: dict[str, tuple[torch.Tensor, torch.Tensor]], keep: int | None = None) -> None:
        self.valid = valid
        self.keep = keep
        self.kept: dict[str, dict[int, torch.Tensor]] = {}
        self.qk: dict[tuple[str, int], dict[str, Any]] = {}
        self.wstats: dict[tuple[str, int], dict[str, Any]] = {}
        self._causal = False

    def attend(self, site, module, query, key, value, mask, scaling, **kwargs):  # noqa: D102, ANN001
        qv, kv = self.valid.get(site.stack, self.valid.get("self"))
        qv, kv = qv.to(query.device), kv.to(query.device)
        q, k = query.detach().float(), key.detach().float()
        if k.shape[1] != q.shape[1]:
            k = repeat_kv(k, q.shape[1])
        d_k = q.shape[-1]
        scale = 1.0 / math.sqrt(d_k) if scaling is None else float(scaling)
        scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # [B, H, Q, K]
        if kwargs.get("softcap") is not None:
            scores = torch.tanh(scores / kwargs["softcap"]) * kwargs["softcap"]
        pair = (qv[:, None, :, None] & kv[:, None, None, :]).float()  # [B, 1, Q, K]
        npair = pair.sum().clamp_min(1.0) * 1.0
        finite_scores = torch.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)
        mean = (finite_scores * pair).sum((0, 2, 3)) / npair
        var = ((finite_scores - mean[None, :, None, None]).square() * pair).sum((0, 2, 3)) / npair
        stats = {
            "d_k": d_k,
            "scale": scale,
            "scale_given": scaling is not None,
            "q_std": _masked_std(q, qv),
            "k_std": _masked_std(k, kv),
            "score_var": var.cpu(),
            "q_nonfinite": int((~torch.isfinite(query)).sum()),
            "k_nonfinite": int((~torch.isfinite(key)).sum()),
            "v_nonfinite": int((~torch.isfinite(value)).sum()),
            "scores_nonfinite": int(((~torch.isfinite(scores)) & pair.bool()).sum()),
        }
        self._causal = bool(getattr(module, "is_causal", False)) and site.stack != "cross"
        self._mask = mask
        output, weights = super().attend(site, module, query, key, value, mask, scaling, **kwargs)
        stats["weights_nonfinite"] = int((~torch.isfinite(weights)).sum()) if weights is not None else 0
        stats["output_nonfinite"] = int(((~torch.isfinite(output)) & qv[:, None, :, None]).sum())
        self.qk[(site.stack, site.layer)] = stats
        return output, weights

    def record(self, site: Site, weights: torch.Tensor) -> None:
        qv, kv = self.valid.get(site.stack, self.valid.get("self"))
        w = weights.detach().float()
        qv, kv = qv.to(w.device), kv.to(w.device)
        mask = getattr(self, "_mask", None)
        self._mask = None
        if mask is not None:
            keep, _ = mask_to_keep(mask)
            while keep.dim() < 4:
                keep = keep.unsqueeze(0) if keep.dim() < 3 else keep.unsqueeze(1)
            keep = keep.to(w.device).expand(w.shape[0], -1, w.shape[-2], w.shape[-1]).any(1)  # [B, Q, K]
            fully = int(((~keep.any(-1)) & qv).sum())
        else:
            fully = 0
        wz = torch.nan_to_num(w, nan=0.0)
        on_real = (wz * kv[:, None, None, :]).sum(-1)  # [B, H, Q]
        on_pad = (wz * (~kv)[:, None, None, :]).sum(-1)
        rows = qv[:, None, :].expand_as(on_real)
        live = rows & (wz.sum(-1) > 0)
        stats: dict[str, Any] = {
            "fully_masked_rows": fully,
            "zero_rows": int((rows & ~(wz.sum(-1) > 0)).sum()),
            "real_rows": int(rows.sum()),
            "row_sum_error": float(((on_real + on_pad) - 1).abs()[live].max()) if bool(live.any()) else 0.0,
            "padding_weight": float(on_pad[rows].max()) if bool(rows.any()) else 0.0,
        }
        if site.stack != "cross" and w.shape[-1] == w.shape[-2]:
            m = sentence_metrics(wz, qv, causal=self._causal)
            n = qv.sum(-1)
            multi = (n > 1).float()[:, None]
            ratio = torch.where(m["max_entropy"] > 0, m["entropy"] / m["max_entropy"].clamp_min(1e-12), torch.ones_like(m["entropy"]))
            stats["entropy_ratio"] = ((ratio * multi).sum(0) / multi.sum().clamp_min(1.0)).cpu()  # [H]
        n_col, n_rows = _collapsed_rows(wz, qv[:, None, :], self.collapse_threshold)  # [B, H]
        stats["collapsed_share"] = (n_col.sum(0).float() / n_rows.sum(0).clamp_min(1).float()).cpu()
        self.wstats[(site.stack, site.layer)] = stats
        if self.keep is not None:
            b = self.keep
            nq, nk = int(qv[b].sum()), int(kv[b].sum())
            self.kept.setdefault(site.stack, {})[site.layer] = w[b, :, :nq, :nk].cpu().clone()


def _masked_std(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-head std of ``x [B, H, T, d]`` over real tokens and features."""
    m = valid[:, None, :, None].float()
    count = (m.sum() * x.shape[-1] * 1.0).clamp_min(1.0)
    xf = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    mean = (xf * m).sum((0, 2, 3)) / count
    var = ((xf - mean[None, :, None, None]).square() * m).sum((0, 2, 3)) / count
    return var.sqrt().cpu()


# ------------------------------------------------------------------------------------------ diagnose
@dataclass(frozen=True)
class DiagnoseThresholds:
    """Bars of :func:`diagnose`. A head is *uniform* when its entropy is at least ``uniform_ratio`` (0.95)
    of the maximum, *collapsed* when more than ``collapsed_rows`` (50%, the chapter's) of its rows put
    more than 0.95 on one key. Pretrained models have a few broad heads and many sharp [CLS]/[SEP]
    heads, so the model fails only when more than ``fail_share`` (50%) of its heads are uniform (or
    collapsed) and gets a warning above ``warn_share`` (25%). Row sums may be off by ``row_sum_tol``
    (1e-3, float32 softmax), padding may receive at most ``padding_tol`` (1e-6), and a text's weights
    alone and in a padded batch may differ by ``mask_tol`` (1e-4). The scale check fails when the
    scale is off 1/sqrt(d_k) by more than ``scale_factor`` (2x) and the scaled scores' variance is at
    least ``d_k * score_var_share`` for the median head (0.5 d_k: the spread of an unscaled dot product of unit-variance
    vectors, which saturates softmax).
    """

    uniform_ratio: float = 0.95
    collapsed_rows: float = 0.5
    warn_share: float = 0.25
    fail_share: float = 0.5
    row_sum_tol: float = 1e-3
    padding_tol: float = 1e-6
    mask_tol: float = 1e-4
    scale_factor: float = 2.0
    score_var_share: float = 0.5


def _resolve(target: Any, tokenizer: Any) -> Any:
    from ..capture.inspector import AttentionInspector

    if isinstance(target, AttentionInspector):
        return target
    if target is None or isinstance(target, str):
        return AttentionInspector.from_pretrained(target)
    if isinstance(target, torch.nn.Module):
        if tokenizer is None:
            from transformers import AutoTokenizer

            name = getattr(target.config, "_name_or_path", "")
            try:
                tokenizer = AutoTokenizer.from_pretrained(name)
            except Exception:
                raise InputError("pass tokenizer= with a model object (its tokenizer could not be loaded from the config)") from None
        return AttentionInspector(target, tokenizer)
    raise InputError(f"diagnose needs an AttentionInspector, a model or a model name, got {type(target).__name__}")


def diagnose(
    inspector_or_model: Any,
    texts: Sequence[str] | None = None,
    *,
    tokenizer: Any = None,
    probe_class: type[DiagnosticProbe] = DiagnosticProbe,
    thresholds: DiagnoseThresholds | None = None,
    max_length: int | None = 256,
) -> Report:
    """Run the debugging checklist on a real model and return a :class:`Report` (one :class:`Finding` per check).

    ``inspector_or_model`` is an :class:`~hf_attn_inspect.AttentionInspector`, a model (with
    ``tokenizer=``, else loaded from its config's name) or a model name/path (``None``: the embedded
    default). ``texts`` (default :data:`DEFAULT_TEXTS`) run as one right-padded batch; when they all
    have the same length a longer text is added so padding is exercised. Checks (:data:`CHECKS`):
    NaN/Inf in Q, K, V, scores, weights, output; fully masked real rows; real rows not summing to 1;
    weight on padding keys; uniform heads (with the cause: low Q/K variance, scale too small); collapsed
    heads and their share; the 1/sqrt(d_k) scale compared with the variance of the scores; masks
    silently dropped (the most padded text alone vs in the batch); and the sdpa trap (the model's own
    ``output_attentions=True`` returns no weights). ``probe_class`` lets tests plant faults in the
    capture path. Thresholds: :class:`DiagnoseThresholds`.
    """
    th = thresholds or DiagnoseThresholds()
    inspector = _resolve(inspector_or_model, tokenizer)
    texts = list(DEFAULT_TEXTS if texts is None else texts)
    if not texts:
        raise InputError("no text to diagnose with")
    batch = inspector.encode(texts, max_length=max_length)
    if len(set(batch.lengths)) == 1:
        texts = texts + [DEFAULT_TEXTS[3]]
        batch = inspector.encode(texts, max_length=max_length)
    valid = _valid_by_stack(batch)
    shortest = int(np.argmin(batch.lengths))
    probe = probe_class(valid, keep=shortest)
    output = inspector.run(batch, probe)
    findings = [
        _check_nan(probe, output, batch),
        _check_fully_masked(probe),
        _check_row_sums(probe, th),
        _check_padding(probe, th),
        *_check_heads(probe, th),
        _check_scale(probe, th),
        _check_masks_dropped(inspector, probe, batch, shortest, probe_class, th, max_length),
        _check_sdpa_trap(inspector),
    ]
    return Report(inspector.name, findings, texts)


def _valid_by_stack(batch: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    enc = batch.valid.cpu()
    out = {"self": (enc, enc), "encoder": (enc, enc)}
    if "decoder_attention_mask" in batch.inputs:
        dec = batch.inputs["decoder_attention_mask"].bool().cpu()
        out["decoder"] = (dec, dec)
        out["cross"] = (dec, enc)
    return out


def _sum(probe: DiagnosticProbe, key: str, source: str = "qk") -> int:
    stats = probe.qk if source == "qk" else probe.wstats
    return int(sum(s.get(key, 0) for s in stats.values()))


def _check_nan(probe: DiagnosticProbe, output: Any, batch: Any) -> Finding:
    keys = ("q_nonfinite", "k_nonfinite", "v_nonfinite", "scores_nonfinite", "weights_nonfinite", "output_nonfinite")
    if not probe.qk:
        return Finding("nan_inf", "warn", "Q/K statistics unavailable: the model does not dispatch through the attention interface",
                       {}, ["eager output_attentions fallback (e.g. DeBERTa)"], "check NaN in the weights with debug_nan_attention")
    nums = {k.replace("_nonfinite", ""): _sum(probe, k) for k in keys}
    bad = [k for k, v in nums.items() if v]
    where = sorted({f"{stack}:{layer}" for (stack, layer), s in probe.qk.items() if any(s[k] for k in keys)})
    nums["layers"] = where[:8]
    if bad:
        first = (where[0] if where else "?")
        return Finding("nan_inf", "fail", f"non-finite values in {', '.join(bad)} (first layer {first})", nums,
                       ["NaN/Inf in the hidden states (overflow in half precision, bad weights)",
                        "scores overflow: compute them in float32 and keep the 1/sqrt(d_k) scale"],
                       "run in float32, look at the first layer listed, check the weights for NaN (torch.isfinite)")
    return Finding("nan_inf", "ok", "no NaN or Inf in Q, K, V, scores, weights or output", nums)


def _check_fully_masked(probe: DiagnosticProbe) -> Finding:
    n = _sum(probe, "fully_masked_rows", "w")
    zero = _sum(probe, "zero_rows", "w")
    rows = _sum(probe, "real_rows", "w")
    nums = {"masked_rows_x_layers": n, "zero_rows_x_heads": zero, "real_rows_x_heads": rows}
    if n or zero:
        what = f"{n} (real query row, layer) pairs have every key masked" if n else f"{zero} real rows have all-zero weights"
        return Finding("fully_masked_rows", "fail", f"{what}: those queries attend to nothing",
                       nums, ["a mask that hides every key of a real token (wrong mask shape/orientation, mask built on the wrong side)",
                              "an eager softmax over all -inf gives NaN for such rows"],
                       "make sure every real query keeps at least one key (itself); zero such rows after softmax with nan_to_num")
    return Finding("fully_masked_rows", "ok", "every real query row has at least one key", nums)


def _check_row_sums(probe: DiagnosticProbe, th: DiagnoseThresholds) -> Finding:
    err = max((s["row_sum_error"] for s in probe.wstats.values()), default=0.0)
    nums = {"max_row_sum_error": err, "tolerance": th.row_sum_tol}
    if err > th.row_sum_tol:
        return Finding("row_sums", "fail", f"weights of some real rows sum to 1 +/- {err:.3g}", nums,
                       ["softmax over the wrong dimension", "weights rescaled after softmax (dropout in eval mode, manual edits)"],
                       "apply softmax over the key dimension (dim=-1) and call model.eval()")
    return Finding("row_sums", "ok", f"every real row sums to 1 (max error {err:.2g}); fully masked rows are counted separately", nums)


def _check_padding(probe: DiagnosticProbe, th: DiagnoseThresholds) -> Finding:
    leak = max((s["padding_weight"] for s in probe.wstats.values()), default=0.0)
    nums = {"max_weight_on_padding": leak, "tolerance": th.padding_tol}
    if leak > th.padding_tol:
        return Finding("padding_leak", "fail", f"real tokens put up to {leak:.3g} of their attention on padding", nums,
                       ["the attention mask is not passed to the attention function", "mask built with the wrong padding side"],
                       "pass attention_mask to the model and make sure the attention function applies it")
    return Finding("padding_leak", "ok", "no attention weight on padding keys", nums)


def _head_arrays(probe: DiagnosticProbe, key: str) -> tuple[list[tuple[str, int]], torch.Tensor]:
    sites = [s for s in sorted(probe.wstats) if key in probe.wstats[s]]
    if not sites:
        return [], torch.zeros(0, 0)
    return sites, torch.stack([probe.wstats[s][key] for s in sites])


def _check_heads(probe: DiagnosticProbe, th: DiagnoseThresholds) -> list[Finding]:
    sites, ratio = _head_arrays(probe, "entropy_ratio")
    csites, collapsed = _head_arrays(probe, "collapsed_share")
    out = []
    # uniform heads
    uni = ratio >= th.uniform_ratio
    n_heads = uni.numel()
    share = float(uni.float().mean()) if n_heads else 0.0
    names = [f"{st}:{l}.{h}" if st != "self" else f"{l}.{h}" for (st, l), row in zip(sites, uni) for h in row.nonzero().flatten().tolist()]
    nums: dict[str, Any] = {"uniform_heads": int(uni.sum()), "heads": n_heads, "share": share, "heads_listed": names}
    causes: list[str] = []
    if uni.any() and probe.qk:
        q_std = torch.stack([probe.qk[s]["q_std"] for s in sites if s in probe.qk])
        k_std = torch.stack([probe.qk[s]["k_std"] for s in sites if s in probe.qk])
        svar = torch.stack([probe.qk[s]["score_var"] for s in sites if s in probe.qk])
        scale_ok = [probe.qk[s]["scale"] * math.sqrt(probe.qk[s]["d_k"]) for s in sites if s in probe.qk]
        if q_std.shape == uni.shape:
            nums["uniform_q_std"] = float(q_std[uni].mean())
            nums["uniform_k_std"] = float(k_std[uni].mean())
            nums["uniform_score_std"] = float(svar[uni].sqrt().mean())
            if nums["uniform_q_std"] < 0.1 or nums["uniform_k_std"] < 0.1:
                causes.append(f"low-variance Q/K in the uniform heads (Q std {nums['uniform_q_std']:.3g}, K std {nums['uniform_k_std']:.3g})")
            if min(scale_ok) < 1 / th.scale_factor:
                causes.append(f"scale too small: {min(scale_ok):.3g} x 1/sqrt(d_k)")
            if nums["uniform_score_std"] < 0.1 and not causes:
                causes.append(f"scores barely vary (std {nums['uniform_score_std']:.3g}): inputs nearly constant")
    causes = causes or ["scores do not vary across keys"]
    fix = "re-initialise or check the Q/K projections and their inputs; keep the scale at 1/sqrt(d_k); train longer"
    if share > th.fail_share:
        out.append(Finding("uniform_heads", "fail", f"{int(uni.sum())}/{n_heads} heads ({share:.0%}) attend uniformly", nums, causes, fix))
    elif share > th.warn_share:
        out.append(Finding("uniform_heads", "warn", f"{int(uni.sum())}/{n_heads} heads ({share:.0%}) attend uniformly", nums, causes, fix))
    else:
        out.append(Finding("uniform_heads", "ok", f"{int(uni.sum())}/{n_heads} heads attend uniformly (isolated broad heads are normal)", nums))
    # collapsed heads
    col = collapsed > th.collapsed_rows
    n_heads = col.numel()
    share = float(col.float().mean()) if n_heads else 0.0
    names = [f"{st}:{l}.{h}" if st != "self" else f"{l}.{h}" for (st, l), row in zip(csites, col) for h in row.nonzero().flatten().tolist()]
    nums = {"collapsed_heads": int(col.sum()), "heads": n_heads, "share": share,
            "mean_collapsed_row_share": float(collapsed.mean()) if n_heads else 0.0, "heads_listed": names}
    causes = ["scores too large: missing 1/sqrt(d_k) scale or Q/K weights grown by a too high learning rate",
              "embeddings not normalised"]
    fix = "check the scale, lower the learning rate (warm-up), clip gradients, check LayerNorm before attention"
    label = f"{int(col.sum())}/{n_heads} heads ({share:.0%}) have more than {th.collapsed_rows:.0%} of rows on one key (> 0.95)"
    if share > th.fail_share:
        out.append(Finding("collapsed_heads", "fail", label, nums, causes, fix))
    elif share > th.warn_share:
        out.append(Finding("collapsed_heads", "warn", label, nums, causes, fix))
    else:
        out.append(Finding("collapsed_heads", "ok", label + " (isolated sharp heads are normal)", nums))
    return out


def _check_scale(probe: DiagnosticProbe, th: DiagnoseThresholds) -> Finding:
    if not probe.qk:
        return Finding("attention_scale", "warn", "scale unavailable: the model does not dispatch through the attention interface",
                       {}, ["eager output_attentions fallback"], "check the model's attention code for 1/sqrt(d_k)")
    stats = list(probe.qk.values())
    d_k = stats[0]["d_k"]
    ratios = [s["scale"] * math.sqrt(s["d_k"]) for s in stats]
    var = max(float(s["score_var"].max()) for s in stats)
    median_var = float(torch.cat([s["score_var"] for s in stats]).median())
    worst = max(ratios, key=lambda r: abs(math.log(max(r, 1e-12))))
    nums = {"d_k": d_k, "scale": stats[ratios.index(worst)]["scale"], "expected": 1 / math.sqrt(d_k),
            "scale_x_sqrt_dk": worst, "max_score_var": var, "median_score_var": median_var,
            "fail_var": th.score_var_share * d_k}
    off = worst > th.scale_factor or worst < 1 / th.scale_factor
    if off and median_var >= th.score_var_share * d_k:
        return Finding("attention_scale", "fail",
                       f"scale is {worst:.3g} x 1/sqrt(d_k) and the median head's score variance is {median_var:.3g} "
                       f"(>= {th.score_var_share} d_k = {th.score_var_share * d_k:.3g})",
                       nums, ["the 1/sqrt(d_k) scale is missing (or a wrong one is used)",
                              "scores grow with d_k, softmax saturates and attention collapses"],
                       "divide the scores by sqrt(d_k) (scaling=head_dim**-0.5)")
    if off:
        return Finding("attention_scale", "warn",
                       f"scale is {worst:.3g} x 1/sqrt(d_k) but the scores stay moderate (median variance {median_var:.3g}): a model trained with its own scale (T5-style)?",
                       nums, ["the model folds the scale into its weights, or uses a custom scale"],
                       "nothing if the model was trained this way; otherwise use 1/sqrt(d_k)")
    return Finding("attention_scale", "ok", f"scale is 1/sqrt(d_k) = {1 / math.sqrt(d_k):.4g}; score variance at most {var:.3g}", nums)


def _check_masks_dropped(inspector, probe, batch, shortest, probe_class, th, max_length) -> Finding:
    text = batch.texts[shortest]
    pad = max(batch.lengths) - batch.lengths[shortest]
    alone_batch = inspector.encode([text], max_length=max_length)
    alone = probe_class(_valid_by_stack(alone_batch), keep=0)
    inspector.run(alone_batch, alone)
    diff = 0.0
    for stack, layers in probe.kept.items():
        for layer, w in layers.items():
            ref = alone.kept.get(stack, {}).get(layer)
            if ref is None or ref.shape != w.shape:
                diff = float("inf")
                continue
            diff = max(diff, float((torch.nan_to_num(w) - torch.nan_to_num(ref)).abs().max()))
    nums = {"text": text[:40], "padding_tokens": pad, "max_abs_difference": diff, "tolerance": th.mask_tol}
    if diff > th.mask_tol:
        return Finding("masks_dropped", "fail", f"a text's attention changes by {diff:.3g} when it is padded in a batch", nums,
                       ["the padding mask is silently dropped (attention function ignores attention_mask, or the mask "
                        "function of a custom attention implementation was not registered)"],
                       "register a mask function with the attention implementation (AttentionMaskInterface) or pass the mask through")
    return Finding("masks_dropped", "ok", f"the shortest text's attention is the same alone and padded by {pad} tokens (max diff {diff:.2g})", nums)


def _check_sdpa_trap(inspector) -> Finding:
    from ..capture.inspector import _quiet_transformers

    model = inspector.model
    impl = attention_implementation(model) or "unknown"
    enc = inspector.encode(["Is attention returned?"])
    inputs = {k: v.to(inspector.device) for k, v in enc.inputs.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _quiet_transformers():
            out = model(**inputs, output_attentions=True)
    except Exception as exc:  # a model may refuse output_attentions altogether
        return Finding("sdpa_trap", "warn", f"output_attentions=True raises with '{impl}': {str(exc)[:100]}", {"implementation": impl},
                       ["the attention implementation cannot return weights"], "use hf-attn-inspect's capture, or load with attn_implementation='eager'")
    finally:
        model.train(was_training)
    groups = [getattr(out, a, None) for a in ("attentions", "encoder_attentions", "decoder_attentions")]
    returned = [g for g in groups if g]
    layers = sum(1 for g in returned for w in g if w is not None)
    nums = {"implementation": impl, "layers_returned": layers}
    if layers == 0:
        got = "an empty tuple" if any(g == () for g in groups) else "None"
        return Finding("sdpa_trap", "warn",
                       f"attn_implementation='{impl}': model(..., output_attentions=True) returns {got}, not weights "
                       "(hf-attn-inspect's capture is not affected)", nums,
                       [f"'{impl}' kernels never materialise the weights; transformers returns {got} instead of failing"],
                       "use hf-attn-inspect (captures exactly with any implementation) or load with attn_implementation='eager'")
    return Finding("sdpa_trap", "ok", f"attn_implementation='{impl}' returns weights for {layers} layers with output_attentions=True", nums)
