"""Figures of pooled attention: long inputs drawn from block sums, never from a ``[T, T]`` matrix per head.

The data are the block sums of :class:`~hf_attn_inspect.capture.pooled.PooledRecorder` (or
:func:`~hf_attn_inspect.capture.pooled.pool_blocks`): cell ``(a, b)`` is the total weight the query rows of
block ``a`` give to the keys of block ``b``. The figures show :func:`block_shares`, that sum divided by the
number of query rows in block ``a``: the share of an average query row's attention that lands in key block
``b`` (each row of blocks sums to at most 1). Axes are token positions. The colour scale is a square root
from 0 to the largest share drawn (long inputs spread attention thinly; a linear scale would show only
the strongest blocks). Axes-level in the seaborn style: data and an optional ``ax``/``fig`` in, the axes or
figure out; nothing is shown or printed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ..core.errors import InputError
from .plotting import frame_model_view

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["block_shares", "plot_pooled_heatmap", "plot_pooled_heads", "plot_pooled_model_view"]

_LABEL = "share of a query's attention per key block (√ scale)"


def block_shares(pooled: torch.Tensor | np.ndarray, q_edges: torch.Tensor | np.ndarray) -> np.ndarray:
    """Block sums ``[..., n_q_blocks, n_k_blocks]`` divided by the query rows of each block: the mean share
    of one query row's attention on each key block (float64)."""
    p = pooled.detach().cpu().double().numpy() if isinstance(pooled, torch.Tensor) else np.asarray(pooled, dtype=np.float64)
    edges = np.asarray(q_edges.cpu() if isinstance(q_edges, torch.Tensor) else q_edges, dtype=np.int64)
    rows = np.diff(edges).astype(np.float64)
    if p.shape[-2] != len(rows):
        raise InputError(f"{p.shape[-2]} query blocks but {len(rows)} block edges")
    return p / rows[:, None]


def _norm(vmax: float):
    from matplotlib.colors import PowerNorm

    return PowerNorm(gamma=0.5, vmin=0.0, vmax=max(vmax, 1e-12))


def _draw(ax: Axes, shares: np.ndarray, q_edges, k_edges, norm, cmap: str):
    """Draw one head's block shares on ``ax`` against token positions (queries top to bottom); return the mesh."""
    n_q, n_k = int(q_edges[-1]), int(k_edges[-1])
    # pcolormesh with the real edges: the last, shorter block is drawn at its true width
    mesh = ax.pcolormesh(np.asarray(k_edges), np.asarray(q_edges), shares, cmap=cmap, norm=norm, shading="flat",
                         rasterized=True)
    ax.set_xlim(0, n_k)
    ax.set_ylim(n_q, 0)
    return mesh


def _shares(pooled: torch.Tensor | np.ndarray, q_edges: torch.Tensor | np.ndarray, ndim: int, what: str) -> np.ndarray:
    """:func:`block_shares` of ``pooled``, which must have ``ndim`` axes (``what``: the name of that shape)."""
    shares = block_shares(pooled, q_edges)
    if shares.ndim != ndim:
        raise InputError(f"pooled attention {what}, got shape {shares.shape}")
    return shares


