"""The one capture path: our attention function, registered with transformers, feeding a probe.

transformers 5 dispatches every attention layer through ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``
and builds its masks through ``ALL_MASK_ATTENTION_FUNCTIONS`` under the same name. We register one
function, :func:`_attention_function`, under :data:`ATTENTION_NAME` together with ``eager_mask`` (without
the mask function the model silently passes ``attention_mask=None``: padding and causal masks vanish).
While a capture runs, every attention layer calls it with its post-RoPE query and key; it hands them to
the active :class:`Probe` (a run's :class:`~hf_attn_inspect.capture.recorders.RecordingProbe`, which computes
the layer once and gives it to the run's recorders). Everything else in the package (inspect, verify,
analysis, batch, compare, importance, the HTML explorer) runs through
:meth:`~hf_attn_inspect.capture.inspector.AttentionInspector.run` and reads what its recorders kept, so there
is exactly one way attention is obtained.

The model's own attention implementation is swapped only for the duration of a call and restored
afterwards, also on error.
"""

from __future__ import annotations

import re
import sys
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, eager_mask

from ..core.kernels import scaled_dot_product_attention_with_weights
from ..core.errors import CaptureError
from ..core.stacks import CROSS, DECODER, ENCODER, SELF

__all__ = [
    "ATTENTION_NAME",
    "Site",
    "AttentionCall",
    "Probe",
    "OutputEdit",
    "capture",
    "attention_implementation",
    "use_implementation",
    "register_implementation",
    "passthrough_name",
    "original_attention_function",
]

ATTENTION_NAME = "hf_attn_inspect"
_PASSTHROUGH_PREFIX = "hf_attn_inspect_passthrough_"


@dataclass(frozen=True)
class Site:
    """Where an attention call happened: ``stack`` is ``self`` (encoder-only or decoder-only models),
    ``encoder``, ``decoder`` or ``cross`` (encoder-decoder models); ``layer`` is the 0-based layer index."""

    stack: str
    layer: int
    name: str = ""


@dataclass
class AttentionCall:
    """One attention call as the probe and its recorders see it.

    ``query`` is ``[batch, heads, T_q, head_dim]`` (after RoPE), ``key``/``value`` ``[batch, kv_heads, T_k,
    head_dim]`` (``kv_heads`` may be fewer than ``heads``: grouped-query attention; repeat them with
    :func:`~hf_attn_inspect.core.kernels.repeat_kv`), ``mask`` the model's mask (an additive float ``[batch, 1,
    T_q, T_k]`` tensor from ``eager_mask``, a lazy mask for the pooled and streamed paths, or None). After the
    probe computed the layer, ``output`` is ``[batch, heads, T_q, head_dim]`` (each head's output before the
    output projection, padding rows included) and ``weights`` the float32 ``[batch, heads, T_q, T_k]`` weights
    when some recorder needed them, else None. On the eager fallback (models that do not dispatch through
    transformers' attention interface) only ``site``, ``weights`` and ``is_causal`` are set and ``module`` is None.
    """

    site: Site
    module: torch.nn.Module | None = None
    query: torch.Tensor | None = None
    key: torch.Tensor | None = None
    value: torch.Tensor | None = None
    mask: Any = None
    scaling: float | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    output: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    is_causal: bool | None = None

    @property
    def softcap(self) -> float | None:
        """The model's logit soft-capping (Gemma 2), None without it."""
        return self.kwargs.get("softcap")

    @property
    def causal(self) -> bool:
        """True when the calling module is causal (decoder self-attention); on the eager fallback, where
        there is no module, what the inspector knows of the model (``is_causal``)."""
        if self.is_causal is not None:
            return self.is_causal
        return bool(getattr(self.module, "is_causal", False))


