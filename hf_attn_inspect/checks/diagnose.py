"""Diagnose broken attention on a real model: the checklist behind ``hf-attn-inspect debug``.

:func:`diagnose` runs every check of :data:`CHECKS` on one padded batch and returns a
:class:`~hf_attn_inspect.checks.findings.Report` of :class:`~hf_attn_inspect.checks.findings.Finding` objects. Its
statistics come from :class:`DiagnosticRecorder`, a :class:`~hf_attn_inspect.capture.recorders.Recorder` in
the one capture path: while the model runs, it sees every layer's post-RoPE query and key, the scale and
the mask the model passes, and the weights and output the reference core computes, and keeps only
per-head statistics (never the full ``[layers, heads, T, T]`` weights), except the weights of one
sentence for the padding comparison. The masks of real tokens come from the
:class:`~hf_attn_inspect.capture.inputs.Batch`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..capture.images import default_images
from ..capture.inputs import Batch
from ..capture.inspector import AttentionInspector, ModelSource, quiet_transformers, resolve_inspector
from ..capture.interface import attention_implementation
from ..capture.recorders import AttentionCall, Recorder
from ..core.errors import InputError
from ..core.kernels import repeat_kv, scaled_dot_product_attention_with_weights
from ..core.masks import mask_to_keep
from ..core.stacks import DECODER, ENCODER, SELF, STACKS, is_self_attention, key_stack, query_stack
from ..core.tokens import Tokenizer
from ..stats.metrics import entropy_ratio, sentence_metrics
from .chapter import collapsed_rows
from .findings import Finding, Report

__all__ = ["DiagnosticRecorder", "DiagnoseThresholds", "DEFAULT_TEXTS", "CHECKS", "diagnose", "query_key_valid"]

#: The checks of :func:`diagnose`, in report order.
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

#: The texts :func:`diagnose` runs when given none: six sentences of different lengths (one padded batch).
DEFAULT_TEXTS = [
    "The cat sat on the mat because it was warm.",
    "Attention tells each token which other tokens matter.",
    "Hi!",
    "A much longer sentence, with commas, numbers like 42 and several clauses, makes sure the batch is padded.",
    "Where did the model put its attention?",
    "Short text.",
]


def query_key_valid(batch: Batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{stack: (query_valid [B, Q], key_valid [B, K])}``: boolean CPU masks of real tokens (False on padding).

    Taken from the batch's masks (:meth:`~hf_attn_inspect.capture.inputs.Batch.masks`): the encoder/self
    stacks attend from and to the input's tokens, the decoder from and to the decoder input's, and
    cross-attention from the decoder input's tokens to the encoder's.
    """
    enc = batch.masks(SELF).valid
    sides = {SELF: enc, ENCODER: enc}
    if batch.has_decoder:
        sides[DECODER] = batch.masks(DECODER).valid
    return {s: (sides[query_stack(s)], sides[key_stack(s)]) for s in STACKS if query_stack(s) in sides}


