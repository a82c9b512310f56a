"""Forward passes of the importance engine (each one an :meth:`AttentionInspector.run`), batch copies, the units."""

from __future__ import annotations

from typing import Sequence

import torch
from transformers.utils import ModelOutput

from ...capture.ablation import UnitKey
from ...capture.inputs import Batch
from ...capture.inspector import AttentionInspector
from ...capture.interface import OutputEdit
from ...capture.recorders import Recorder
from ...core.stacks import CROSS, DECODER, STACKS, query_stack


def forward_pass(inspector: AttentionInspector, inputs: dict[str, torch.Tensor], recorders: Sequence[Recorder] = (),
             edits: Sequence[OutputEdit] = (), *, grad: bool = False) -> ModelOutput:
    """Every forward pass of the importance engine: ``inspector``'s model on ``inputs`` (:func:`model_inputs`)
    through :meth:`AttentionInspector.run` with ``recorders``, ``edits`` and, with ``grad``, gradients on; returns
    the model output. A model whose attention does not go through the capture path raises
    :class:`~hf_attn_inspect.core.errors.CaptureError` there as soon as a pass has edits."""
    return inspector.run(Batch(inputs=dict(inputs)), list(recorders), grad=grad, edits=edits)


def copies_per_pass(copies_tokens: int | None, batch: int, tokens: int, device: torch.device) -> int:
    """Batch copies per pass: ``copies_tokens // (batch x tokens)``; by default 1 on the CPU (larger batches
    are slower there per sentence) and up to 16384 tokens per pass on accelerators."""
    if copies_tokens is None:
        copies_tokens = 0 if device.type == "cpu" else 16384
    return max(1, copies_tokens // max(1, batch * tokens))


def model_inputs(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """``inputs`` on ``device`` without ``labels`` (the model gets no labels; the objectives read them)."""
    return {k: v.to(device) for k, v in inputs.items() if k != "labels"}


def repeat_rows(x: object, g: int, b: int) -> object:
    """``x`` with every tensor whose first dimension is the batch repeated ``g`` times (copy-major)."""
    if g == 1:
        return x
    if torch.is_tensor(x):
        return x.repeat(g, *([1] * (x.dim() - 1))) if x.dim() and x.shape[0] == b else x
    if isinstance(x, tuple):
        return type(x)(repeat_rows(v, g, b) for v in x) if not hasattr(x, "_fields") else type(x)(*(repeat_rows(v, g, b) for v in x))
    if isinstance(x, list):
        return [repeat_rows(v, g, b) for v in x]
    if isinstance(x, dict):
        return type(x)({k: repeat_rows(v, g, b) for k, v in x.items()})
    return x


def attention_units(inspector: AttentionInspector) -> list[tuple[UnitKey, int]]:
    """Every attention layer ``((stack, layer), heads)`` in execution order (encoder before decoder, self before cross)."""
    out = []
    dims = inspector.dims()
    stacks = [s for s in STACKS if s in dims]
    for stack in stacks:
        n_layers, n_heads = dims[stack]
        out += [((stack, layer), n_heads) for layer in range(n_layers)]
    if CROSS in dims:  # decoder layer l runs self then cross attention before layer l + 1
        dec = [u for u in out if query_stack(u[0][0]) == DECODER]
        dec.sort(key=lambda u: (u[0][1], u[0][0] == CROSS))
        out = [u for u in out if query_stack(u[0][0]) != DECODER] + dec
    return out