class Probe:
    """Receives every attention call of a forward pass and returns the layer's output: the interface between
    the registered attention function and a run.

    A run's probe is a :class:`~hf_attn_inspect.capture.recorders.RecordingProbe` composing the run's
    recorders: to keep something new, write a :class:`~hf_attn_inspect.capture.recorders.Recorder`, not a
    probe. The base class computes the output and weights with the reference core and passes the weights to
    :meth:`record` (the eager fallback calls :meth:`record` directly). :meth:`attend` receives the call as an
    :class:`AttentionCall`, whose ``mask`` is the model's additive float mask ``[batch, 1, query, key]``
    built by ``eager_mask`` (0 = attend, dtype minimum = masked) or None.
    """

    def attend(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(output [batch, heads, query, head_dim], weights or None)`` for one attention call."""
        output, weights = scaled_dot_product_attention_with_weights(
            call.query, call.key, call.value, call.mask, scale=call.scaling, softcap=call.softcap
        )
        self.record(call.site, weights)
        return output, weights

    def __repr__(self) -> str:
        return type(self).__name__

    def record(self, site: Site, weights: torch.Tensor, *, causal: bool = False) -> None:
        """Receive one call's weights ``[batch, heads, query, key]`` (float32, padding still included);
        ``causal``: the stack is causal (row ``i`` sees keys ``0..i``)."""

    def finish(self) -> None:
        """Called once after the forward pass: move results to the host, wait for asynchronous copies."""

    def attached(self) -> Any:
        """The context the run's forward pass happens in (a recording probe's recorders install hooks there)."""
        return nullcontext()


class OutputEdit:
    """Changes the per-head attention output of chosen layers (ablation, gates) in every forward pass it is
    active for: :meth:`apply` receives ``output [batch, heads, query, head_dim]`` (each head's output before
    the output projection) and returns the tensor the layer goes on with. Edits are pushed with
    :func:`capture` (``edits=``) and stay active in captures nested inside it on the same model, so an
    inspector call inside ``ablate(...)`` sees the ablated model. See :mod:`hf_attn_inspect.capture.ablation`.
    """

    def apply(self, site: Site, output: torch.Tensor) -> torch.Tensor:
        """The edited output of one attention call (the base class returns it unchanged)."""
        return output


class _CaptureState:
    """Per-call state read by the registered function: the probe and the module -> site map."""

    def __init__(self, model: torch.nn.Module, probe: Probe, edits: list[OutputEdit] | None = None) -> None:
        self.probe = probe
        self.model = model
        self.edits: list[OutputEdit] = list(edits or [])
        self.calls = 0
        self.causal_stacks: set[str] = set()
        self._names = {id(m): n for n, m in model.named_modules()}
        self._enc_dec = bool(getattr(model.config, "is_encoder_decoder", False))
        self._sites: dict[int, Site] = {}
        self.site: Site | None = None  # the latest call's site (named in out-of-memory messages)

    def site_of(self, module: torch.nn.Module) -> Site:
        site = self._sites.get(id(module))
        if site is None:
            name = self._names.get(id(module), "")
            site = Site(_stack_of(name, self._enc_dec), _layer_of(name, module), name)
            self._sites[id(module)] = site
        self.site = site
        if getattr(module, "is_causal", False):
            self.causal_stacks.add(site.stack)
        return site


_CROSS = re.compile(r"(encoder_attn|encdecattention|crossattention|cross_attn|cross_attention)", re.I)


def _stack_of(name: str, enc_dec: bool) -> str:
    if not enc_dec:
        return SELF
    if _CROSS.search(name):
        return CROSS
    return DECODER if re.search(r"(^|\.)decoder(\.|$)", name) else ENCODER


def _layer_of(name: str, module: torch.nn.Module) -> int:
    match = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
    if match:
        return int(match.group(1))
    layer = getattr(module, "layer_idx", None)
    if isinstance(layer, int):
        return layer
    raise CaptureError(f"cannot tell which layer attention module '{name}' belongs to")


_local = threading.local()


def _active() -> _CaptureState | None:
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else None


def _attention_function(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The attention function registered with transformers; delegates to the active probe."""
    if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
        raise CaptureError("attention with learned sink logits (s_aux) is not supported yet")
    attention_mask = _with_position_bias(attention_mask, kwargs.pop("position_bias", None), module, query, key)
    state = _active()
    if state is None:  # the model was left pointing at us: behave like exact eager attention
        output, weights = scaled_dot_product_attention_with_weights(
            query, key, value, attention_mask, scale=scaling, softcap=kwargs.get("softcap")
        )
        return output.transpose(1, 2).contiguous(), weights
    state.calls += 1
    site = state.site_of(module)
    call = AttentionCall(site, module, query, key, value, attention_mask, scaling, {"dropout": dropout, **kwargs})
    output, weights = state.probe.attend(call)
    for edit in state.edits:
        output = edit.apply(site, output)
    return output.transpose(1, 2).contiguous(), weights


