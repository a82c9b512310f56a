"""Image views: attention maps drawn over the image a vision transformer saw.

Axes-level functions take the data (an image result, or a map and its grid) and an optional ``ax`` and return the
axes: :func:`plot_image_overlay` (any patch map over the image), :func:`plot_cls_attention` (DINO's ``[CLS]``
maps, one head or the mean, optionally only the top x % of the mass), :func:`plot_image_rollout`,
:func:`plot_patch_query` and :func:`plot_attention_distance` (the ViT paper's distance-by-depth figure).
:func:`plot_cls_attention_heads` is the figure of one layer's heads that ``inspect IMAGE`` writes. A patch map is
upsampled to the image block by block (each patch's value fills its ``patch x patch`` pixels, as DINO's nearest
upsampling does), scaled from its minimum to its maximum, coloured with ``inferno`` (bright = high) and blended with the image
(:func:`overlay_rgb`). The image is the model's input (after the processor's resize and crop).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from ..capture.grid import PatchGrid
from ..capture.result import AttentionResult
from ..core.errors import InputError
from ..stats.vision import (
    cls_attention, distance_table, image_grid, image_rollout, patch_query, top_mass_mask,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "overlay_rgb",
    "plot_attention_distance",
    "plot_cls_attention",
    "plot_cls_attention_heads",
    "plot_image_overlay",
    "plot_image_rollout",
    "plot_patch_query",
    "upsample",
]

CMAP = "inferno"


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _axes(ax: "Axes | None", size: float = 4.0) -> "Axes":
    if ax is not None:
        return ax
    _, ax = _plt().subplots(figsize=(size, size))
    return ax


def upsample(patch_map: np.ndarray, grid: PatchGrid) -> np.ndarray:
    """``[rows, cols]`` -> ``[rows*patch, cols*patch]``: each patch's value over its pixels."""
    m = np.asarray(patch_map, dtype=np.float64)
    if m.shape != (grid.rows, grid.cols):
        raise InputError(f"a patch map of this image must be {grid.rows} x {grid.cols}, got {list(m.shape)}")
    return np.kron(m, np.ones((grid.patch, grid.patch)))


def overlay_rgb(image: np.ndarray, patch_map: np.ndarray, grid: PatchGrid, *, alpha: float = 0.6,
                mask: np.ndarray | None = None) -> np.ndarray:
    """``float [H, W, 3]`` in 0..1: ``image`` (``uint8 [H, W, 3]``) blended with the colour-mapped patch map
    (``inferno``, the map scaled from its minimum (dark) to its maximum (bright); ``alpha`` of the colour). Patches outside ``mask`` (boolean
    ``[rows, cols]``, e.g. :func:`~hf_attn_inspect.stats.vision.top_mass_mask`) show the image darkened."""
    from matplotlib import colormaps

    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    m = np.asarray(patch_map, dtype=np.float64)
    low, span = (m.min(), np.ptp(m)) if m.size else (0.0, 0.0)
    m = (m - low) / span if span > 0 else np.zeros_like(m)
    colour = colormaps[CMAP](upsample(m, grid))[..., :3]
    base = np.asarray(image, dtype=np.float64)[: grid.height, : grid.width] / 255.0
    if base.shape[:2] != colour.shape[:2]:
        raise InputError(f"the image is {base.shape[1]} x {base.shape[0]} pixels but the grid covers {grid.width} x {grid.height}")
    out = (1 - alpha) * base + alpha * colour
    if mask is not None:
        keep = upsample(np.asarray(mask, dtype=np.float64), grid)[..., None] > 0.5
        out = np.where(keep, out, 0.3 * base)
    return np.clip(out, 0.0, 1.0)


def plot_image_overlay(image: np.ndarray, patch_map: np.ndarray, grid: PatchGrid, *, ax: "Axes | None" = None,
                       title: str | None = None, alpha: float = 0.6, mask: np.ndarray | None = None,
                       boxes: Sequence[tuple[int, int]] = (), box_color: str = "cyan") -> "Axes":
    """Draw ``patch_map [rows, cols]`` over ``image`` (:func:`overlay_rgb`); ``boxes`` are grid positions
    ``(row, col)`` outlined in ``box_color`` (a query patch, artifact patches). Returns the axes."""
    from matplotlib.patches import Rectangle

    ax = _axes(ax)
    ax.imshow(overlay_rgb(image, patch_map, grid, alpha=alpha, mask=mask), interpolation="nearest")
    for r, c in boxes:
        ax.add_patch(Rectangle((c * grid.patch - 0.5, r * grid.patch - 0.5), grid.patch, grid.patch, fill=False,
                               edgecolor=box_color, linewidth=1.5))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def _image(result: AttentionResult) -> np.ndarray:
    if result.image is None:
        raise InputError("this result keeps no image to draw over (capture it from an image)")
    return result.image


