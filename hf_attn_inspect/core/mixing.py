"""Token-to-token mixing through the layers: rollout, attention flow and the context-mixing ratio.

All functions take per-layer maps ``[layers, T, T]`` whose row ``i`` says how much position ``i`` takes from
each position ``j`` in that layer (e.g. head-averaged attention with the residual added, or ALTI's
contributions) and are pure tensor/graph computations (no model):

* :func:`residual_mix` — ``A = r I + (1 - r) W`` with rows renormalised (Abnar & Zuidema 2020's model of the
  residual connection);
* :func:`rollout_product` — ``R_l = A_l R_{l-1}``: how much of input token ``j`` reaches position ``i`` after
  layer ``l`` when mixing multiplies through the layers;
* :func:`attention_flow` — Abnar & Zuidema's attention flow: the maximum flow from position ``i`` after layer
  ``l`` down to input token ``j`` in the layered graph whose edges carry the capacities ``A_l[i, j]`` (scipy's
  maximum flow);
* :func:`mixing_ratio` — Kobayashi et al. (2021)'s context-mixing ratio: the share of each row that comes from
  other tokens, averaged over tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from .errors import InputError

if TYPE_CHECKING:
    from scipy.sparse import csr_array

__all__ = [
    "row_normalise", "residual_mix", "rollout_product", "attention_flow", "flow_capacities", "layer_flows",
    "mixing_ratio",
]


def row_normalise(m: torch.Tensor) -> torch.Tensor:
    """``m`` with every row (last axis) divided by its sum (all-zero rows stay 0)."""
    return m / m.sum(-1, keepdim=True).clamp_min(1e-12)


def residual_mix(w: torch.Tensor, residual: float = 0.5) -> torch.Tensor:
    """``residual * I + (1 - residual) * w`` for ``w [..., T, T]``, rows renormalised to sum to 1."""
    if not 0.0 <= residual <= 1.0:
        raise InputError(f"residual must be in [0, 1], got {residual}")
    t = w.shape[-1]
    return row_normalise(residual * torch.eye(t, dtype=torch.float32) + (1.0 - residual) * w.float())


def _check_square(a: torch.Tensor, what: str) -> torch.Tensor:
    if a.dim() != 3 or a.shape[-1] != a.shape[-2]:
        raise InputError(f"{what} needs per-layer [layers, T, T] maps, got shape {tuple(a.shape)}")
    return a.float()


def rollout_product(a: torch.Tensor) -> torch.Tensor:
    """``[layers, T, T]``: ``R_0 = A_0`` and ``R_l = A_l @ R_{l-1}`` for per-layer mixing maps ``a [layers, T,
    T]``; row ``i`` of ``R_l`` is how much of each input token reaches position ``i`` after layer ``l``."""
    a = _check_square(a, "rollout")
    out = torch.empty_like(a)
    if a.shape[0] == 0:
        return out
    r = a[0]
    out[0] = r
    for layer in range(1, a.shape[0]):
        r = a[layer] @ r
        out[layer] = r
    return out


#: Capacities are solved as integers: the largest row sum of the maps becomes ``2**30`` (int32 flows never
#: overflow; each capacity is rounded to within ``2**-31`` of that row sum).
_FLOW_UNIT = 1 << 30


def _depth_graph(caps: np.ndarray, layer: int) -> tuple[csr_array, np.ndarray]:
    """The flow network of the outputs of ``layer`` (>= 2) down to the input tokens, pruned to one source and one
    sink: node 0 is the source, then ``t`` nodes after each layer ``layer - 1 .. 0`` (the inner layers' edges,
    zero capacities dropped), then the sink; the source's ``t`` edges (first in ``data``) and the ``t`` edges into
    the sink (positions returned) get one pair's capacities before each solve. ``caps [layers, t, t]`` int32."""
    from scipy.sparse import csr_array

    t = caps.shape[-1]
    sink = layer * t + 1
    indices, data, counts = [np.arange(1, t + 1)], [caps[layer, 0]], [np.array([t])]
    for inner in range(layer - 1, 0, -1):  # node k after layer ``inner`` -> node k' after layer ``inner - 1``
        rows, cols = np.nonzero(caps[inner])
        indices.append(1 + (layer - inner) * t + cols)
        data.append(caps[inner][rows, cols])
        counts.append(np.bincount(rows, minlength=t))
    indices.append(np.full(t, sink))  # node k after layer 0 -> the sink (the column of the sink's input token)
    data.append(caps[0][:, 0])
    counts += [np.ones(t, dtype=np.int64), np.zeros(1, dtype=np.int64)]
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int32)
    graph = csr_array((np.concatenate(data).astype(np.int32), np.concatenate(indices).astype(np.int32), indptr),
                      shape=(sink + 1, sink + 1))
    return graph, indptr[sink - t: sink]


