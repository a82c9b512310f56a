"""What one capture records (:class:`CaptureRequest`) and what it recorded (:class:`CaptureResult`).

A request names the records to keep (:data:`RECORDS`), the measures to compute from them
(:data:`~hf_attn_inspect.capture.measures.MEASURES`) and where (stacks, layers, heads);
:meth:`CaptureRequest.recorders` builds the recorders of a run, and :meth:`CaptureResult.collect` gathers
what they kept after :meth:`~hf_attn_inspect.capture.inspector.AttentionInspector.run`, keyed by
``(stack, layer)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..core.errors import InputError
from ..core.stacks import STACKS
from .contributions import ContributionsRecorder, HeadOutputsRecorder, ValuesRecorder
from .layout import check_layout
from .measures import MEASURES, check_measures
from .mixing import MIXING_MAPS, MixingRecorder
from .recorders import Recorder, WeightsRecorder
from .value_zeroing import ValueZeroingRecorder

__all__ = ["RECORDS", "CaptureRequest", "CaptureResult"]

#: What a capture can record: attention ``weights``; each head's ``values``; ``head_outputs`` before the output
#: projection; per-head ``contributions`` through it (with the norms ``||f_h(x_j)||``); ``row_stats`` and
#: ``pooled`` blocks (kept by the engines' own recorders: a request only names them); the per-layer ``mixing`` maps
#: (:mod:`~hf_attn_inspect.capture.mixing`) and ``value_zeroing`` (:mod:`~hf_attn_inspect.capture.value_zeroing`).
RECORDS = ("weights", "values", "head_outputs", "contributions", "row_stats", "pooled", "mixing", "value_zeroing")


def _names(values: Sequence[str] | str | None, valid: Sequence[str], what: str) -> tuple[str, ...] | None:
    if values is None:
        return None
    values = (values,) if isinstance(values, str) else tuple(values)
    for v in values:
        if v not in valid:
            raise InputError(f"unknown {what} '{v}'; valid {what}s: {', '.join(valid)}")
    return tuple(dict.fromkeys(values))


@dataclass(frozen=True)
class CaptureRequest:
    """What to record from a run and where.

    ``record`` is a subset of :data:`RECORDS`; ``measures`` names measures (each adds the records it needs);
    ``stacks`` (of ``self``/``encoder``/``decoder``/``cross``), ``layers`` and ``heads`` (0-based model indices)
    restrict where, ``None`` meaning all. Unknown names raise :class:`InputError` listing the valid ones.
    """

    record: tuple[str, ...] = ("weights",)
    measures: tuple[str, ...] = ()
    stacks: tuple[str, ...] | None = None
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "record", _names(self.record, RECORDS, "record") or ())
        object.__setattr__(self, "measures", check_measures(self.measures))
        object.__setattr__(self, "stacks", _names(self.stacks, STACKS, "stack"))
        for name in ("layers", "heads"):
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None else tuple(value))

    @property
    def needs(self) -> tuple[str, ...]:
        """Every record the run keeps: ``record`` and what the measures need, in :data:`RECORDS` order."""
        wanted = set(self.record).union(*(MEASURES[m].needs for m in self.measures))
        return tuple(r for r in RECORDS if r in wanted)

    def recorders(self, model: torch.nn.Module, weights: type[WeightsRecorder] = WeightsRecorder) -> list[Recorder]:
        """The recorders of the weights, values, head outputs and contributions this request needs (row
        statistics and pooled blocks come from the engines' recorders); ``model`` is the model that will run
        (the contributions recorder looks up its output projections). A measure that needs contributions
        without ``contributions`` in ``record`` keeps only the norms. ``weights`` is the class that keeps the
        weights (a generation keeps each decoding step's rows with
        :class:`~hf_attn_inspect.capture.generation.GenerationRecorder`)."""
        where = {"layers": self.layers, "heads": self.heads, "stacks": self.stacks}
        needs = self.needs
        out: list[Recorder] = []
        if "weights" in needs:
            out.append(weights(**where))
        if "values" in needs:
            out.append(ValuesRecorder(**where))
        if "head_outputs" in needs:
            out.append(HeadOutputsRecorder(**where))
        if "contributions" in needs:
            out.append(ContributionsRecorder(model, **where, sums="contributions" in self.record))
        for name in self.measures:
            if MEASURES[name].layouts is not None:
                check_layout(model, name, MEASURES[name].layouts)
        if "mixing" in needs:
            maps = self.mixing_maps or MIXING_MAPS
            out.append(MixingRecorder(model, maps, self.layers, stacks=self.stacks))
        if "value_zeroing" in needs:
            out.append(ValueZeroingRecorder(model, self.layers, stacks=self.stacks))
        return out

    @property
    def mixing_maps(self) -> tuple[str, ...]:
        """The per-layer mixing maps (:data:`~hf_attn_inspect.capture.mixing.MIXING_MAPS`) the measures read."""
        return tuple(m for m in MIXING_MAPS if any(m in MEASURES[name].maps for name in self.measures))

    def kept_bytes(self, batch: int, layers: int, heads: int, t_q: int, t_k: int, hidden: int, head_dim: int) -> int:
        """Float32 bytes of the records other than weights this request keeps for one stack of ``layers`` kept
        layers x ``heads`` kept heads (counted twice: per-layer tensors and their stacked copy)."""
        needs = self.needs
        per_layer = 0
        if "values" in needs:
            per_layer += batch * heads * t_k * head_dim
        if "head_outputs" in needs:
            per_layer += batch * heads * t_q * head_dim
        if "contributions" in needs:
            per_layer += batch * heads * t_k + ("contributions" in self.record) * batch * heads * t_q * hidden
        if "mixing" in needs:
            per_layer += len(self.mixing_maps or MIXING_MAPS) * batch * t_q * t_k
        if "value_zeroing" in needs:
            per_layer += batch * t_q * t_k
        return 2 * layers * per_layer * 4


@dataclass
class CaptureResult:
    """What a run's recorders kept: ``records[(stack, layer)]`` is ``{kind: tensor}`` with kinds ``weights``
    ``[batch, heads, T_q, T_k]``, ``values`` ``[batch, heads, T_k, head_dim]``, ``head_outputs`` ``[batch, heads,
    T_q, head_dim]``, ``contributions`` ``[batch, heads, T_q, hidden]`` and ``norms`` ``[batch, heads, T_k]``
    (float32, padding positions included)."""

    records: dict[tuple[str, int], dict[str, torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def collect(cls, recorders: Sequence[Recorder]) -> "CaptureResult":
        """Gather every kind each recorder keeps (its ``kinds``); the recorders' stores are emptied, their
        tensors move into the result."""
        out = cls()
        for recorder in recorders:
            for kind, attr in getattr(recorder, "kinds", {}).items():
                store = getattr(recorder, attr)
                for stack, layers in store.items():
                    for layer, tensor in layers.items():
                        out.records.setdefault((stack, layer), {})[kind] = tensor
                store.clear()
        return out

    def __getitem__(self, key: tuple[str, int]) -> dict[str, torch.Tensor]:
        return self.records[key]

    def pop(self, kind: str) -> dict[str, dict[int, torch.Tensor]]:
        """Remove ``kind`` from every record and return it as ``{stack: {layer: tensor}}``."""
        out: dict[str, dict[int, torch.Tensor]] = {}
        for (stack, layer), kinds in self.records.items():
            if kind in kinds:
                out.setdefault(stack, {})[layer] = kinds.pop(kind)
        return out

    def stacked(self, stack: str) -> dict[str, torch.Tensor]:
        """``{kind: [layers, batch, ...]}`` of ``stack``, its layers in increasing order."""
        layers = sorted(layer for s, layer in self.records if s == stack)
        kinds = {k for layer in layers for k in self.records[(stack, layer)]}
        return {k: torch.stack([self.records[(stack, layer)][k] for layer in layers]) for k in sorted(kinds)}
