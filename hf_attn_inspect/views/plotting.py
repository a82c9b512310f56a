"""Static attention figures (the chapter's heatmap and multi-head plots, improved, plus a model view).

All functions are axes- or figure-level in the seaborn style: they take data (a ``[query, key]``,
``[heads, query, key]`` or ``[layers, heads, query, key]`` array or tensor) and an optional ``ax``/``fig``,
draw, and return the axes or figure. They never call ``show()`` and never print; save with
``fig.savefig(...)`` or :func:`save_figure`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np
import torch

from ..core.errors import InputError
from ..core.files import atomic_path
from .fonts import readable_text

if TYPE_CHECKING:  # matplotlib is imported when a function draws, so importing this module stays cheap
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "plot_attention_heatmap",
    "plot_multi_head_attention",
    "plot_model_view",
    "thin_ticks",
    "weight_colorbar",
    "label_font_size",
    "save_figure",
    "default_scale",
    "range_note",
    "weight_range",
    "SCALES",
    "SQRT_SCALE_ABOVE",
    "Weights",
]

#: Values are written in the cells of a heatmap up to this many tokens per side (``annotate="auto"``).
ANNOTATE_MAX_TOKENS = 16
#: At most this many tick labels per axis (:func:`thin_ticks`).
MAX_TICK_LABELS = 40

#: Colour scales of the weight figures: ``linear`` (colour proportional to the weight) and ``sqrt`` (colour
#: proportional to its square root, the explorer's square-root scale: faint weights of long inputs stay visible).
SCALES = ("linear", "sqrt")
#: Inputs longer than this many tokens are drawn on the ``sqrt`` scale by default (:func:`default_scale`).
SQRT_SCALE_ABOVE = 150
#: Tick values of a colour bar on the ``sqrt`` scale (the ones inside its range are used).
_SQRT_TICKS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
#: Above :data:`SQRT_SCALE_ABOVE` keys, the colour range of a weight figure ends at this quantile of its
#: weights (:func:`weight_range`).
RANGE_QUANTILE = 0.995
#: A model-view thumbnail holds at most this many cells per side; larger heads are max-pooled to it.
MODEL_VIEW_CELLS = 128

#: Attention weights as the plotting functions take them: a tensor (any device, any dtype) or an array.
Weights = Union[torch.Tensor, np.ndarray]


def _as_array(weights: Weights, ndim: int, what: str) -> np.ndarray:
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().float().cpu().numpy()
    arr = np.asarray(weights, dtype=np.float32)
    if arr.ndim != ndim:
        raise InputError(f"{what} must have {ndim} dimensions, got shape {arr.shape}")
    return arr


def _plt():
    import matplotlib.pyplot as plt

    return plt


def default_scale(n_tokens: int) -> str:
    """The colour scale a figure of ``n_tokens`` tokens uses by default: ``sqrt`` above
    :data:`SQRT_SCALE_ABOVE` (150) tokens, where a linear scale leaves most cells white, else ``linear``."""
    return "sqrt" if n_tokens > SQRT_SCALE_ABOVE else "linear"


def _scale_name(scale: str) -> str:
    return {"linear": "linear colour scale", "sqrt": "square-root colour scale"}[scale]


def _norm(scale: str, vmin: float, vmax: float):
    """The matplotlib norm of ``scale`` (:data:`SCALES`) from ``vmin`` to ``vmax``."""
    from matplotlib.colors import Normalize, PowerNorm

    if scale not in SCALES:
        raise InputError(f"unknown colour scale '{scale}'; choose one of {', '.join(SCALES)}")
    return PowerNorm(0.5, vmin=vmin, vmax=vmax) if scale == "sqrt" else Normalize(vmin=vmin, vmax=vmax)


def weight_range(weights: Weights) -> float:
    """The top of the colour range that shows ``weights`` (``[..., query, key]``): 1 (the weight's full
    range) up to :data:`SQRT_SCALE_ABOVE` keys; above, where a row's weights are about 1/keys and a 0..1
    range draws them white, the 99.5th percentile of the weights, at least twice the uniform weight
    2/keys and at most 1 (the few brighter cells take the darkest colour, and the colour bar says so)."""
    w = weights.detach().float().cpu().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights, np.float32)
    keys = w.shape[-1]
    if keys <= SQRT_SCALE_ABOVE or w.size == 0:
        return 1.0
    return float(min(1.0, max(np.quantile(w, RANGE_QUANTILE), 2.0 / keys)))


def range_note(vmax: float, scale: str) -> str:
    """``'colour 0-0.0123 (square-root colour scale; brighter cells clipped)'``: a figure title's words for
    a colour range that ends below 1 (empty for the full 0..1 range)."""
    if vmax >= 1.0:
        return ""
    return f"colour 0-{vmax:.3g} ({_scale_name(scale)}; brighter cells clipped)"


def weight_colorbar(fig: Figure, image, scale: str, quantity: str = "attention weight", **kwargs):
    """A colour bar labelled with the ``quantity`` drawn (the weight, or a measure's share of the row) and the
    scale; on the sqrt scale its ticks are 0, 0.01, 0.05, ... (with the top of a range below 1 added); a range
    below 1 ends in an arrow (brighter cells clipped)."""
    lo, hi = image.norm.vmin, image.norm.vmax
    if hi < 1.0:
        kwargs.setdefault("extend", "max")
    bar = fig.colorbar(image, label=f"{quantity} ({_scale_name(scale)})", **kwargs)
    if scale == "sqrt":
        ticks = [t for t in _SQRT_TICKS if lo <= t <= hi]
        if 0 < hi < 1.0 and (not ticks or ticks[-1] < 0.8 * hi):
            unit = 10.0 ** (math.floor(math.log10(hi)) - 1)
            ticks.append(round(math.floor(hi / unit) * unit, 12))  # two significant digits, inside the range
        bar.set_ticks(ticks)
    return bar


def label_font_size(n: int) -> float:
    """The font size (points) of tick labels when ``n`` labels share an axis: 9 up to 8 labels, smaller as
    they grow (10 - 4 log10(n / 8)), never below 5."""
    return float(np.clip(10 - 4 * math.log10(max(n, 1) / 8 + 1e-9), 5, 9)) if n > 8 else 9.0


def thin_ticks(ax: Axes, labels: Sequence[str] | None, n: int, axis: str, max_labels: int = MAX_TICK_LABELS) -> None:
    """Label every ``k``-th of ``n`` positions on ``axis`` ('x' or 'y') so at most ``max_labels`` show.

    Font size shrinks with ``n`` (9 pt down to 5 pt); x labels are rotated 90 degrees. Labels in any script
    are drawn with an installed font that has their characters, or as code points (``U+6CE8``) where none
    has them (:func:`hf_attn_inspect.views.fonts.readable_text`). With more than
    ``max_labels`` positions, only every ``ceil(n / max_labels)``-th label is drawn, so labels never
    overlap into an unreadable band on long inputs.
    """
    labels = [str(i) for i in range(n)] if labels is None else [str(t) for t in labels]
    if len(labels) != n:
        raise InputError(f"{len(labels)} labels for {n} positions on the {axis} axis")
    step = max(1, math.ceil(n / max_labels))
    pos = list(range(0, n, step))
    size = label_font_size(min(n, max_labels))
    shown = readable_text([labels[i] for i in pos])  # every script drawn with a font that has it, never boxes
    if axis == "x":
        ax.set_xticks(pos)
        ax.set_xticklabels(shown.texts, rotation=90, fontsize=size, **shown.style())
    else:
        ax.set_yticks(pos)
        ax.set_yticklabels(shown.texts, fontsize=size, **shown.style())


def plot_attention_heatmap(
    attention_weights: Weights,
    x_labels: Sequence[str] | None = None,
    y_labels: Sequence[str] | None = None,
    *,
    ax: Axes | None = None,
    title: str | None = "Attention weights",
    cmap: str = "Blues",
    vmin: float = 0.0,
    vmax: float | str | None = 1.0,
    annotate: bool | str = "auto",
    colorbar: bool = True,
    scale: str = "linear",
    quantity: str = "attention weight",
) -> Axes:
    """Draw one head's ``[query, key]`` weights as a heatmap and return the axes.

    Rows are query tokens (``y_labels``), columns key tokens (``x_labels``); colour runs from ``vmin``
    to ``vmax`` (default 0..1, the weight's full range; ``vmax=None`` uses the data maximum, ``"auto"``
    :func:`weight_range`: 0..1 up to 150 keys, a range that shows the weights of longer inputs, which the
    title then names with :func:`range_note`), on the
    ``linear`` or ``sqrt`` colour ``scale`` (colour proportional to the square root of the weight, so faint
    weights of long inputs stay visible; the colour bar names the scale). Values are written in the cells
    only where readable: ``annotate="auto"`` does so up to 16 x 16 tokens.
    Tick labels are thinned on long inputs (:func:`thin_ticks`). ``quantity`` names what the colour bar
    shows (default the attention weight; a measure's figure says e.g. ``"alti share of the row"``).
    """
    w = _as_array(attention_weights, 2, "attention_weights")
    plt = _plt()
    if ax is None:
        q, k = w.shape
        _, ax = plt.subplots(figsize=(min(4 + 0.35 * k, 16), min(3 + 0.3 * q, 14)))
    if vmax == "auto":
        vmax = weight_range(w)
        note = range_note(vmax, scale)
        title = f"{title}\n{note}" if title and note else title
    norm = _norm(scale, vmin, vmax if vmax is not None else float(w.max() or 1.0))
    im = ax.imshow(w, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    if colorbar:
        weight_colorbar(ax.figure, im, scale, quantity, ax=ax, fraction=0.046, pad=0.04)
    thin_ticks(ax, x_labels, w.shape[1], "x")
    thin_ticks(ax, y_labels, w.shape[0], "y")
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    if title:
        ax.set_title(title)
    show = max(w.shape) <= ANNOTATE_MAX_TOKENS if annotate == "auto" else bool(annotate)
    if show:
        shade = norm(w)
        for i in range(w.shape[0]):
            for j in range(w.shape[1]):
                ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if shade[i, j] > 0.6 else "black")
    return ax


def plot_multi_head_attention(
    attention_weights: Weights,
    tokens: Sequence[str] | None = None,
    *,
    head_ids: Sequence[int] | None = None,
    fig: Figure | None = None,
    ncols: int = 4,
    title: str | None = "Multi-head attention",
    cmap: str = "Blues",
    scale: str = "linear",
    vmax: float | str = 1.0,
    quantity: str = "attention weight",
) -> Figure:
    """Draw every head of one layer (``[heads, query, key]``) in a grid and return the figure.

    One panel per head titled with its model index (``head_ids``, default 0..H-1), all on the same
    colour scale (``linear`` or ``sqrt``, named on the one shared colour bar) from 0 to ``vmax`` (default
    1; ``"auto"``: :func:`weight_range` of all heads, named in the title when below 1); ``tokens`` label
    both axes of each panel (thinned on long inputs; only the left column and bottom row carry labels).
    """
    w = _as_array(attention_weights, 3, "attention_weights")
    h, q, k = w.shape
    head_ids = list(range(h)) if head_ids is None else list(head_ids)
    plt = _plt()
    ncols = max(1, min(ncols, h))
    nrows = math.ceil(h / ncols)
    if fig is None:
        size = 3.2 if q <= 32 else 4.0
        fig = plt.figure(figsize=(ncols * size + 1, nrows * size + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    if vmax == "auto":
        vmax = weight_range(w)
        note = range_note(vmax, scale)
        title = f"{title}\n{note}" if title and note else title
    im = None
    for idx, ax in enumerate(axes):
        if idx >= h:
            ax.axis("off")
            continue
        im = ax.imshow(w[idx], cmap=cmap, norm=_norm(scale, 0.0, float(vmax)), aspect="auto", interpolation="nearest")
        ax.set_title(f"head {head_ids[idx]}", fontsize=10)
        row, col = divmod(idx, ncols)
        if tokens is not None and col == 0:
            thin_ticks(ax, tokens, q, "y", max_labels=24)
        else:
            ax.set_yticks([])
        if tokens is not None and (row == nrows - 1 or idx + ncols >= h):
            thin_ticks(ax, tokens, k, "x", max_labels=24)
        else:
            ax.set_xticks([])
    if im is not None:
        weight_colorbar(fig, im, scale, quantity, ax=list(axes[:h]), shrink=0.6)
    if title:
        fig.suptitle(title, fontweight="bold")
    return fig


def plot_model_view(
    attentions: Weights,
    *,
    layer_ids: Sequence[int] | None = None,
    head_ids: Sequence[int] | None = None,
    fig: Figure | None = None,
    cmap: str = "Blues",
    title: str | None = "Model view (rows: layers, columns: heads)",
    scale: str | None = None,
    quantity: str = "attention weight",
) -> Figure:
    """Draw a layers x heads grid of thumbnails of ``[layers, heads, query, key]`` weights; return the figure.

    Each thumbnail is one head's full matrix (rows: queries, columns: keys) on one 0..1 colour scale
    without tick labels, framed; rows are labelled with the model's layer index (``L<i>``) and columns with
    the head index (``H<j>``), and one colour bar names the ``scale``: ``linear`` or ``sqrt`` (colour
    proportional to the square root of the weight; default :func:`default_scale`: ``sqrt`` above 150
    tokens); the title says which. Heads longer than 128 tokens are max-pooled to 128 x 128 cells, so
    one-token-wide lines stay visible. The grid is one image on one axes (the thumbnails separated by
    blank gaps, their frames one collection), so 72 heads draw in well under a second.
    """
    w = _as_array(attentions, 4, "attentions")
    nl, nh = w.shape[:2]
    scale = default_scale(w.shape[2]) if scale is None else scale
    pooled = max(w.shape[-2:]) > MODEL_VIEW_CELLS
    w = _max_pool(w, MODEL_VIEW_CELLS)
    q, k = w.shape[-2:]
    layer_ids = list(range(nl)) if layer_ids is None else list(layer_ids)
    head_ids = list(range(nh)) if head_ids is None else list(head_ids)
    mosaic, rows, cols = _model_view_mosaic(w)
    plt = _plt()
    if fig is None:
        fig = plt.figure(figsize=(1.3 * nh + 1, 1.3 * nl + 1))
    ax = fig.add_subplot()
    colours = plt.get_cmap(cmap).copy()
    colours.set_bad("white")  # the gaps between thumbnails
    im = ax.imshow(mosaic, cmap=colours, norm=_norm(scale, 0.0, 1.0), aspect="auto", interpolation="nearest")
    frame_model_view(ax, [y - 0.5 for y in rows], [x - 0.5 for x in cols], q, k, layer_ids, head_ids)
    weight_colorbar(fig, im, scale, quantity, ax=ax, shrink=0.6, pad=0.02, aspect=30)
    if title:
        fig.suptitle(f"{title}\n{_scale_name(scale)} from 0 to 1" + (", heads max-pooled to 128 x 128 cells" if pooled else ""), fontweight="bold")
    return fig


def _model_view_mosaic(w: np.ndarray) -> tuple[np.ndarray, list[int], list[int]]:
    """Lay ``[layers, heads, q, k]`` thumbnails out as one ``[rows, columns]`` image, layers down and heads
    across, separated by NaN gaps of about 6 % of a thumbnail; returns the image and the first row of each
    layer's and the first column of each head's thumbnail."""
    nl, nh, q, k = w.shape
    gq, gk = math.ceil(0.06 * q), math.ceil(0.06 * k)
    grid = np.full((nl, q + gq, nh, k + gk), np.nan, dtype=np.float32)
    grid[:, :q, :, :k] = w.transpose(0, 2, 1, 3)
    mosaic = grid.reshape(nl * (q + gq), nh * (k + gk))[: nl * (q + gq) - gq, : nh * (k + gk) - gk]
    return mosaic, [i * (q + gq) for i in range(nl)], [j * (k + gk) for j in range(nh)]


def frame_model_view(ax: Axes, tops: Sequence[float], lefts: Sequence[float], height: float, width: float,
                     layer_ids: Sequence[int], head_ids: Sequence[int]) -> None:
    """Frame the thumbnails of a layers x heads grid drawn on one axes (thumbnail ``(i, j)`` spans
    ``lefts[j]..lefts[j] + width`` and ``tops[i]..tops[i] + height`` in data units) and label them: the model's
    layer index (``L<i>``) left of each row, the head index (``H<j>``) above each column; no other ticks."""
    from matplotlib.collections import PolyCollection

    frames = [[(x, y), (x + width, y), (x + width, y + height), (x, y + height)] for y in tops for x in lefts]
    ax.add_collection(PolyCollection(frames, facecolors="none", edgecolors="black", linewidths=0.8))
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xticks([x + width / 2 for x in lefts], [f"H{h}" for h in head_ids], fontsize=9)
    ax.set_yticks([y + height / 2 for y in tops], [f"L{l}" for l in layer_ids], fontsize=9)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)


def _max_pool(w: np.ndarray, cells: int) -> np.ndarray:
    """Max-pool the last two axes of ``w`` by one integer factor so neither exceeds ``cells`` (zeros pad the edge)."""
    q, k = w.shape[-2:]
    f = math.ceil(max(q, k) / cells)
    if f <= 1:
        return w
    nq, nk = math.ceil(q / f), math.ceil(k / f)
    pad = np.zeros(w.shape[:-2] + (nq * f, nk * f), dtype=w.dtype)
    pad[..., :q, :k] = w
    return pad.reshape(w.shape[:-2] + (nq, f, nk, f)).max(axis=(-3, -1))


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Save ``fig`` atomically to ``path`` (format from the suffix: .png, .svg, .pdf) and close it."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in ("png", "svg", "pdf"):
        raise InputError(f"unsupported figure format '.{fmt}'; use .png, .svg or .pdf")
    plt = _plt()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=fmt)
    finally:
        plt.close(fig)
    return path
