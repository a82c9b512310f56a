"""Head ablation and head gates in the capture path: remove or scale chosen heads in any forward pass.

Our registered attention function computes every head's output ``[batch, heads, query, head_dim]`` before
the output projection, in every architecture that dispatches through transformers' attention interface
(encoder, decoder, encoder-decoder self and cross attention, grouped-query attention). An
:class:`~hf_attn_inspect.capture.interface.OutputEdit` changes that tensor, so ablating a head is exact
and needs no model-specific hook (transformers 5 removed ``head_mask`` and ``prune_heads``):

- :func:`ablate` is a context manager: every forward pass of the model inside it, and every inspector
  call, runs with the chosen heads zeroed (``how="zero"``) or replaced by their mean output over a
  reference set (``how="mean"``, :func:`mean_head_outputs`). The model's weights are never touched and its
  attention implementation is restored on exit.
- :class:`HeadScale` is the edit behind it: per layer a ``[groups, heads]`` factor ``s`` and an optional
  ``[heads, head_dim]`` fill ``m``; the output becomes ``s * output + (1 - s) * m``. ``groups`` equal
  copies of a batch (copy-major) get different factors, so one forward pass ablates a different head in
  each copy; a factor that requires grad is Michel et al.'s (2019) gate ``xi_h``.
- :class:`SiteRecorder` remembers where each attention layer sits (its output comes from torch's fused
  attention, as in every run without a weights recorder); :class:`MeanOutputRecorder` accumulates each
  head's mean output. Both are :class:`~hf_attn_inspect.capture.recorders.Recorder` objects for
  :meth:`AttentionInspector.run <hf_attn_inspect.capture.inspector.AttentionInspector.run>`.

Heads are named ``(layer, head)`` for single-stack models or ``(stack, layer, head)`` (stacks as in
:class:`~hf_attn_inspect.capture.interface.Site`), or by strings ``"3.5"`` / ``"decoder.1.2"``
(:func:`parse_heads`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence, Union

import torch

from ..core.errors import CaptureError, InputError
from ..core.stacks import DECODER, ENCODER, SELF, STACKS, query_stack
from ..core.masks import all_valid
from .inputs import Batch
from .inspector import AttentionInspector
from .interface import OutputEdit, Probe, Site, capture
from .recorders import AttentionCall, Recorder

__all__ = [
    "ABLATIONS",
    "HeadKey",
    "HeadSpec",
    "UnitKey",
    "HeadScale",
    "SiteRecorder",
    "MeanOutputRecorder",
    "ablate",
    "ablation_edit",
    "mean_head_outputs",
    "query_masks",
    "parse_heads",
    "resolve_heads",
]

#: How :func:`ablate` removes a head: ``zero`` (its output becomes 0) or ``mean`` (its mean output).
ABLATIONS = ("zero", "mean")

#: One head: ``(stack, layer, head)``, 0-based.
HeadKey = tuple[str, int, int]
#: One attention layer: ``(stack, layer)``.
UnitKey = tuple[str, int]
#: What the ablation functions accept as a set of heads: ``"3.5,0.1"``, ``[(3, 5)]``, ``[("decoder", 1, 2)]``.
HeadSpec = Union[str, Sequence[Union[str, tuple[int, int], tuple[str, int, int], HeadKey]]]


def parse_heads(spec: str) -> list[tuple[str | None, int, int]]:
    """Parse ``"L.H,L.H"`` (or ``"stack.L.H"``, e.g. ``"cross.1.0"``) into ``(stack or None, layer, head)``.

    Raises :class:`InputError` with the expected form for anything else.
    """
    out: list[tuple[str | None, int, int]] = []
    for part in [p.strip() for p in str(spec).split(",") if p.strip()]:
        bits = part.split(".")
        try:
            if len(bits) == 2:
                out.append((None, int(bits[0]), int(bits[1])))
            elif len(bits) == 3:
                out.append((bits[0], int(bits[1]), int(bits[2])))
            else:
                raise ValueError
        except ValueError:
            raise InputError(f"cannot read head {part!r}; write heads as LAYER.HEAD (e.g. 3.5,0.1) or STACK.LAYER.HEAD") from None
    if not out:
        raise InputError("no head given; write heads as LAYER.HEAD,LAYER.HEAD (e.g. 3.5,0.1)")
    return out


def resolve_heads(inspector: AttentionInspector, heads: HeadSpec) -> list[HeadKey]:
    """The heads of ``heads`` as checked ``(stack, layer, head)`` keys of ``inspector``'s model, in the given order
    without repeats.

    A head without a stack belongs to the model's main stack (``self``, or ``encoder`` for encoder-decoder
    models). Raises :class:`InputError` naming the valid ranges for an unknown stack, layer or head.
    """
    dims = inspector.dims()
    main = next(iter(dims))
    items: list[tuple[str | None, int, int]] = []
    if isinstance(heads, str):
        items = parse_heads(heads)
    else:
        for h in heads:
            if isinstance(h, str):
                items += parse_heads(h)
            elif isinstance(h, (tuple, list)) and len(h) == 2:
                items.append((None, int(h[0]), int(h[1])))
            elif isinstance(h, (tuple, list)) and len(h) == 3:
                items.append((str(h[0]), int(h[1]), int(h[2])))
            else:
                raise InputError(f"cannot read head {h!r}; give (layer, head), (stack, layer, head) or 'L.H'")
    out: list[HeadKey] = []
    for stack, layer, head in items:
        stack = stack or main
        if stack not in dims:
            raise InputError(f"unknown stack {stack!r}; this model has {', '.join(dims)}")
        n_layers, n_heads = dims[stack]
        if not 0 <= layer < n_layers or not 0 <= head < n_heads:
            raise InputError(
                f"head {layer}.{head} does not exist: layers are 0..{n_layers - 1} and heads 0..{n_heads - 1}"
            )
        key = (stack, layer, head)
        if key not in out:
            out.append(key)
    return out


class SiteRecorder(Recorder):
    """Remembers the :class:`Site` of every attention call of a run (calls the model dispatched; not the
    eager fallback): ``sites`` maps ``(stack, layer)`` to it. Keeps nothing else, so the run computes each
    layer with torch's fused attention (no weights)."""

    def __init__(self) -> None:
        self.sites: dict[UnitKey, Site] = {}

    def record(self, call: AttentionCall) -> None:
        if call.module is not None:
            self.sites[(call.site.stack, call.site.layer)] = call.site


