"""Measures: maps of how much each token draws on each other, by name.

A measure is ``[layers, heads, query, key]`` where it is per head (``weights``, ``norm``) and ``[layers, query,
key]`` where it is per layer (the others). A :class:`Measure` names the records it needs (see
:data:`~hf_attn_inspect.capture.request.RECORDS`) and computes its map from one text's records, each cut to the
text's tokens and stacked over the kept layers: ``weights`` ``[layers, heads, T, T]``, ``norms`` ``[layers, heads,
T]`` (``||f_h(x_j)||``), ``values`` ``[layers, heads, T, head_dim]``, ``head_outputs`` ``[layers, heads, T,
head_dim]``, ``contributions`` ``[layers, heads, T, hidden]``, and the per-layer maps of
:mod:`~hf_attn_inspect.capture.mixing` and :mod:`~hf_attn_inspect.capture.value_zeroing` ``[layers, 1, T, T_pad]``.
:data:`MEASURES` is the registry (:func:`register_measure` adds one). See docs/guides/measures.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..core.errors import InputError
from ..core.mixing import attention_flow, residual_mix, rollout_product

__all__ = ["Measure", "MEASURES", "register_measure", "check_measures", "compute_measures"]


@dataclass(frozen=True)
class Measure:
    """A named ``[layers, heads, query, key]`` measure: ``needs`` are the records it reads, ``compute`` maps one
    text's records ``{kind: tensor}`` to a new tensor, ``description`` says what the numbers mean."""

    name: str
    needs: tuple[str, ...]
    compute: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    description: str
    #: True for a ``[layers, query, key]`` measure (one map per layer), False for ``[layers, heads, query, key]``.
    per_layer: bool = False
    #: The per-layer mixing maps it reads (:data:`~hf_attn_inspect.capture.mixing.MIXING_MAPS`).
    maps: tuple[str, ...] = ()
    #: The layer layouts it applies to (``"post"``, ``"pre"``; :mod:`~hf_attn_inspect.capture.layout`), None: any.
    layouts: tuple[str, ...] | None = None


#: The registry of measures by name (``"weights"``, ``"norm"``, ``"norm_layer"``, ... ``"flow"``).
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


def _map(name: str) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    def compute(records: dict[str, torch.Tensor]) -> torch.Tensor:
        n = records["weights"].shape[-1]
        return records[name][:, 0, :, :n]
    return compute


def _weights_graph(records: dict[str, torch.Tensor]) -> torch.Tensor:
    """Head-averaged weights with the residual added (0.5/0.5), rows renormalised: ``[layers, T, T]``."""
    return residual_mix(records["weights"].mean(1))


_BOTH = ("post", "pre")
for _name, _layouts, _what in (
    ("norm_layer", _BOTH, "||sum_h alpha_ij f_h(x_j)||: how far token j moves token i through the whole attention "
     "layer, all heads summed (Kobayashi et al. 2020)"),
    ("norm_res", _BOTH, "||sum_h alpha_ij f_h(x_j) + [i=j] x_i||: the layer's mixing with the residual connection "
     "added on the diagonal (Kobayashi et al. 2021)"),
    ("norm_res_ln", ("post",), "the norm of each summand of norm_res after the first LayerNorm (centred, scaled by "
     "gamma, divided by the real input's standard deviation; Kobayashi et al. 2021); post-LN models only"),
    ("alti", _BOTH, "ALTI (Ferrando et al. 2022): token j's share of token i's attention-block output, from the L1 "
     "distance between the output and j's transformed vector, clipped at 0; rows sum to 1"),
):
    register_measure(Measure(_name, ("weights", "mixing"), _map(_name), _what, True, (_name,), _layouts))
register_measure(Measure(
    "alti_rollout", ("weights", "mixing"), lambda r: rollout_product(_map("alti")(r)),
    "ALTI rolled out through the layers: row i after layer l is the share of each input token in position i "
    "(Ferrando et al. 2022)", True, ("alti",), _BOTH,
))
register_measure(Measure(
    "value_zeroing", ("weights", "value_zeroing"), _map("value_zeroing"),
    "value zeroing (Mohebbi et al. 2023): the cosine distance of token i's layer output when token j's value "
    "vectors are zeroed in every head and the layer is re-run; rows sum to 1", True, (), _BOTH,
))
register_measure(Measure(
    "rollout", ("weights",), lambda r: rollout_product(_weights_graph(r)),
    "attention rollout (Abnar & Zuidema 2020): head-averaged weights with the residual (0.5 I + 0.5 W, rows "
    "renormalised) multiplied through the layers; rows sum to 1", True,
))
register_measure(Measure(
    "flow", ("weights",), lambda r: attention_flow(_weights_graph(r)),
    "attention flow (Abnar & Zuidema 2020): the maximum flow from position i after layer l down to input token j "
    "through the layered graph of rollout's per-layer matrices; rows then normalised", True,
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
    """``{name: map}`` of the measures ``names`` other than ``weights`` (which is the result's ``attentions``),
    from one text's ``records`` (see the module docstring): ``[layers, heads, query, key]`` per head,
    ``[layers, query, key]`` per layer."""
    return {name: MEASURES[name].compute(records) for name in names if name != "weights"}