# -------------------------------------------------------------------------------------- the recorder
class DiagnosticRecorder(Recorder):
    """Per-head statistics of every attention call of one batch, for :func:`diagnose`.

    ``batch`` is the batch being run; its real-token masks (:func:`query_key_valid`, kept as ``valid``)
    decide which query rows and keys count. It computes each call itself (:meth:`compute`, the reference
    kernel), so a subclass can plant a fault in the attention function: change ``call`` (its query, key,
    mask...) and call ``super().compute(call)`` (see :mod:`hf_attn_inspect.checks.faults`).
    :meth:`record` keeps, from the query and key: non-finite counts of Q, K, V, scores, weights and output,
    per-head std of Q and K over real tokens, variance of the scaled scores over real (query, key) pairs,
    the scale used and ``d_k``; from the weights (also on the eager fallback, which has no query): fully
    masked real rows, the worst row-sum error, the largest weight on padding, and per head the entropy
    ratio ``entropy / max_entropy`` (via :func:`~hf_attn_inspect.stats.metrics.sentence_metrics`) and the
    share of collapsed rows (max weight > 0.95). ``keep`` names a sentence whose real-token weights are kept
    per layer (``kept[stack][layer]``, ``[H, n, n]``) for the padding comparison.
    """

    collapse_threshold = 0.95

    def __init__(self, batch: Batch, keep: int | None = None) -> None:
        self.valid = query_key_valid(batch)
        self.keep = keep
        self.kept: dict[str, dict[int, torch.Tensor]] = {}
        self.qk: dict[tuple[str, int], dict[str, Any]] = {}
        self.wstats: dict[tuple[str, int], dict[str, Any]] = {}

    def compute(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Compute ``call`` with the reference kernel (with ``call``'s query, key, value and mask, which a
        subclass may have changed) and record it."""
        call.output, call.weights = scaled_dot_product_attention_with_weights(
            call.query, call.key, call.value, call.mask, scale=call.scaling, softcap=call.softcap
        )
        self.record(call)
        return call.output, call.weights

    def record(self, call: AttentionCall) -> None:
        """Record the statistics of one computed call (the query/key ones only when it has a query)."""
        if call.query is not None:
            self._record_qk(call)
        self._record_weights(call)

    def _record_qk(self, call: AttentionCall) -> None:
        site, query, key, value, output, weights = call.site, call.query, call.key, call.value, call.output, call.weights
        qv, kv = self.valid.get(site.stack, self.valid.get(SELF))
        qv, kv = qv.to(query.device), kv.to(query.device)
        q, k = query.detach().float(), key.detach().float()
        if k.shape[1] != q.shape[1]:
            k = repeat_kv(k, q.shape[1])
        d_k = q.shape[-1]
        scale = 1.0 / math.sqrt(d_k) if call.scaling is None else float(call.scaling)
        scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # [B, H, Q, K]
        if call.softcap is not None:
            scores = torch.tanh(scores / call.softcap) * call.softcap
        pair = (qv[:, None, :, None] & kv[:, None, None, :]).float()  # [B, 1, Q, K]
        npair = pair.sum().clamp_min(1.0) * 1.0
        finite_scores = torch.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)
        mean = (finite_scores * pair).sum((0, 2, 3)) / npair
        var = ((finite_scores - mean[None, :, None, None]).square() * pair).sum((0, 2, 3)) / npair
        self.qk[(site.stack, site.layer)] = {
            "d_k": d_k,
            "scale": scale,
            "scale_given": call.scaling is not None,
            "q_std": _masked_std(q, qv),
            "k_std": _masked_std(k, kv),
            "score_var": var.cpu(),
            "q_nonfinite": int((~torch.isfinite(query)).sum()),
            "k_nonfinite": int((~torch.isfinite(key)).sum()),
            "v_nonfinite": int((~torch.isfinite(value)).sum()),
            "scores_nonfinite": int(((~torch.isfinite(scores)) & pair.bool()).sum()),
            "weights_nonfinite": int((~torch.isfinite(weights)).sum()) if weights is not None else 0,
            "output_nonfinite": int(((~torch.isfinite(output)) & qv[:, None, :, None]).sum()),
        }

    def _record_weights(self, call: AttentionCall) -> None:
        site = call.site
        qv, kv = self.valid.get(site.stack, self.valid.get(SELF))
        w = call.weights.detach().float()
        qv, kv = qv.to(w.device), kv.to(w.device)
        mask = call.mask if isinstance(call.mask, torch.Tensor) else None
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
        if is_self_attention(site.stack) and w.shape[-1] == w.shape[-2]:
            m = sentence_metrics(wz, qv, causal=call.causal)
            n = qv.sum(-1)
            multi = (n > 1).float()[:, None]
            ratio = entropy_ratio(m["entropy"], m["max_entropy"])
            stats["entropy_ratio"] = ((ratio * multi).sum(0) / multi.sum().clamp_min(1.0)).cpu()  # [H]
        n_col, n_rows = collapsed_rows(wz, qv[:, None, :], self.collapse_threshold)  # [B, H]
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


def diagnose(
    inspector_or_model: ModelSource,
    texts: Sequence[str] | None = None,
    *,
    tokenizer: Tokenizer | None = None,
    probe_class: type[DiagnosticRecorder] = DiagnosticRecorder,
    thresholds: DiagnoseThresholds | None = None,
    max_length: int | None = 256,
) -> Report:
    """Run the debugging checklist on a real model and return a :class:`~hf_attn_inspect.checks.findings.Report`
    (one :class:`~hf_attn_inspect.checks.findings.Finding` per check).

    ``inspector_or_model`` is anything :func:`~hf_attn_inspect.capture.inspector.resolve_inspector`
    takes: an :class:`~hf_attn_inspect.AttentionInspector`, a model (with ``tokenizer=``, else loaded
    from its config's name) or a model name/path (``None``: the embedded default). ``texts`` (default :data:`DEFAULT_TEXTS`) run as one right-padded batch; when they all
    have the same length a longer text is added so padding is exercised. Checks (:data:`CHECKS`):
    NaN/Inf in Q, K, V, scores, weights, output; fully masked real rows; real rows not summing to 1;
    weight on padding keys; uniform heads (with the cause: low Q/K variance, scale too small); collapsed
    heads and their share; the 1/sqrt(d_k) scale compared with the variance of the scores; masks
    silently dropped (the most padded text alone vs in the batch); and the sdpa trap (the model's own
    ``output_attentions=True`` returns no weights). ``probe_class`` (a :class:`DiagnosticRecorder`
    subclass) lets tests plant faults in the capture path. Thresholds: :class:`DiagnoseThresholds`.
    """
    th = thresholds or DiagnoseThresholds()
    inspector = resolve_inspector(inspector_or_model, tokenizer, what="the model to diagnose")
    vision = getattr(inspector, "processor", None) is not None  # images: paths, PIL images or arrays
    texts = list((default_images() if vision else DEFAULT_TEXTS) if texts is None else texts)
    if not texts:
        raise InputError("no text to diagnose with")
    batch = _encode(inspector, texts, max_length)
    if len(set(batch.lengths)) == 1 and not vision:  # an image batch has no padding: every image has its units
        texts = texts + [DEFAULT_TEXTS[3]]
        batch = _encode(inspector, texts, max_length)
    shortest = int(np.argmin(batch.lengths))
    probe = probe_class(batch, keep=shortest)
    inspector.run(batch, probe)
    findings = [
        _check_nan(probe),
        _check_fully_masked(probe),
        _check_row_sums(probe, th),
        _check_padding(probe, th),
        _check_uniform(probe, th),
        _check_collapsed(probe, th),
        _check_scale(probe, th),
        _check_masks_dropped(inspector, probe, batch, texts[shortest], shortest, probe_class, th, max_length),
        _check_sdpa_trap(inspector),
    ]
    return Report(inspector.name, findings, batch.texts if vision else texts)


def _encode(inspector: AttentionInspector, items: Sequence[Any], max_length: int | None) -> Batch:
    """One batch of ``items``: texts through the tokenizer, or images through a vision model's image processor."""
    if getattr(inspector, "processor", None) is not None:
        return inspector.encode_images(items)
    return inspector.encode(items, max_length=max_length)


def _sum(probe: DiagnosticRecorder, key: str, source: str = "qk") -> int:
    stats = probe.qk if source == "qk" else probe.wstats
    return int(sum(s.get(key, 0) for s in stats.values()))


def _check_nan(probe: DiagnosticRecorder) -> Finding:
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


def _check_fully_masked(probe: DiagnosticRecorder) -> Finding:
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


def _largest(probe: DiagnosticRecorder, key: str) -> float:
    """The largest per-call weight statistic ``key`` over every layer (0 when nothing was recorded)."""
    return max((s[key] for s in probe.wstats.values()), default=0.0)


def _at_most(check: str, value: float, tolerance: float, nums: dict[str, Any], fail: str, ok: str,
             causes: list[str], fix: str) -> Finding:
    """Fail (with ``causes`` and ``fix``) when ``value`` exceeds ``tolerance``, else ok."""
    if value > tolerance:
        return Finding(check, "fail", fail, nums, causes, fix)
    return Finding(check, "ok", ok, nums)


def _check_row_sums(probe: DiagnosticRecorder, th: DiagnoseThresholds) -> Finding:
    err = _largest(probe, "row_sum_error")
    return _at_most(
        "row_sums", err, th.row_sum_tol, {"max_row_sum_error": err, "tolerance": th.row_sum_tol},
        f"weights of some real rows sum to 1 +/- {err:.3g}",
        f"every real row sums to 1 (max error {err:.2g}); fully masked rows are counted separately",
        ["softmax over the wrong dimension", "weights rescaled after softmax (dropout in eval mode, manual edits)"],
        "apply softmax over the key dimension (dim=-1) and call model.eval()",
    )


def _check_padding(probe: DiagnosticRecorder, th: DiagnoseThresholds) -> Finding:
    leak = _largest(probe, "padding_weight")
    return _at_most(
        "padding_leak", leak, th.padding_tol, {"max_weight_on_padding": leak, "tolerance": th.padding_tol},
        f"real tokens put up to {leak:.3g} of their attention on padding",
        "no attention weight on padding keys",
        ["the attention mask is not passed to the attention function", "mask built with the wrong padding side"],
        "pass attention_mask to the model and make sure the attention function applies it",
    )


def _head_arrays(probe: DiagnosticRecorder, key: str) -> tuple[list[tuple[str, int]], torch.Tensor]:
    sites = [s for s in sorted(probe.wstats) if key in probe.wstats[s]]
    if not sites:
        return [], torch.zeros(0, 0)
    return sites, torch.stack([probe.wstats[s][key] for s in sites])


def _head_names(sites: list[tuple[str, int]], flags: torch.Tensor) -> list[str]:
    """``layer.head`` (``stack:layer.head`` outside the self stack) of every flagged head of ``flags [sites, H]``."""
    return [f"{st}:{l}.{h}" if st != SELF else f"{l}.{h}" for (st, l), row in zip(sites, flags) for h in row.nonzero().flatten().tolist()]


def _share_finding(check: str, share: float, th: DiagnoseThresholds, label: str, ok_label: str,
                   nums: dict[str, Any], causes: list[str], fix: str) -> Finding:
    """Fail above ``th.fail_share`` of the heads, warn above ``th.warn_share``, else ok (with ``ok_label``)."""
    if share > th.fail_share:
        return Finding(check, "fail", label, nums, causes, fix)
    if share > th.warn_share:
        return Finding(check, "warn", label, nums, causes, fix)
    return Finding(check, "ok", ok_label, nums)


def _check_uniform(probe: DiagnosticRecorder, th: DiagnoseThresholds) -> Finding:
    sites, ratio = _head_arrays(probe, "entropy_ratio")
    uni = ratio >= th.uniform_ratio
    n_heads = uni.numel()
    share = float(uni.float().mean()) if n_heads else 0.0
    nums: dict[str, Any] = {"uniform_heads": int(uni.sum()), "heads": n_heads, "share": share, "heads_listed": _head_names(sites, uni)}
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
    return _share_finding(
        "uniform_heads", share, th,
        f"{int(uni.sum())}/{n_heads} heads ({share:.0%}) attend uniformly",
        f"{int(uni.sum())}/{n_heads} heads attend uniformly (isolated broad heads are normal)",
        nums, causes or ["scores do not vary across keys"],
        "re-initialise or check the Q/K projections and their inputs; keep the scale at 1/sqrt(d_k); train longer",
    )


def _check_collapsed(probe: DiagnosticRecorder, th: DiagnoseThresholds) -> Finding:
    sites, collapsed = _head_arrays(probe, "collapsed_share")
    col = collapsed > th.collapsed_rows
    n_heads = col.numel()
    share = float(col.float().mean()) if n_heads else 0.0
    nums = {"collapsed_heads": int(col.sum()), "heads": n_heads, "share": share,
            "mean_collapsed_row_share": float(collapsed.mean()) if n_heads else 0.0, "heads_listed": _head_names(sites, col)}
    label = f"{int(col.sum())}/{n_heads} heads ({share:.0%}) have more than {th.collapsed_rows:.0%} of rows on one key (> 0.95)"
    return _share_finding(
        "collapsed_heads", share, th, label, label + " (isolated sharp heads are normal)", nums,
        ["scores too large: missing 1/sqrt(d_k) scale or Q/K weights grown by a too high learning rate",
         "embeddings not normalised"],
        "check the scale, lower the learning rate (warm-up), clip gradients, check LayerNorm before attention",
    )


def _check_scale(probe: DiagnosticRecorder, th: DiagnoseThresholds) -> Finding:
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
    return Finding("attention_scale", "ok",
                   f"scale is 1/sqrt(d_k) = {1 / math.sqrt(d_k):.4g}; the median head's score variance is "
                   f"{median_var:.3g} (with a wrong scale, fail_var = {th.score_var_share} d_k = "
                   f"{th.score_var_share * d_k:.3g} fails; the largest head's is {var:.3g})", nums)


def _check_masks_dropped(
    inspector: AttentionInspector,
    probe: DiagnosticRecorder,
    batch: Batch,
    item: Any,
    shortest: int,
    probe_class: type[DiagnosticRecorder],
    th: DiagnoseThresholds,
    max_length: int | None,
) -> Finding:
    text = str(batch.texts[shortest])
    pad = max(batch.lengths) - batch.lengths[shortest]
    alone_batch = _encode(inspector, [item], max_length)
    alone = probe_class(alone_batch, keep=0)
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


def _check_sdpa_trap(inspector: AttentionInspector) -> Finding:
    model = inspector.model
    impl = attention_implementation(model) or "unknown"
    enc = _encode(inspector, default_images()[:1] if getattr(inspector, "processor", None) is not None
                  else ["Is attention returned?"], None)
    inputs = {k: v.to(inspector.device) for k, v in enc.inputs.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), quiet_transformers():
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
