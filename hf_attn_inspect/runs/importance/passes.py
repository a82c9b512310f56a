"""Forward passes of the importance engine: the one entry into the capture path, batch copies, the units."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from ...capture.ablation import UnitKey
from ...capture.inspector import AttentionInspector
from ...capture.interface import OutputEdit, Probe, capture
from ...core.errors import CaptureError


@contextmanager
def _capturing(inspector: AttentionInspector, probe: Probe, edits: Sequence[OutputEdit] = (), *,
               check: bool = True) -> Iterator[object]:
    """Every forward pass of the importance engine runs in this block: ``inspector``'s model with ``probe``
    and ``edits`` in the capture path (gradients as the caller's ``torch.no_grad``/``enable_grad`` say);
    yields the capture state. With ``check``, a model whose attention never went through the capture path
    raises :class:`CaptureError` after the block."""
    model = inspector.model
    with capture(model, probe, edits=list(edits)) as state:
        yield state
    if check:
        _check_calls(state, model)


def _copies(copies_tokens: int | None, batch: int, tokens: int, device: torch.device) -> int:
    """Batch copies per pass: ``copies_tokens // (batch x tokens)``; by default 1 on the CPU (larger batches
    are slower there per sentence) and up to 16384 tokens per pass on accelerators."""
    if copies_tokens is None:
        copies_tokens = 0 if device.type == "cpu" else 16384
    return max(1, copies_tokens // max(1, batch * tokens))


def _model_inputs(inputs: dict[str, torch.Tensor], device: torch.device, model: torch.nn.Module) -> dict[str, object]:
    out: dict[str, object] = {k: v.to(device) for k, v in inputs.items() if k != "labels"}
    if getattr(model.config, "use_cache", None) is not None:
        out["use_cache"] = False
    return out


def _repeat(x: object, g: int, b: int) -> object:
    """``x`` with every tensor whose first dimension is the batch repeated ``g`` times (copy-major)."""
    if g == 1:
        return x
    if torch.is_tensor(x):
        return x.repeat(g, *([1] * (x.dim() - 1))) if x.dim() and x.shape[0] == b else x
    if isinstance(x, tuple):
        return type(x)(_repeat(v, g, b) for v in x) if not hasattr(x, "_fields") else type(x)(*(_repeat(v, g, b) for v in x))
    if isinstance(x, list):
        return [_repeat(v, g, b) for v in x]
    if isinstance(x, dict):
        return type(x)({k: _repeat(v, g, b) for k, v in x.items()})
    return x


def _check_calls(state: object, model: torch.nn.Module) -> None:
    if getattr(state, "calls", 0) == 0:
        raise CaptureError(f"{type(model).__name__} does not dispatch through transformers' attention interface, "
                           "so its heads cannot be ablated")


def _units(inspector: AttentionInspector) -> list[tuple[UnitKey, int]]:
    """Every attention layer ``((stack, layer), heads)`` in execution order (encoder before decoder, self before cross)."""
    out = []
    dims = inspector.dims()
    stacks = [s for s in ("self", "encoder", "decoder", "cross") if s in dims]
    for stack in stacks:
        n_layers, n_heads = dims[stack]
        out += [((stack, layer), n_heads) for layer in range(n_layers)]
    if "cross" in dims:  # decoder layer l runs self then cross attention before layer l + 1
        dec = [u for u in out if u[0][0] in ("decoder", "cross")]
        dec.sort(key=lambda u: (u[0][1], u[0][0] == "cross"))
        out = [u for u in out if u[0][0] not in ("decoder", "cross")] + dec
    return out