def _with_position_bias(
    mask: Any, bias: torch.Tensor | None, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor
) -> Any:
    """The mask as one additive float tensor with T5's relative position bias ``[1 or batch, heads, T_q, T_k]``
    folded in, as T5's eager code adds both to the scores (unmasked entries get exactly the bias, masked ones the
    dtype's minimum). A boolean keep mask (sdpa's) masks where it is False; no mask on a causal module (sdpa's
    causal skip) masks keys after the query. Lazy masks (pooled and streamed capture) cannot carry a bias:
    :class:`CaptureError`."""
    if bias is None:
        return mask
    if mask is not None and not isinstance(mask, torch.Tensor):
        raise CaptureError("models with a relative position bias (T5) need full-weights capture, which does not fit "
                           "here: raise the memory budget (max_memory= / --max-memory) or shorten the input; the "
                           "pooled and streamed paths do not support a position bias yet")
    low = torch.finfo(bias.dtype).min
    if mask is None:
        t, s = query.shape[-2], key.shape[-2]
        if not getattr(module, "is_causal", False) or t == 1:
            return bias
        keep = torch.arange(t, device=bias.device)[:, None] >= torch.arange(s, device=bias.device)[None, :]
        return torch.where(keep, bias, low)
    if mask.dtype == torch.bool:
        return torch.where(mask.to(bias.device), bias, low)
    return mask + bias


AttentionInterface.register(ATTENTION_NAME, _attention_function)
AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


def register_implementation(name: str, mask_function: Callable[..., Any]) -> str:
    """Register our attention function under ``name`` with ``mask_function`` as its mask builder; returns ``name``.

    A probe whose ``implementation`` attribute is ``name`` then receives the masks that ``mask_function``
    builds (e.g. a lazy mask that evaluates tiles on demand instead of a ``[B, 1, T, T]`` tensor).
    Registering the same name again replaces the mask function.
    """
    AttentionInterface.register(name, _attention_function)
    AttentionMaskInterface.register(name, mask_function)
    return name


def passthrough_name(implementation: str) -> str:
    """Register (once) and return a name that routes calls through our probe but builds the masks of
    ``implementation`` (e.g. ``sdpa``), so a probe can call the model's own attention function."""
    name = _PASSTHROUGH_PREFIX + implementation
    if name not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        mask_fn = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(implementation, eager_mask)
        register_implementation(name, mask_fn)
    return name


def original_attention_function(implementation: str, module: torch.nn.Module) -> Callable[..., Any]:
    """The function transformers would call for ``implementation`` in ``module`` (its own eager code for ``eager``)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if implementation in ALL_ATTENTION_FUNCTIONS._global_mapping:
        return ALL_ATTENTION_FUNCTIONS._global_mapping[implementation]
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if eager is None:
        raise CaptureError(f"cannot find the '{implementation}' attention function of {type(module).__name__}")
    return eager


def _configs(model: torch.nn.Module) -> list[Any]:
    seen: dict[int, Any] = {}
    todo = [getattr(m, "config", None) for m in model.modules()]
    while todo:
        cfg = todo.pop()
        if cfg is None or id(cfg) in seen or not hasattr(cfg, "_attn_implementation_internal"):
            continue
        seen[id(cfg)] = cfg
        todo.extend(getattr(cfg, key, None) for key in getattr(cfg, "sub_configs", {}) or {})
    return list(seen.values())


def attention_implementation(model: torch.nn.Module) -> str | None:
    """The attention implementation ``model`` is set to use (``config._attn_implementation``)."""
    return getattr(model.config, "_attn_implementation", None)


@contextmanager
def use_implementation(model: torch.nn.Module, implementation: str) -> Iterator[None]:
    """Temporarily set every config of ``model`` to ``implementation``; restores the previous values."""
    configs = _configs(model)
    saved = [(cfg, cfg._attn_implementation_internal) for cfg in configs]
    try:
        for cfg in configs:
            cfg._attn_implementation_internal = implementation
        yield
    finally:
        for cfg, value in saved:
            cfg._attn_implementation_internal = value


@contextmanager
def capture(
    model: torch.nn.Module,
    probe: Probe,
    implementation: str | None = None,
    *,
    edits: Sequence[OutputEdit] = (),
) -> Iterator[_CaptureState]:
    """Within the block, every attention call of ``model`` goes to ``probe``; yields the capture state.

    ``implementation`` is the registered name the model is switched to: by default the probe's
    ``implementation`` attribute when it has one (e.g. the streaming probe, whose mask function builds
    no ``[T, T]`` mask), else :data:`ATTENTION_NAME` (eager masks).

    ``state.calls`` counts the attention calls seen (0 means the model does not dispatch through
    transformers' attention interface), ``state.causal_stacks`` names the stacks whose modules are causal.
    ``edits`` (:class:`OutputEdit`) change the heads' outputs after the probe computed them; the edits of
    an enclosing capture of the same model apply first.
    """
    implementation = implementation or getattr(probe, "implementation", None) or ATTENTION_NAME
    outer = _active()
    inherited = outer.edits if outer is not None and outer.model is model else []
    state = _CaptureState(model, probe, [*inherited, *edits])
    if not hasattr(_local, "stack"):
        _local.stack = []
    _local.stack.append(state)
    try:
        with use_implementation(model, implementation):
            yield state
    finally:
        _local.stack.pop()
