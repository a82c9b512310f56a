"""Gradient head importance (Michel et al. 2019): ``|dL/d xi_h|`` of a gate on every head's output."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from ...capture.ablation import HeadScale, UnitKey
from ...capture.inspector import AttentionInspector
from ...capture.interface import OutputEdit
from ...capture.recorders import Recorder
from .objectives import Objective
from .passes import forward_pass, model_inputs


@contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """Within the block no parameter requires grad (autograd records only the gates' paths); restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def gradient_batch(
    inspector: AttentionInspector,
    inputs: dict[str, torch.Tensor],
    targets: object,
    rows: object,
    obj: Objective,
    units: list[tuple[UnitKey, int]],
    stats: Recorder,
    edits: Sequence[OutputEdit],
) -> torch.Tensor:
    """``[B, units, heads, metrics]``: one pass with a gate on every head (``stats`` records the pattern
    statistics) and one backward pass; the importance is ``|dL/d gate|`` per sentence."""
    b = next(iter(inputs.values())).shape[0]
    h_max = max(h for _, h in units)
    gates = {u: torch.ones(b, h, device=inspector.device, requires_grad=True) for u, h in units}
    with torch.enable_grad(), _frozen(inspector.model):
        output = forward_pass(inspector, model_inputs(inputs, inspector.device), [stats], [*edits, HeadScale(gates)], grad=True)
        if obj.needs_reference:
            with torch.no_grad():
                targets = obj.set_reference(output, targets)
        base = obj.loss(output, targets).detach().float().cpu()
        g = obj.grad_values(output, targets, torch.tensor(rows))
        grads = torch.autograd.grad(g.sum(), [gates[u] for u, _ in units], allow_unused=True)
    values = torch.zeros(b, len(units), h_max, 2)
    for i, ((u, h), gr) in enumerate(zip(units, grads)):
        if gr is not None:
            values[:, i, :h, 0] = gr.detach().abs().float().cpu() * obj.grad_scale
    values[..., 1] = base[:, None, None]
    return values
