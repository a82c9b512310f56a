"""Token-to-token mixing through the layers: rollout, attention flow and the context-mixing ratio.

All functions take per-layer maps ``[layers, T, T]`` whose row ``i`` says how much position ``i`` takes from
each position ``j`` in that layer (e.g. head-averaged attention with the residual added, or ALTI's
contributions) and are pure tensor/graph computations (no model):

* :func:`residual_mix` — ``A = r I + (1 - r) W`` with rows renormalised (Abnar & Zuidema 2020's model of the
  residual connection);
* :func:`rollout_product` — ``R_l = A_l R_{l-1}``: how much of input token ``j`` reaches position ``i`` after
  layer ``l`` when mixing multiplies through the layers;
* :func:`attention_flow` — Abnar & Zuidema's attention flow: the maximum flow from position ``i`` after layer
  ``l`` down to input token ``j`` in the layered graph whose edges carry the capacities ``A_l[i, j]``;
* :func:`mixing_ratio` — Kobayashi et al. (2021)'s context-mixing ratio: the share of each row that comes from
  other tokens, averaged over tokens.
"""

from __future__ import annotations

import torch

from .errors import InputError

__all__ = ["row_normalise", "residual_mix", "rollout_product", "attention_flow", "mixing_ratio"]


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


def attention_flow(a: torch.Tensor, *, normalise: bool = True) -> torch.Tensor:
    """Attention flow (Abnar & Zuidema 2020): ``[layers, T, T]`` maximum flows through the layered graph of ``a``.

    ``a [layers, T, T]`` are the per-layer capacities (the paper's: head-averaged attention with the residual
    added and rows renormalised, :func:`residual_mix`). The graph has a node per token before the first layer
    and after each layer; layer ``l`` joins node ``i`` after it to node ``j`` before it with capacity
    ``a[l, i, j]``. Entry ``[l, i, j]`` is the maximum flow from node ``i`` after layer ``l`` down to input token
    ``j`` (rows then normalised to sum to 1 unless ``normalise`` is False). Exact: one layer is the capacities
    themselves, two layers are parallel two-edge paths (``sum_k min(a[1, i, k], a[0, k, j])``), deeper layers are
    solved by networkx's shortest-augmenting-path maximum flow (the same value as its Edmonds-Karp) on one residual
    network reused for every pair. Cost: ``T^2`` maximum flows per layer from the third on (seconds at 16 tokens,
    far more at 128: see docs/guides/measures.md).
    """
    import networkx as nx
    from networkx.algorithms.flow import build_residual_network, shortest_augmenting_path

    a = _check_square(a, "attention flow").cpu().double()
    layers, t = a.shape[0], a.shape[-1]
    out = torch.zeros(layers, t, t, dtype=torch.float64)
    if layers:
        out[0] = a[0]
    if layers > 1:  # node i after layer 2 -> node k after layer 1 -> input j: parallel paths
        out[1] = torch.minimum(a[1][:, :, None], a[0][None, :, :]).sum(1)
    if layers > 2:
        graph = nx.DiGraph()
        for layer in range(layers):
            rows, cols = torch.nonzero(a[layer] > 0, as_tuple=True)
            caps = a[layer][rows, cols].tolist()
            graph.add_edges_from(
                ((layer + 1, i), (layer, j), {"capacity": c}) for i, j, c in zip(rows.tolist(), cols.tolist(), caps)
            )
        graph.add_nodes_from((layer, i) for layer in range(layers + 1) for i in range(t))
        residual = build_residual_network(graph, "capacity")
        for layer in range(2, layers):
            for i in range(t):
                for j in range(t):
                    out[layer, i, j] = shortest_augmenting_path(
                        graph, (layer + 1, i), (0, j), residual=residual
                    ).graph["flow_value"]
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
