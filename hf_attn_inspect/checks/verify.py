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
from typing import Any, Sequence

import pandas as pd
import torch
from transformers.utils import ModelOutput

from ..capture.inspector import AttentionInspector
from ..capture.interface import Probe, Site, original_attention_function, passthrough_name, use_implementation
from ..core.errors import InputError
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


class _OutputProbe(Probe):
    """Reference-core attention that keeps each layer's weights and output."""

    def __init__(self) -> None:
        self.weights: dict[tuple[str, int], torch.Tensor] = {}
        self.outputs: dict[tuple[str, int], torch.Tensor] = {}

    def attend(self, site: Site, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               mask: torch.Tensor | None, scaling: float | None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        output, weights = super().attend(site, module, query, key, value, mask, scaling, **kwargs)
        self.outputs[(site.stack, site.layer)] = output.detach().float()
        return output, weights

    def record(self, site: Site, weights: torch.Tensor) -> None:
        self.weights[(site.stack, site.layer)] = weights.detach().float()


class _PassthroughProbe(Probe):
    """Calls the model's own attention function and keeps its output (the thing we verify against)."""

    def __init__(self, implementation: str) -> None:
        self.implementation = implementation
        self.outputs: dict[tuple[str, int], torch.Tensor] = {}

    def attend(self, site: Site, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               mask: torch.Tensor | None, scaling: float | None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        fn = original_attention_function(self.implementation, module)
        output, weights = fn(module, query, key, value, mask, scaling=scaling, **kwargs)
        output = output.transpose(1, 2)  # attention functions return [B, T, H, D]
        self.outputs[(site.stack, site.layer)] = output.detach().float()
        return output, weights


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
    of different lengths; ``pairs``: second texts of sentence pairs) and return a :class:`VerificationReport`
    with the per-layer largest absolute differences over real tokens. A blank text or a negative
    ``tolerance`` raises :class:`~hf_attn_inspect.core.errors.InputError`."""
    texts = list(texts or DEFAULT_TEXTS)
    if tolerance < 0 or math.isnan(tolerance):
        raise InputError(f"tolerance must be 0 or more, got {tolerance}")
    model = inspector.model
    implementation = getattr(model.config, "_attn_implementation", None) or "eager"
    report = VerificationReport(inspector.name, implementation, tolerance)
    batch = inspector.encode(texts, pairs)
    ours = _OutputProbe()
    inspector.run(batch, ours)
    inputs = {k: v.to(inspector.device) for k, v in batch.inputs.items()}
    with torch.no_grad(), use_implementation(model, "eager"):
        eager = model(**inputs, output_attentions=True)
    eager_weights = _eager_weights(eager, inspector.is_encoder_decoder)
    theirs = _PassthroughProbe(implementation)
    if ours.outputs:
        inspector.run(batch, theirs, implementation=passthrough_name(implementation))
    else:
        report.notes.append("model does not use transformers' attention interface: weights come from eager "
                            "output_attentions, outputs not comparable")
    valid = query_key_valid(batch)
    for key in sorted(ours.weights, key=lambda k: (["self", "encoder", "decoder", "cross"].index(k[0]), k[1])):
        stack, layer = key
        device = ours.weights[key].device
        vq, vk = (v.to(device) for v in valid[stack])
        w_ref = eager_weights.get(key)
        wd = float("nan") if w_ref is None else _max_diff(ours.weights[key], w_ref.to(ours.weights[key].device), vq, vk)
        od = float("nan")
        if key in ours.outputs and key in theirs.outputs:
            od = _max_diff(ours.outputs[key], theirs.outputs[key], vq, None)
        report.layers.append(LayerCheck(stack, layer, wd, od))
    return report


def _eager_weights(output: ModelOutput, enc_dec: bool) -> dict[tuple[str, int], torch.Tensor]:
    groups = (
        [("encoder", "encoder_attentions"), ("decoder", "decoder_attentions"), ("cross", "cross_attentions")]
        if enc_dec
        else [("self", "attentions")]
    )
    found = {}
    for stack, attr in groups:
        for layer, w in enumerate(getattr(output, attr, None) or ()):
            if w is not None:
                found[(stack, layer)] = w.detach().float()
    return found