class HeadScale(OutputEdit):
    """Scales chosen heads' outputs: ``out = s * output + (1 - s) * fill`` per head, per layer.

    ``scale[(stack, layer)]`` is ``[groups, heads]``: the batch is ``groups`` equal-sized consecutive blocks
    (copy-major; ``groups == batch`` gives every sentence its own factor), and block ``g`` uses row ``g``.
    ``fill[(stack, layer)]`` (optional, ``[heads, head_dim]``) is what a factor of 0 puts in place of the
    output (default 0). A factor of 0 ablates the head exactly (``0 * x`` is 0, ``1 * x`` is ``x``);
    a factor that requires grad is a differentiable gate. Layers not in ``scale`` pass unchanged.
    """

    def __init__(self, scale: Mapping[UnitKey, torch.Tensor], fill: Mapping[UnitKey, torch.Tensor] | None = None) -> None:
        self.scale = dict(scale)
        self.fill = dict(fill or {})

    def apply(self, site: Site, output: torch.Tensor) -> torch.Tensor:
        s = self.scale.get((site.stack, site.layer))
        if s is None:
            return output
        b, h, t, d = output.shape
        g = s.shape[0]
        if s.shape[1] != h or b % g:
            raise CaptureError(
                f"head scale of layer {site.layer} ({site.stack}) is {tuple(s.shape)}, which does not fit an output "
                f"of {b} sentences x {h} heads"
            )
        s = s.to(output.device, output.dtype).view(g, 1, h, 1, 1)
        x = output.reshape(g, b // g, h, t, d)
        out = x * s
        m = self.fill.get((site.stack, site.layer))
        if m is not None:
            out = out + (1 - s) * m.to(output.device, output.dtype).view(1, 1, h, 1, d)
        return out.reshape(b, h, t, d)


class MeanOutputRecorder(Recorder):
    """Sums each head's output over the real query tokens of every run it records (for mean ablation).

    ``query_valid`` maps stacks to boolean ``[batch, T]`` masks of real query tokens of the current batch
    (``self``/``encoder``: the input, ``decoder``/``cross``: the decoder input; padding queries never count;
    :func:`query_masks`); set it anew before each run to accumulate over batches. :meth:`means` returns
    ``{(stack, layer): [heads, head_dim]}``, the average over all counted tokens (float32). The heads' outputs
    are those before the output projection and before any edit; the eager fallback gives none.
    """

    def __init__(self, query_valid: Mapping[str, torch.Tensor] | None = None) -> None:
        self.query_valid = dict(query_valid or {})
        self.sums: dict[UnitKey, torch.Tensor] = {}
        self.counts: dict[UnitKey, int] = {}

    def record(self, call: AttentionCall) -> None:
        out = call.output
        if out is None:  # eager fallback: no per-head outputs
            return
        valid = self.query_valid.get(call.site.stack)
        if valid is None:
            valid = all_valid(out.shape[0], out.shape[2])
        w = valid.to(out.device, torch.float64)[:, None, :, None]  # [B, 1, T, 1]
        total = (out.double() * w).sum((0, 2)).cpu()
        k = (call.site.stack, call.site.layer)
        self.sums[k] = self.sums.get(k, 0) + total
        self.counts[k] = self.counts.get(k, 0) + int(valid.sum())

    def means(self) -> dict[UnitKey, torch.Tensor]:
        """``{(stack, layer): [heads, head_dim]}`` mean output per head over the counted query tokens."""
        return {k: (v / max(self.counts[k], 1)).float() for k, v in self.sums.items()}


def query_masks(batch: Batch) -> dict[str, torch.Tensor]:
    """Boolean ``[batch, T]`` real-query masks per stack of ``batch`` (``cross`` queries are decoder tokens)."""
    sides = {SELF: batch.valid, ENCODER: batch.valid}
    if batch.has_decoder:
        sides[DECODER] = batch.masks(DECODER).valid
    return {stack: sides[query_stack(stack)] for stack in STACKS if query_stack(stack) in sides}


def mean_head_outputs(
    inspector: AttentionInspector,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int | None = None,
) -> dict[UnitKey, torch.Tensor]:
    """Each head's mean output over ``texts``: ``{(stack, layer): [heads, head_dim]}`` (float32, CPU).

    The output is the head's attention output before the output projection, averaged over every real
    token of every text (token-weighted; padding never counts). This is the fill of mean ablation.
    """
    texts = list(texts)
    if not texts:
        raise InputError("mean ablation needs at least one reference text")
    recorder = MeanOutputRecorder()
    for i in range(0, len(texts), batch_size):
        batch = inspector.encode(texts[i:i + batch_size], max_length=max_length)
        recorder.query_valid = query_masks(batch)
        inspector.run(batch, recorder)
    if not recorder.sums:
        raise CaptureError(f"{type(inspector.model).__name__} does not dispatch through the attention interface; heads cannot be ablated")
    return recorder.means()


def ablation_edit(
    inspector: AttentionInspector,
    heads: HeadSpec,
    how: str = "zero",
    *,
    means: Mapping[UnitKey, torch.Tensor] | None = None,
) -> HeadScale:
    """The :class:`HeadScale` that removes ``heads`` (one group): factor 0 on them, 1 elsewhere; ``how="mean"``
    fills them with ``means`` (:func:`mean_head_outputs`)."""
    if how not in ABLATIONS:
        raise InputError(f"unknown ablation {how!r}; choose one of {', '.join(ABLATIONS)}")
    keys = resolve_heads(inspector, heads)
    dims = inspector.dims()
    scale: dict[UnitKey, torch.Tensor] = {}
    for stack, layer, head in keys:
        s = scale.setdefault((stack, layer), torch.ones(1, dims[stack][1]))
        s[0, head] = 0.0
    fill: dict[UnitKey, torch.Tensor] = {}
    if how == "mean":
        if means is None:
            raise InputError("mean ablation needs the heads' mean outputs: pass means=mean_head_outputs(...) or reference=texts")
        missing = [k for k in scale if k not in means]
        if missing:
            raise InputError(f"no mean output for layer {missing[0][1]} ({missing[0][0]}); compute means on this model")
        fill = {k: means[k] for k in scale}
    return HeadScale(scale, fill)


@contextmanager
def ablate(
    inspector: AttentionInspector,
    heads: HeadSpec,
    how: str = "zero",
    *,
    means: Mapping[UnitKey, torch.Tensor] | None = None,
    reference: Sequence[str] | None = None,
) -> Iterator[HeadScale]:
    """Within the block, ``heads`` are removed from every forward pass of ``inspector.model``.

    ``how="zero"`` sets each chosen head's output (before the output projection) to 0; ``how="mean"``
    replaces it by the head's mean output over a reference set: ``means`` from :func:`mean_head_outputs`,
    or ``reference`` texts to compute them from. Plain ``model(**inputs)`` calls and inspector calls
    (``inspector(text)``, ``inspector.run``) inside the block all see the ablated model; attention is
    computed by the exact reference kernel. Nothing of the model changes: on exit its attention
    implementation is restored and its weights were never touched. Yields the :class:`HeadScale` edit.
    """
    if how == "mean" and means is None and reference is not None:
        means = mean_head_outputs(inspector, reference)
    edit = ablation_edit(inspector, heads, how, means=means)
    with capture(inspector.model, Probe(), edits=[edit]):
        yield edit
