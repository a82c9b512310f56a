"""Value zeroing (Mohebbi et al. 2023): how much each output token changes when one input token's values vanish.

For every key token ``j`` its value vector is set to 0 in every head of one layer, the whole layer (attention,
residual, norms, feed-forward) is re-run on the same inputs, and each output token ``i`` is scored by the cosine
distance between its new and its original layer output; rows are normalised to sum to 1. The re-runs are
batched: one run of the layer on a batch of ``T + 1`` copies of its input (copy ``j`` zeroes token ``j``, the
last copy zeroes nothing and gives the original), in chunks of copies when the input is long. They go through the
same registered attention function as every capture (:func:`~hf_attn_inspect.capture.interface.capture`), with
a recorder that computes attention with the zeroed values.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..core.kernels import fast_attention_output
from .interface import capture
from .mixing import LayoutRecorder, first_input
from .recorders import AttentionCall, Recorder, RecordingProbe

__all__ = ["ValueZeroingRecorder"]

#: Float32 elements of one chunk of layer inputs ``[copies, T, hidden]``.
_CHUNK = 1 << 23


class _Zeroing(Recorder):
    """Computes attention with token ``keys[c]``'s values zeroed in copy ``c`` of the batch (-1: none)."""

    def __init__(self, keys: torch.Tensor) -> None:
        self.keys = keys

    def compute(self, call: AttentionCall) -> tuple[torch.Tensor, None]:
        value = call.value.expand(len(self.keys), *call.value.shape[1:]).clone()
        copies = torch.nonzero(self.keys >= 0).flatten()
        value[copies, :, self.keys[copies].to(value.device)] = 0
        out = fast_attention_output(call.query, call.key, value, call.mask, scale=call.scaling, softcap=call.softcap)
        return out, None


def _pick(obj: Any, b: int, size: int) -> Any:
    """``obj`` (tensors, nested in tuples/lists/dicts) cut to batch row ``b`` where its first axis is the batch."""
    if isinstance(obj, torch.Tensor):
        return obj[b : b + 1] if size > 1 and obj.dim() > 0 and obj.shape[0] == size else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_pick(o, b, size) for o in obj)
    if isinstance(obj, dict):
        return {k: _pick(v, b, size) for k, v in obj.items()}
    return obj


def _output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


class ValueZeroingRecorder(LayoutRecorder):
    """Keeps ``value_zeroing[stack][layer]``: ``[batch, 1, T_q, T_k]`` float32, row ``i`` the normalised cosine
    distances of token ``i``'s layer output when each key token's values are zeroed (module docstring).

    The layers' inputs are read by forward pre-hooks while the run lasts (:meth:`attach`); the re-runs happen in
    :meth:`finish`, after the model's forward pass, ``T_k + 1`` layer runs per layer and text, batched.
    """

    kinds = {"value_zeroing": "zeroing"}
    hooked = "block"
    zeroing: dict[str, dict[int, torch.Tensor]]

    def __init__(self, model: torch.nn.Module, layers: Sequence[int] | None = None, **where: object) -> None:
        super().__init__(model, layers, **where)  # stacks=, device= as in LayoutRecorder
        self._sites: list[tuple[Any, Any, tuple]] = []

    def record(self, call: AttentionCall) -> None:
        if self.wants(call.site):
            layout, inputs = self.inputs(call)
            self._sites.append((call.site, layout.block, inputs))

    def finish(self) -> None:
        with torch.no_grad():
            for site, block, (args, kwargs) in self._sites:
                self.keep("value_zeroing", site, self._layer(block, args, kwargs))
        self._sites.clear()

    def _layer(self, block: torch.nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        hidden = first_input(args, kwargs)
        size, t, width = hidden.shape
        out = torch.zeros(size, 1, t, t, device=hidden.device)
        step = max(1, _CHUNK // max(1, t * width))
        for b in range(size):
            a, kw = _pick(args, b, size), _pick(kwargs, b, size)
            keys = torch.cat([torch.arange(t), torch.tensor([-1])])
            outputs = []
            for start in range(0, t + 1, step):
                chunk = keys[start : start + step]
                copies = first_input(a, kw).expand(len(chunk), t, width)
                call_args = (copies, *a[1:]) if a else a
                call_kwargs = kw if a else {**kw, "hidden_states": copies}
                with capture(self.model, RecordingProbe([_Zeroing(chunk)])):
                    outputs.append(_output(block(*call_args, **call_kwargs)).float())
            outputs = torch.cat(outputs)  # [t + 1, t, hidden]
            distance = 1 - torch.nn.functional.cosine_similarity(outputs[:t], outputs[t:], dim=-1)  # [key, query]
            distance = distance.clamp_min(0).t()
            out[b, 0] = distance / distance.sum(-1, keepdim=True).clamp_min(1e-12)
        return out
