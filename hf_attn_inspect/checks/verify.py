"""Prove, layer by layer, that captured attention is the model's own attention.

For every attention layer of a padded batch, :func:`verify` measures (a) the largest difference between
our captured weights and the model's eager ``output_attentions``, and (b) the largest difference between
``weights @ V`` from our reference core and the attention output the model computes with its own
implementation (sdpa, eager, ...). Only real tokens count: padding query rows and padding keys are
excluded. Both should be at float32 rounding level (below 1e-5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd
import torch
from transformers.utils import ModelOutput

from ..capture.images import default_images
from ..capture.inspector import AttentionInspector
from ..capture.interface import original_attention_function, passthrough_name, use_implementation
from ..capture.recorders import AttentionCall, Recorder, WeightsRecorder
from ..core.errors import InputError
from ..core.stacks import OUTPUT_FIELDS, STACKS, model_stacks
from .diagnose import query_key_valid

__all__ = ["verify", "VerificationReport", "LayerCheck", "DEFAULT_TEXTS"]

DEFAULT_TEXTS = (
    "The cat sat on the mat.",
    "Attention lets every token look at every other token, weighted by how well query and key match.",
    "Hi!",
    "In 1905, Einstein published four papers; one of them, on special relativity, changed physics.",
)


@dataclass
class LayerCheck:
    """One attention layer: largest absolute differences over real tokens (NaN when not measurable)."""

    stack: str
    layer: int
    weights_max_diff: float
    output_max_diff: float


@dataclass
class VerificationReport:
    """Per-layer differences between captured attention and the model's own computation."""

    model_name: str
    implementation: str
    tolerance: float
    layers: list[LayerCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def max_diff(self) -> float:
        """Largest difference of any kind in any layer (NaN entries ignored)."""
        vals = [v for c in self.layers for v in (c.weights_max_diff, c.output_max_diff) if not math.isnan(v)]
        return max(vals) if vals else float("nan")

    @property
    def passed(self) -> bool:
        """True when every measured difference is at most ``tolerance`` (and something was measured)."""
        return bool(self.layers) and not math.isnan(self.max_diff) and self.max_diff <= self.tolerance

    def to_frame(self) -> pd.DataFrame:
        """The per-layer table as a DataFrame (columns stack, layer, weights_max_diff, output_max_diff)."""
        return pd.DataFrame([c.__dict__ for c in self.layers])

    def format(self) -> str:
        """A readable report: one line per layer and a verdict line."""
        lines = [
            f"model: {self.model_name}  (own attention implementation: {self.implementation})",
            f"{'stack':<8} {'layer':>5}  {'weights vs eager':>16}  {'output vs ' + self.implementation:>18}",
        ]
        for c in self.layers:
            fmt = lambda v: "n/a" if math.isnan(v) else f"{v:.2e}"  # noqa: E731
            lines.append(f"{c.stack:<8} {c.layer:>5}  {fmt(c.weights_max_diff):>16}  {fmt(c.output_max_diff):>18}")
        lines.extend(f"note: {n}" for n in self.notes)
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(f"{verdict}: max difference {self.max_diff:.2e} (tolerance {self.tolerance:.0e})")
        return "\n".join(lines)


class _OutputRecorder(Recorder):
    """Keeps each layer's per-head output (the reference core's: the run keeps weights, so they are computed)."""

    def __init__(self) -> None:
        self.outputs: dict[tuple[str, int], torch.Tensor] = {}

    def record(self, call: AttentionCall) -> None:
        if call.output is not None:  # None on the eager fallback
            self.outputs[(call.site.stack, call.site.layer)] = call.output.detach().float()


class _PassthroughRecorder(_OutputRecorder):
    """Computes every call with the model's own attention function under its own mask implementation
    (:attr:`implementation`) and keeps its output: the thing we verify against."""

    def __init__(self, implementation: str) -> None:
        super().__init__()
        self.own = implementation
        self.implementation = passthrough_name(implementation)

    def compute(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor | None]:
        fn = original_attention_function(self.own, call.module)
        output, weights = fn(call.module, call.query, call.key, call.value, call.mask, scaling=call.scaling, **call.kwargs)
        call.output = output.transpose(1, 2)  # attention functions return [B, T, H, D]
        self.record(call)
        return call.output, weights


def _max_diff(a: torch.Tensor, b: torch.Tensor, vq: torch.Tensor, vk: torch.Tensor | None) -> float:
    """Largest |a - b| over [B, H, Q, K] (or [B, H, Q, D] when vk is None) where query/key are real."""
    diff = (a.float() - b.float()).abs()
    mask = vq[:, None, :, None]
    if vk is not None:
        mask = mask & vk[:, None, None, :]
    return float(diff.masked_fill(~mask, 0).max()) if diff.numel() else 0.0


def verify(
    inspector: AttentionInspector,
    texts: Sequence[str] | None = None,
    *,
    tolerance: float = 1e-5,
    pairs: Sequence[str] | None = None,
) -> VerificationReport:
    """Check every layer of ``inspector``'s model on one padded batch of ``texts`` (default: 4 sentences
    of different lengths; ``pairs``: second texts of sentence pairs; for a vision model, images: paths, PIL images
    or arrays, default :func:`~hf_attn_inspect.capture.images.default_images`) and return a :class:`VerificationReport`
    with the per-layer largest absolute differences over real tokens. A blank text or a negative
    ``tolerance`` raises :class:`~hf_attn_inspect.core.errors.InputError`."""
    if tolerance < 0 or math.isnan(tolerance):
        raise InputError(f"tolerance must be 0 or more, got {tolerance}")
    model = inspector.model
    implementation = getattr(model.config, "_attn_implementation", None) or "eager"
    report = VerificationReport(inspector.name, implementation, tolerance)
    if getattr(inspector, "processor", None) is not None:  # a vision model: images (paths, PIL images, arrays)
        batch = inspector.encode_images(list(texts) if texts else default_images())
    else:
        batch = inspector.encode(list(texts or DEFAULT_TEXTS), pairs)
    kept = WeightsRecorder(device=None)
    ours = _OutputRecorder()
    inspector.run(batch, [kept, ours])
    weights = {(stack, layer): w for stack, layers in kept.weights.items() for layer, w in layers.items()}
    inputs = {k: v.to(inspector.device) for k, v in batch.inputs.items()}
    with torch.no_grad(), use_implementation(model, "eager"):
        eager = model(**inputs, output_attentions=True)
    eager_weights = _eager_weights(eager, inspector.is_encoder_decoder)
    theirs = _PassthroughRecorder(implementation)
    if ours.outputs:
        inspector.run(batch, theirs)
    else:
        report.notes.append("model does not use transformers' attention interface: weights come from eager "
                            "output_attentions, outputs not comparable")
    valid = query_key_valid(batch)
    for key in sorted(weights, key=lambda k: (STACKS.index(k[0]), k[1])):
        stack, layer = key
        device = weights[key].device
        vq, vk = (v.to(device) for v in valid[stack])
        w_ref = eager_weights.get(key)
        wd = float("nan") if w_ref is None else _max_diff(weights[key], w_ref.to(device), vq, vk)
        od = float("nan")
        if key in ours.outputs and key in theirs.outputs:
            od = _max_diff(ours.outputs[key], theirs.outputs[key], vq, None)
        report.layers.append(LayerCheck(stack, layer, wd, od))
    return report


def _eager_weights(output: ModelOutput, enc_dec: bool) -> dict[tuple[str, int], torch.Tensor]:
    groups = [(stack, OUTPUT_FIELDS[stack]) for stack in model_stacks(enc_dec)]
    found = {}
    for stack, attr in groups:
        for layer, w in enumerate(getattr(output, attr, None) or ()):
            if w is not None:
                found[(stack, layer)] = w.detach().float()
    return found