def plot_cls_attention(result: AttentionResult, layer: int | None = None, head: int | None = None, *,
                       top_mass: float | None = None, ax: "Axes | None" = None, alpha: float = 0.6,
                       artifacts: np.ndarray | None = None) -> "Axes":
    """DINO's self-attention map: the ``[CLS]`` query's weights on the patches in model layer ``layer`` (default:
    the last captured) for ``head`` (None: the mean of the heads), over the image. ``top_mass`` (0..1) keeps only
    the largest patches holding that share of the map's mass; ``artifacts`` (boolean ``[rows, cols]``,
    :func:`~hf_attn_inspect.stats.vision.artifact_patches`) are outlined. Returns the axes."""
    grid = image_grid(result)
    maps = cls_attention(result, layer, None if head is None else [head])
    m = maps.mean(0)
    lid = result.layer_ids[-1] if layer is None else layer
    mask = None if top_mass is None else top_mass_mask(m, top_mass)
    which = "mean of heads" if head is None else f"head {head}"
    title = f"[CLS] attention, layer {lid}, {which}" + ("" if top_mass is None else f", top {top_mass:.0%} of mass")
    marks = [] if artifacts is None else [tuple(p) for p in np.argwhere(np.asarray(artifacts))]
    return plot_image_overlay(_image(result), m, grid, ax=ax, title=title, alpha=alpha, mask=mask, boxes=marks,
                              box_color="red")


def plot_cls_attention_heads(result: AttentionResult, layer: int | None = None, *, top_mass: float | None = None,
                             artifacts: np.ndarray | None = None) -> "Figure":
    """One layer's ``[CLS]`` maps, one panel per captured head plus the image itself (:func:`plot_cls_attention`)."""
    n = result.num_heads + 1
    cols = min(n, max(3, int(np.ceil(np.sqrt(n)))))
    rows = -(-n // cols)
    fig, axes = _plt().subplots(rows, cols, figsize=(2.6 * cols, 2.7 * rows), squeeze=False)
    flat = axes.ravel()
    flat[0].imshow(_image(result)[: image_grid(result).height, : image_grid(result).width])
    flat[0].set_title("image (as the model saw it)", fontsize=9)
    flat[0].set_xticks([])
    flat[0].set_yticks([])
    for i, h in enumerate(result.head_ids):
        plot_cls_attention(result, layer, h, top_mass=top_mass, ax=flat[i + 1], artifacts=artifacts)
        flat[i + 1].set_title(f"head {h}", fontsize=9)
    for ax in flat[n:]:
        ax.axis("off")
    lid = result.layer_ids[-1] if layer is None else layer
    fig.suptitle(f"[CLS] attention over the image, layer {lid}"
                 + ("" if top_mass is None else f" (top {top_mass:.0%} of each map's mass)"), fontsize=10)
    fig.tight_layout()
    return fig


def plot_image_rollout(result: AttentionResult, head_fusion: str = "mean", discard_ratio: float = 0.0, *,
                       ax: "Axes | None" = None, alpha: float = 0.6) -> "Axes":
    """Attention rollout over the image (:func:`~hf_attn_inspect.stats.vision.image_rollout`: the ``[CLS]`` row of
    the rollout after the last captured layer, heads fused by ``head_fusion``, ``discard_ratio`` of the weakest
    weights dropped). Returns the axes."""
    m = image_rollout(result, head_fusion, discard_ratio)
    title = f"rollout ({head_fusion} of heads" + (f", {discard_ratio:.0%} discarded)" if discard_ratio else ")")
    return plot_image_overlay(_image(result), m, image_grid(result), ax=ax, title=title, alpha=alpha)


def plot_patch_query(result: AttentionResult, row: int, col: int, layer: int | None = None, head: int | None = None,
                     *, ax: "Axes | None" = None, alpha: float = 0.6) -> "Axes":
    """Patch ``(row, col)``'s attention over the image in model layer ``layer`` (default last) and ``head`` (None:
    mean of heads); the query patch is outlined in cyan. Returns the axes."""
    m = patch_query(result, layer, head, row, col)
    lid = result.layer_ids[-1] if layer is None else layer
    which = "mean of heads" if head is None else f"head {head}"
    return plot_image_overlay(_image(result), m, image_grid(result), ax=ax, alpha=alpha, boxes=[(row, col)],
                              title=f"patch ({row},{col}) attends, layer {lid}, {which}")


def plot_attention_distance(data: AttentionResult | Sequence[AttentionResult] | pd.DataFrame, *,
                            ax: "Axes | None" = None, unit: str = "px") -> "Axes":
    """Mean attention distance of every head against depth (Dosovitskiy et al. 2020, Fig. 7): one dot per head
    at its layer, in pixels (``unit="px"``) or patches (``"patches"``). ``data`` is an image result, a list of them
    or a :func:`~hf_attn_inspect.stats.vision.distance_table`. Returns the axes."""
    if unit not in ("px", "patches"):
        raise InputError(f"unit must be 'px' or 'patches', got '{unit}'")
    df = data if isinstance(data, pd.DataFrame) else distance_table(data)
    col = f"attention_distance_{unit}"
    if col not in df.columns:
        raise InputError(f"the table has no '{col}' column; give a distance_table or image results")
    ax = _axes(ax, 4.5)
    heads = sorted(df["head"].unique())
    cmap = _plt().get_cmap("tab10" if len(heads) <= 10 else "tab20")
    for i, h in enumerate(heads):
        d = df[df["head"] == h]
        ax.scatter(d["layer"], d[col], s=18, color=cmap(i % cmap.N), label=f"head {h}")
    ax.set_xlabel("layer (depth)")
    ax.set_ylabel("mean attention distance" + (" (pixels)" if unit == "px" else " (patches)"))
    ax.set_title("Mean attention distance per head")
    ax.set_xticks(sorted(df["layer"].unique()))
    ax.set_ylim(0, max(1.0, float(df[col].max()) * 1.1))
    if len(heads) <= 16:
        ax.legend(fontsize=6, ncol=2, loc="best")
    return ax