def flow_capacities(a: torch.Tensor) -> tuple[np.ndarray, float]:
    """``(caps, unit)``: the capacities ``a [layers, T, T]`` (negatives as 0) as int32 ``round(a * unit)``, with
    ``unit`` such that the largest row sum is ``2**30`` (so int32 flows never overflow)."""
    a = a.double().clamp_min(0)
    unit = _FLOW_UNIT / max(float(a.sum(-1).max()), 1e-30)
    return np.rint(a.numpy() * unit).astype(np.int32), unit


def layer_flows(caps: np.ndarray, layer: int, rows: Sequence[int]) -> np.ndarray:
    """``[len(rows), T]``: the maximum flow (in :func:`flow_capacities`'s integer units) from each node ``rows[n]``
    after ``layer`` (>= 2) down to each input token, by scipy's Dinic on the graph of :func:`_depth_graph` built
    once; a pair with no path of positive capacity is 0 without a solve."""
    from scipy.sparse.csgraph import maximum_flow

    t = caps.shape[-1]
    reach = caps[0] > 0  # reach[i, j]: a path of positive capacities from node i after the layer so far to j
    for inner in range(1, layer + 1):
        reach = (caps[inner] > 0).astype(np.float64) @ reach > 0
    graph, into_sink = _depth_graph(caps, layer)
    sink = graph.shape[0] - 1
    out = np.zeros((len(rows), t))
    for n, i in enumerate(rows):
        graph.data[:t] = caps[layer, i]
        for j in np.flatnonzero(reach[i]).tolist():
            graph.data[into_sink] = caps[0, :, j]
            out[n, j] = maximum_flow(graph, 0, sink, method="dinic").flow_value
    return out


def attention_flow(a: torch.Tensor, *, normalise: bool = True) -> torch.Tensor:
    """Attention flow (Abnar & Zuidema 2020): ``[layers, T, T]`` maximum flows through the layered graph of ``a``.

    ``a [layers, T, T]`` are the per-layer capacities (the paper's: head-averaged attention with the residual
    added and rows renormalised, :func:`residual_mix`). The graph has a node per token before the first layer
    and after each layer; layer ``l`` joins node ``i`` after it to node ``j`` before it with capacity
    ``a[l, i, j]``. Entry ``[l, i, j]`` is the maximum flow from node ``i`` after layer ``l`` down to input token
    ``j`` (rows then normalised to sum to 1 unless ``normalise`` is False). One layer is the capacities
    themselves, two layers are parallel two-edge paths (``sum_k min(a[1, i, k], a[0, k, j])``); deeper layers are
    solved by scipy's Dinic maximum flow (:func:`scipy.sparse.csgraph.maximum_flow`) on integer capacities (the
    largest row sum scaled to ``2**30``: each capacity within ``2**-31`` times that row sum of its value), on a graph
    built once per layer and pruned exactly per pair (only the source's row of its own layer and the sink's
    column of the first layer can carry flow); pairs with no path of positive capacity are 0 without a solve.
    Cost: ``T^2`` maximum flows per layer from the third on, each growing with the layers below (a few ms at 128
    tokens, mostly scipy rebuilding the residual graph): on MiniLM's 6 layers 0.4-2 s at 16 tokens, 2-5 s at 32
    and 2.5-5 minutes at 128 (extrapolated; quiet and loaded 2-core machine; docs/guides/measures.md).
    """
    a = _check_square(a, "attention flow").cpu().double()
    layers, t = a.shape[0], a.shape[-1]
    out = torch.zeros(layers, t, t, dtype=torch.float64)
    if layers:
        out[0] = a[0]
    if layers > 1:  # node i after layer 2 -> node k after layer 1 -> input j: parallel paths
        out[1] = torch.minimum(a[1][:, :, None], a[0][None, :, :]).sum(1)
    if layers > 2:
        caps, unit = flow_capacities(a)
        for layer in range(2, layers):
            out[layer] = torch.from_numpy(layer_flows(caps, layer, range(t)) / unit)
    out = out.float()
    return row_normalise(out) if normalise else out


def mixing_ratio(m: torch.Tensor) -> torch.Tensor:
    """Context-mixing ratio per layer (Kobayashi et al. 2021): ``[layers]`` float32.

    ``m`` is ``[layers, T, T]`` or per head ``[layers, heads, T, T]`` (summed over heads first) of non-negative
    amounts each token ``i`` takes from each token ``j``; the ratio is ``sum_{j != i} m_ij / sum_j m_ij``
    averaged over the tokens ``i``: 0 when every token keeps only itself, near 1 when it is all context.
    """
    m = m.float()
    if m.dim() == 4:
        m = m.sum(1)
    m = _check_square(m, "the mixing ratio")
    total = m.sum(-1)
    own = torch.diagonal(m, dim1=-2, dim2=-1)
    return ((total - own) / total.clamp_min(1e-12)).mean(-1)
