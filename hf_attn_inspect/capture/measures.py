"""Measures: ``[layers, heads, query, key]`` maps of how much each token draws on each other, by name.

A :class:`Measure` names the records it needs (see :data:`~hf_attn_inspect.capture.request.RECORDS`) and
computes its map from one text's records, each cut to the text's tokens and stacked over the kept layers:
``weights`` ``[layers, heads, T, T]``, ``norms`` ``[layers, heads, T]`` (``||f_h(x_j)||``), ``values``
``[layers, heads, T, head_dim]``, ``head_outputs`` ``[layers, heads, T, head_dim]``, ``contributions``
``[layers, heads, T, hidden]``. :data:`MEASURES` is the registry (:func:`register_measure` adds one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..core.errors import InputError

__all__ = ["Measure", "MEASURES", "register_measure", "check_measures", "compute_measures"]


@dataclass(frozen=True)
class Measure:
    """A named ``[layers, heads, query, key]`` measure: ``needs`` are the records it reads, ``compute`` maps one
    text's records ``{kind: tensor}`` to a new tensor, ``description`` says what the numbers mean."""

    name: str
    needs: tuple[str, ...]
    compute: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    description: str


#: The registry of measures by name (``"weights"``, ``"norm"``; later issues add more).
MEASURES: dict[str, Measure] = {}


def register_measure(measure: Measure) -> Measure:
    """Add ``measure`` to :data:`MEASURES` (replacing one of the same name); returns it."""
    MEASURES[measure.name] = measure
    return measure


def _norm(records: dict[str, torch.Tensor]) -> torch.Tensor:
    return records["weights"] * records["norms"][:, :, None, :]


register_measure(Measure("weights", ("weights",), lambda r: r["weights"], "the attention weights alpha_ij"))
register_measure(Measure(
    "norm",
    ("weights", "contributions"),
    _norm,
    "||alpha_ij f_h(x_j)||: the norm of token j's value vector in head h mapped through the head's output "
    "projection (value bias included, output bias not), weighted by alpha_ij (Kobayashi et al. 2020)",
))


def check_measures(names: Sequence[str] | str | None) -> tuple[str, ...]:
    """``names`` as a tuple of registered measure names (a string is one name); an unknown name raises
    :class:`InputError` listing the valid ones."""
    names = () if names is None else (names,) if isinstance(names, str) else tuple(names)
    for name in names:
        if name not in MEASURES:
            raise InputError(f"unknown measure '{name}'; valid measures: {', '.join(MEASURES)}")
    return tuple(dict.fromkeys(names))


def compute_measures(names: Sequence[str], records: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{name: [layers, heads, query, key]}`` of the measures ``names`` other than ``weights`` (which is the
    result's ``attentions``), from one text's ``records`` (see the module docstring)."""
    return {name: MEASURES[name].compute(records) for name in names if name != "weights"}
