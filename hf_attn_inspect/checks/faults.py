"""Five ways to break attention, planted on a copy of a model, to show (and test) that :func:`~hf_attn_inspect.checks.diagnose.diagnose` catches each.

Faults are planted either by patching a deep copy of the model (its weights or its attention modules'
``scaling``), or through a :class:`~hf_attn_inspect.checks.diagnose.DiagnosticRecorder` subclass that changes what
the capture path computes (a buggy attention function). The original model is never modified and
there is no second way of computing attention: every fault goes through the one capture path.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..capture.inspector import AttentionInspector
from ..capture.recorders import AttentionCall
from ..core.errors import InputError
from .diagnose import CHECKS, DiagnosticRecorder, diagnose
from .findings import Report

__all__ = ["Fault", "FAULTS", "plant_fault", "FullyMaskedRowRecorder", "DroppedMaskRecorder", "break_and_diagnose", "caught_table", "all_caught"]


class FullyMaskedRowRecorder(DiagnosticRecorder):
    """A buggy mask: query row 1 of every sentence has every key masked (e.g. a mask built transposed)."""

    row = 1

    def compute(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mask every key of query row :attr:`row`, then diagnose as usual."""
        b, q, k = call.query.shape[0], call.query.shape[-2], call.key.shape[-2]
        mask = call.mask
        full = torch.zeros(b, 1, q, k, dtype=torch.float32, device=call.query.device) if mask is None else mask.expand(b, -1, q, k).clone()
        full[:, :, self.row, :] = torch.finfo(full.dtype).min
        call.mask = full
        return super().compute(call)


class DroppedMaskRecorder(DiagnosticRecorder):
    """A buggy attention function that ignores ``attention_mask`` (padding and causal masks vanish)."""

    def compute(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Drop the mask, then diagnose as usual."""
        call.mask = None
        return super().compute(call)


def _attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    mods = [m for m in model.modules() if isinstance(getattr(m, "scaling", None), float)]
    if not mods:
        raise InputError(f"no attention module with a 'scaling' attribute in {type(model).__name__}")
    return mods


def _query_linear(module: torch.nn.Module) -> torch.nn.Linear:
    for name in ("query", "q_proj", "q_lin", "q"):
        lin = getattr(module, name, None)
        if isinstance(lin, torch.nn.Linear):
            return lin
    raise InputError(f"cannot find the query projection of {type(module).__name__}")


def _copy(inspector: AttentionInspector, change: Callable[[torch.nn.Module], None]) -> AttentionInspector:
    model = copy.deepcopy(inspector.model)
    with torch.no_grad():
        change(model)
    return AttentionInspector(model, inspector.tokenizer, name=f"{inspector.name} (broken)")


def _remove_scale(model: torch.nn.Module) -> None:
    for m in _attention_modules(model):
        m.scaling = 1.0


def _zero_queries(model: torch.nn.Module) -> None:
    for m in _attention_modules(model):
        lin = _query_linear(m)
        lin.weight.zero_()
        if lin.bias is not None:
            lin.bias.zero_()


def _blow_up_queries(model: torch.nn.Module, factor: float = 30.0) -> None:
    for m in _attention_modules(model):
        lin = _query_linear(m)
        lin.weight.mul_(factor)
        if lin.bias is not None:
            lin.bias.mul_(factor)


@dataclass(frozen=True)
class Fault:
    """One planted fault: ``check`` is the :func:`~hf_attn_inspect.checks.diagnose.diagnose` check that must fail."""

    name: str
    check: str
    description: str
    patch: Callable[[torch.nn.Module], None] | None = None
    probe_class: type[DiagnosticRecorder] = DiagnosticRecorder

    def plant(self, inspector: AttentionInspector) -> tuple[AttentionInspector, type[DiagnosticRecorder]]:
        """``(inspector, probe_class)`` to pass to ``diagnose(inspector, probe_class=probe_class)``; the
        inspector wraps a patched deep copy when the fault patches the model, else the same inspector."""
        return (_copy(inspector, self.patch) if self.patch else inspector), self.probe_class


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        Fault("scale_removed", "attention_scale", "every attention module's scaling set to 1.0 (no 1/sqrt(d_k))", _remove_scale),
        Fault("queries_zeroed", "uniform_heads", "query projections zeroed: every score is 0, every head uniform", _zero_queries),
        Fault("scores_blown_up", "collapsed_heads", "query projections multiplied by 30 (as after a too high learning rate): "
              "scores explode and attention collapses", _blow_up_queries),
        Fault("fully_masked_row", "fully_masked_rows", "the mask hides every key of query row 1 (a buggy mask)",
              probe_class=FullyMaskedRowRecorder),
        Fault("mask_dropped", "masks_dropped", "the attention function ignores attention_mask", probe_class=DroppedMaskRecorder),
    )
}


def plant_fault(inspector: AttentionInspector, name: str) -> tuple[AttentionInspector, type[DiagnosticRecorder]]:
    """Plant fault ``name`` (a key of :data:`FAULTS`) on ``inspector``: see :meth:`Fault.plant`."""
    if name not in FAULTS:
        raise InputError(f"unknown fault '{name}'; choose one of {', '.join(FAULTS)}")
    return FAULTS[name].plant(inspector)


def break_and_diagnose(inspector: AttentionInspector, texts: Sequence[str] | None = None) -> dict[str, Report]:
    """``{"healthy": Report, fault name: Report, ...}``: :func:`~hf_attn_inspect.checks.diagnose.diagnose` of the
    model as it is and with each fault of :data:`FAULTS` planted (on copies; the model is not changed)."""
    reports = {"healthy": diagnose(inspector, texts)}
    for fault in FAULTS.values():
        broken, probe_class = fault.plant(inspector)
        reports[fault.name] = diagnose(broken, texts, probe_class=probe_class)
    return reports


def caught_table(reports: dict[str, Report]) -> str:
    """A text table: one line per model (healthy, then each fault), one status column per check, and
    whether the fault's own check caught it (``caught``/``MISSED``)."""
    head = f"{'':18s}" + " ".join(f"{c[:10]:>10s}" for c in CHECKS)
    lines = [head]
    for name, report in reports.items():
        marks = " ".join(f"{report[c].status:>10s}" for c in CHECKS)
        check = FAULTS[name].check if name in FAULTS else None
        verdict = "-" if check is None else ("caught" if report[check].status == "fail" else "MISSED")
        lines.append(f"{name:18s}{marks}   {verdict}")
    return "\n".join(lines)


def all_caught(reports: dict[str, Report]) -> bool:
    """True when the healthy model passes every check and every planted fault fails its own check.

    ``reports`` is what :func:`break_and_diagnose` returns; without a ``"healthy"`` report it raises
    :class:`~hf_attn_inspect.core.errors.InputError`.
    """
    if "healthy" not in reports:
        raise InputError("reports need a 'healthy' report (see break_and_diagnose)")
    return reports["healthy"].ok and all(reports[n][FAULTS[n].check].status == "fail" for n in reports if n in FAULTS)
