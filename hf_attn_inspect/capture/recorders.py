"""Recorders: small pieces that each keep one kind of thing from every attention call of a run.

A run of :meth:`~hf_attn_inspect.capture.inspector.AttentionInspector.run` hands every attention call of the
model to one :class:`RecordingProbe`, which composes the run's recorders:

1. it builds one :class:`AttentionCall` (site, module, post-RoPE query/key, value, mask, scaling);
2. it computes the layer's output once: by the one recorder that computes attention itself (``computes``:
   streamed row statistics, row blocks of a long input, a fused kernel), else with the reference kernel
   when any recorder needs the weights, else with torch's fused attention (no weights);
3. it gives the call, now holding ``output`` (each head's output before the output projection) and
   ``weights`` (or None), to every other recorder's :meth:`Recorder.record`.

So a run that keeps weights, values and per-head contributions computes attention once, and a new measure
is a new recorder, not a new probe. Recorders of this module keep what any engine may ask for
(:class:`WeightsRecorder`); the value, head-output and contribution recorders live in
:mod:`hf_attn_inspect.capture.contributions`, the pooled one in :mod:`hf_attn_inspect.capture.pooled`, and the
engines' statistics recorders next to their engines.
"""

from __future__ import annotations

from contextlib import ExitStack, nullcontext
from typing import ContextManager, Sequence

import torch

from ..core.errors import CaptureError
from ..core.kernels import fast_attention_output, scaled_dot_product_attention_with_weights
from .interface import AttentionCall, Probe, Site

__all__ = ["AttentionCall", "Recorder", "RecordingProbe", "KeepingRecorder", "WeightsRecorder", "as_probe"]