def plot_pooled_heatmap(
    pooled: torch.Tensor | np.ndarray,
    q_edges: torch.Tensor | np.ndarray,
    k_edges: torch.Tensor | np.ndarray,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    cmap: str = "Blues",
    colorbar: bool = True,
) -> Axes:
    """Draw one head's pooled attention ``[n_q_blocks, n_k_blocks]`` (block sums) against token positions; return the axes.

    Rows are query positions (top to bottom), columns key positions; each cell is :func:`block_shares`.
    """
    shares = _shares(pooled, q_edges, 2, "of one head must be [query blocks, key blocks]")
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 6.2))
    mesh = _draw(ax, shares, q_edges, k_edges, _norm(float(shares.max())), cmap)
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    if colorbar:
        ax.figure.colorbar(mesh, ax=ax, fraction=0.046, pad=0.04, label=_LABEL)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def plot_pooled_heads(
    pooled: torch.Tensor | np.ndarray,
    q_edges: torch.Tensor | np.ndarray,
    k_edges: torch.Tensor | np.ndarray,
    *,
    head_ids: Sequence[int] | None = None,
    fig: Figure | None = None,
    ncols: int = 4,
    title: str | None = None,
    cmap: str = "Blues",
) -> Figure:
    """Draw every head of one layer from pooled attention ``[heads, n_q_blocks, n_k_blocks]``; return the figure.

    One panel per head (titled with its model index), one shared square-root colour scale and colour bar;
    token positions on the left column's and bottom row's axes.
    """
    shares = _shares(pooled, q_edges, 3, "of a layer must be [heads, query blocks, key blocks]")
    import matplotlib.pyplot as plt

    h = shares.shape[0]
    head_ids = list(range(h)) if head_ids is None else list(head_ids)
    ncols = max(1, min(ncols, h))
    nrows = math.ceil(h / ncols)
    if fig is None:
        fig = plt.figure(figsize=(ncols * 3.4 + 1.2, nrows * 3.2 + 1.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    norm = _norm(float(shares.max()))
    mesh = None
    for idx, ax in enumerate(axes):
        if idx >= h:
            ax.axis("off")
            continue
        mesh = _draw(ax, shares[idx], q_edges, k_edges, norm, cmap)
        ax.set_title(f"head {head_ids[idx]}", fontsize=10)
        row, col = divmod(idx, ncols)
        if col != 0:
            ax.set_yticklabels([])
        if not (row == nrows - 1 or idx + ncols >= h):
            ax.set_xticklabels([])
        ax.tick_params(labelsize=7)
    if mesh is not None:
        fig.colorbar(mesh, ax=list(axes[:h]), shrink=0.6, label=_LABEL)
    if title:
        fig.suptitle(title, fontweight="bold", fontsize=11)
    return fig


def _draw_grid(ax: Axes, shares: np.ndarray, q_edges: np.ndarray, k_edges: np.ndarray, norm, cmap: str,
               layer_ids: Sequence[int], head_ids: Sequence[int]):
    """Draw ``[layers, heads, n_q_blocks, n_k_blocks]`` shares as one mesh on ``ax``: thumbnails at their
    true block edges, separated by blank gaps of 6 % of a thumbnail, framed and labelled; return the mesh."""
    import matplotlib.pyplot as plt

    nl, nh, nq, nk = shares.shape
    n_q, n_k = q_edges[-1], k_edges[-1]
    gap_q, gap_k = 0.06 * n_q, 0.06 * n_k
    tops = [i * (n_q + gap_q) for i in range(nl)]
    lefts = [j * (n_k + gap_k) for j in range(nh)]
    ys = np.concatenate([t + q_edges for t in tops])  # a head's last edge and the next head's first bound a gap
    xs = np.concatenate([x + k_edges for x in lefts])
    grid = np.full((nl, nq + 1, nh, nk + 1), np.nan)
    grid[:, :nq, :, :nk] = shares.transpose(0, 2, 1, 3)
    values = np.ma.masked_invalid(grid.reshape(nl * (nq + 1), nh * (nk + 1))[:-1, :-1])
    colours = plt.get_cmap(cmap).copy()
    colours.set_bad("white")
    mesh = ax.pcolormesh(xs, ys, values, cmap=colours, norm=norm, shading="flat", rasterized=True)
    ax.set_xlim(0, xs[-1])
    ax.set_ylim(ys[-1], 0)
    frame_model_view(ax, tops, lefts, n_q, n_k, layer_ids, head_ids)
    return mesh


def plot_pooled_model_view(
    pooled: torch.Tensor | np.ndarray,
    q_edges: torch.Tensor | np.ndarray,
    k_edges: torch.Tensor | np.ndarray,
    *,
    layer_ids: Sequence[int] | None = None,
    head_ids: Sequence[int] | None = None,
    fig: Figure | None = None,
    title: str | None = None,
    cmap: str = "Blues",
) -> Figure:
    """Draw a layers x heads grid of thumbnails from pooled attention ``[layers, heads, n_q_blocks, n_k_blocks]``.

    Each thumbnail is one head's :func:`block_shares` on one shared square-root colour scale (a colour bar
    says so); rows are labelled with the model's layer index, columns with the head index. The default
    title names the number of tokens and the block size, so the figure says it is pooled.
    """
    shares = _shares(pooled, q_edges, 4, "must be [layers, heads, query blocks, key blocks]")
    import matplotlib.pyplot as plt

    nl, nh, nq, nk = shares.shape
    layer_ids = list(range(nl)) if layer_ids is None else list(layer_ids)
    head_ids = list(range(nh)) if head_ids is None else list(head_ids)
    if fig is None:  # constrained layout keeps the two-line title clear of the head labels
        fig = plt.figure(figsize=(1.5 * nh + 2.2, 1.5 * nl + 1.8), layout="constrained")
        fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.02, hspace=0.02)
    ax = fig.add_subplot()
    mesh = _draw_grid(ax, shares, np.asarray(q_edges, dtype=np.float64), np.asarray(k_edges, dtype=np.float64),
                      _norm(float(shares.max())), cmap, layer_ids, head_ids)
    fig.colorbar(mesh, ax=ax, shrink=0.8, pad=0.02, label=_LABEL)
    if title is None:
        n_tokens = int(np.asarray(q_edges)[-1])
        size = int(np.asarray(q_edges)[1] - np.asarray(q_edges)[0])
        title = (f"Model view of {n_tokens:,} tokens, pooled: {nq} x {nk} blocks of {size} tokens\n"
                 "(rows: layers, columns: heads; drawn from block sums, not full weights)")
    if title:
        fig.suptitle(title, fontweight="bold", fontsize=10)
    return fig
