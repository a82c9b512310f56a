"""Figures of the measures (:data:`~hf_attn_inspect.capture.measures.MEASURES`): one query token across measures,
and one measure's map of a layer."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from matplotlib.axes import Axes

from ..capture.result import AttentionResult
from ..core.errors import InputError
from ..core.mixing import row_normalise
from .fonts import readable_text
from .plotting import plot_attention_heatmap, thin_ticks

__all__ = ["plot_measures", "plot_measure_map", "measure_layer"]


def measure_layer(result: AttentionResult, name: str, layer: int | None = None) -> torch.Tensor:
    """``[T, T]`` shares of measure ``name`` in the model's ``layer`` (default: the last captured): rows normalised
    to sum to 1, per-head measures averaged over the heads."""
    li = result.num_layers - 1 if layer is None else result.layer_index(layer)
    m = row_normalise(result.measure(name)[li].float().clamp_min(0))
    return m.mean(0) if m.dim() == 3 else m


def plot_measures(
    result: AttentionResult,
    token: int | str,
    measures: Sequence[str] | None = None,
    *,
    layer: int | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Draw what one query ``token`` takes from every key token under each measure: one column per measure, one
    row per key token, colour = share of the token's row (rows normalised, per-head measures averaged over
    heads) in the model's ``layer`` (default the last captured). ``token`` is a position or a token string (its
    first occurrence); ``measures`` default to ``weights`` and every measure the result holds. Returns the axes.
    """
    names = list(measures) if measures is not None else ["weights", *result.measures]
    labels = result.display_tokens
    if isinstance(token, str):
        if token not in result.tokens and token not in labels:
            raise InputError(f"token '{token}' is not in the input; tokens: {' '.join(labels)}")
        i = result.tokens.index(token) if token in result.tokens else labels.index(token)
    else:
        if not 0 <= token < result.seq_len:
            raise InputError(f"token {token} is out of range; valid positions: 0..{result.seq_len - 1}")
        i = token
    grid = np.stack([measure_layer(result, n, layer)[i].numpy() for n in names], 1)  # [T, measures]
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(2.2 + 1.1 * len(names), min(2.5 + 0.3 * len(labels), 14)))
    im = ax.imshow(grid, cmap="Purples", vmin=0, vmax=max(float(grid.max()), 1e-12), aspect="auto",
                   interpolation="nearest")
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
    thin_ticks(ax, labels, len(labels), "y")
    ax.set_ylabel("key token")
    shown = result.layer_ids[-1] if layer is None else layer
    title = readable_text([f"what '{labels[i]}' takes from each token, layer {shown}"])  # the token in any script
    ax.set_title(title.texts[0], **title.style())
    if len(labels) <= 24:
        for r in range(grid.shape[0]):
            for c in range(grid.shape[1]):
                ax.text(c, r, f"{grid[r, c]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if grid[r, c] > 0.6 * grid.max() else "black")
    return ax


def plot_measure_map(result: AttentionResult, name: str, layer: int | None = None, *, ax: Axes | None = None) -> Axes:
    """Draw measure ``name``'s ``[query, key]`` shares in the model's ``layer`` (default the last captured; rows
    normalised, per-head measures averaged over heads) as a heatmap; returns the axes."""
    shown = result.layer_ids[-1] if layer is None else layer
    labels = result.display_tokens
    return plot_attention_heatmap(measure_layer(result, name, layer), labels, labels, ax=ax, vmax=None,
                                  title=f"{name}, layer {shown} (share of each row)",
                                  quantity=f"{name} share of the row")