class Recorder:
    """Keeps one kind of thing from every attention call of a run (see the module docstring).

    Subclasses set ``needs_weights`` when :meth:`record` reads ``call.weights``; a recorder that computes the
    layer itself overrides :meth:`compute` (at most one such recorder per run) and may name the mask
    ``implementation`` it needs (a registered name whose mask function builds, e.g., lazy masks). :meth:`finish`
    runs once after the forward pass (move results to the host, reduce pending device buffers).
    """

    #: True when :meth:`record` needs the full weights of every call it keeps.
    needs_weights: bool = False
    #: The registered attention/mask implementation this recorder needs (None: the eager masks).
    implementation: str | None = None

    @property
    def computes(self) -> bool:
        """True when this recorder computes the attention output itself (it overrides :meth:`compute`)."""
        return type(self).compute is not Recorder.compute

    def compute(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(output [batch, heads, T_q, head_dim], weights or None)`` for ``call``; only recorders that
        compute attention themselves override it, and their :meth:`record` is then not called on the same call."""
        raise NotImplementedError

    def record(self, call: AttentionCall) -> None:
        """Take what this recorder keeps from one computed call."""

    def finish(self) -> None:
        """Called once after the forward pass."""

    def attach(self) -> ContextManager[object]:
        """A context the run's forward pass happens in: a recorder that reads more than the attention calls (e.g.
        the residual stream, through forward hooks) installs and removes its hooks there; the base has none."""
        return nullcontext()


class RecordingProbe(Probe):
    """The one probe of a run: computes each attention call once and hands it to every recorder.

    ``recorders`` are the run's :class:`Recorder` objects; at most one may compute attention itself. Its
    ``implementation`` (when set) is the mask implementation of the run.
    """

    def __init__(self, recorders: Sequence[Recorder]) -> None:
        self.recorders = list(recorders)
        computing = [r for r in self.recorders if r.computes]
        if len(computing) > 1:
            names = ", ".join(type(r).__name__ for r in computing)
            raise CaptureError(f"one run can have one recorder that computes attention, got {names}")
        self.computing = computing[0] if computing else None
        self.others = [r for r in self.recorders if r is not self.computing]
        self.needs_weights = any(r.needs_weights for r in self.others)
        impl = {r.implementation for r in self.recorders if r.implementation}
        if len(impl) > 1:
            raise CaptureError(f"the recorders of one run need different mask implementations: {', '.join(sorted(impl))}")
        self.implementation = impl.pop() if impl else None

    def __repr__(self) -> str:
        return " + ".join(type(r).__name__ for r in self.recorders) or "RecordingProbe"

    def attend(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.computing is not None:
            call.output, call.weights = self.computing.compute(call)
            if call.weights is None and self.needs_weights:
                needing = ", ".join(type(r).__name__ for r in self.others if r.needs_weights)
                raise CaptureError(
                    f"{type(self.computing).__name__} computes attention without keeping its weights, which {needing} "
                    "needs; run them in separate runs, or keep the weights with the computing recorder's own options"
                )
        elif self.needs_weights:
            # the reference core of every run is this module's name (tests plant errors in it here)
            call.output, call.weights = scaled_dot_product_attention_with_weights(
                call.query, call.key, call.value, call.mask, scale=call.scaling, softcap=call.softcap
            )
        else:
            call.output = fast_attention_output(
                call.query, call.key, call.value, call.mask, scale=call.scaling, softcap=call.softcap
            )
        for recorder in self.others:
            recorder.record(call)
        return call.output, call.weights

    def record(self, site: Site, weights: torch.Tensor, *, causal: bool = False) -> None:
        """Eager fallback: the model's own weights of one layer go to every recorder (``call.causal`` says
        whether the stack is causal)."""
        call = AttentionCall(site, weights=weights, is_causal=causal)
        for recorder in self.recorders:
            recorder.record(call)

    def attached(self) -> ExitStack:
        """Every recorder's :meth:`Recorder.attach` context at once (the run's forward pass happens inside)."""
        stack = ExitStack()
        for recorder in self.recorders:
            stack.enter_context(recorder.attach())
        return stack

    def finish(self) -> None:
        for recorder in self.recorders:
            recorder.finish()


def as_probe(recorders: Recorder | Sequence[Recorder] | Probe) -> Probe:
    """The probe of a run: a :class:`Probe` as it is, else a :class:`RecordingProbe` of the recorder(s)."""
    if isinstance(recorders, Probe):
        return recorders
    if isinstance(recorders, Recorder):
        return RecordingProbe([recorders])
    return RecordingProbe(list(recorders))


class KeepingRecorder(Recorder):
    """A recorder that keeps float32 tensors of the chosen stacks, layers and heads, keyed ``[stack][layer]``.

    ``stacks``/``layers``/``heads`` of ``None`` keep all of them; ``device`` is where the kept tensors go
    (``None``: the model's, e.g. for a comparison on the GPU). ``kinds`` maps each kind of record a subclass
    keeps (``"weights"``, ``"values"``...) to the attribute holding its ``{stack: {layer: tensor}}``, which is
    how :class:`~hf_attn_inspect.capture.request.CaptureResult` collects them.
    """

    #: ``{kind: attribute}``: the ``{stack: {layer: tensor}}`` stores of this recorder.
    kinds: dict[str, str] = {}

    def __init__(
        self,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        *,
        stacks: Sequence[str] | None = None,
        device: str | torch.device | None = "cpu",
    ) -> None:
        self.layers = None if layers is None else set(layers)
        self.heads = None if heads is None else list(heads)
        self.stacks = None if stacks is None else set(stacks)
        self.device = device
        for attr in self.kinds.values():
            setattr(self, attr, {})

    def wants(self, site: Site) -> bool:
        """True when ``site``'s stack and layer are kept."""
        return (self.layers is None or site.layer in self.layers) and (self.stacks is None or site.stack in self.stacks)

    def pick_heads(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor [batch, heads, ...]`` restricted to the kept heads."""
        return tensor if self.heads is None else tensor[:, self.heads]

    def keep(self, kind: str, site: Site, tensor: torch.Tensor) -> None:
        """Store ``tensor`` (detached, float32, on ``device``) as ``site``'s record of ``kind``."""
        tensor = tensor.detach().float()
        if self.device is not None:
            tensor = tensor.to(self.device)
        getattr(self, self.kinds[kind]).setdefault(site.stack, {})[site.layer] = tensor


class WeightsRecorder(KeepingRecorder):
    """Keeps the weights of the chosen stacks, layers and heads as float32 CPU tensors.

    ``weights[stack][layer]`` is ``[batch, len(heads), T_q, T_k]`` (padding rows and columns included; the
    inspector cuts each text to its own tokens); ``stacks``/``layers``/``heads`` of ``None`` keep all of them.
    ``device`` keeps them on another device (``None``: the model's, e.g. for a comparison on the GPU).
    """

    needs_weights = True
    kinds = {"weights": "weights"}
    weights: dict[str, dict[int, torch.Tensor]]

    def record(self, call: AttentionCall) -> None:
        if self.wants(call.site):
            self.keep("weights", call.site, self.pick_heads(call.weights))
