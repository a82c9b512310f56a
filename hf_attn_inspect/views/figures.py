"""Publication figures: attention differences, per-head metric maps, a static head view, and rollout.

Axes-level in the seaborn style: each function takes data and an optional ``ax``, draws, and returns
the axes; none calls ``show()`` or prints. Save with ``ax.figure.savefig("x.pdf")`` or
:func:`hf_attn_inspect.views.plotting.save_figure` (PNG, SVG, PDF). Tick labels are thinned on long inputs
(:func:`hf_attn_inspect.views.plotting.thin_ticks`) and numbers are written in cells only up to 16 tokens.
Every function that takes an :class:`~hf_attn_inspect.AttentionResult` accepts ``level="word"`` to merge
sub-word pieces into words first (:func:`hf_attn_inspect.stats.aggregate.words`: sum over keys, mean over
queries; rows still sum to 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..capture.result import AttentionResult
from ..core.errors import InputError
from ..core.tokens import clean_token
from ..stats.aggregate import aggregate_words, attention_rollout, head_average, word_units, words
from .explorer import HeadClasses, class_lookup
from .plotting import ANNOTATE_MAX_TOKENS, MAX_TICK_LABELS, Weights, plot_attention_heatmap, thin_ticks

if TYPE_CHECKING:  # matplotlib is imported when a function draws
    from matplotlib.axes import Axes

__all__ = ["plot_attention_diff", "plot_head_metric_map", "plot_head_view", "plot_rollout"]


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _level(result: AttentionResult, level: str) -> AttentionResult:
    if level == "token":
        return result
    if level == "word":
        return words(result)
    raise InputError(f"unknown level '{level}'; use 'token' or 'word'")


def _labels(result: AttentionResult, which: str) -> tuple[list[str], list[str]]:
    _, q, k = result.stack(which)
    return [clean_token(t) for t in q], [clean_token(t) for t in k]


def _layer_pos(result: AttentionResult, layer: int | None) -> int:
    return result.num_layers - 1 if layer is None else result.layer_index(layer)


def _select(result: AttentionResult, layer: int | None, head: int | None, which: str) -> tuple[np.ndarray, str]:
    """One ``[query, key]`` matrix: a head, or the mean of all captured heads when ``head`` is None."""
    att = result.stack(which)[0]
    li = _layer_pos(result, layer)
    name = f"layer {result.layer_ids[li]}"
    if head is None:
        return head_average(att[li]).numpy(), name + ", mean of heads"
    return att[li, result.head_index(head)].float().numpy(), name + f", head {head}"


def _as_matrix(x: Weights) -> np.ndarray:
    arr = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise InputError(f"expected a [query, key] matrix, got shape {arr.shape}")
    return arr


def _annotate(ax: Axes, w: np.ndarray, fmt: str, dark: Callable[[float], bool]) -> None:
    for i in range(w.shape[0]):
        for j in range(w.shape[1]):
            ax.text(j, i, format(w[i, j], fmt), ha="center", va="center", fontsize=7,
                    color="white" if dark(w[i, j]) else "black")


def _new_ax(nq: int, nk: int, ax: Axes | None) -> Axes:
    if ax is not None:
        return ax
    _, ax = _plt().subplots(figsize=(min(4 + 0.35 * nk, 16), min(3 + 0.3 * nq, 14)))
    return ax


def plot_attention_diff(
    a: AttentionResult | Weights,
    b: AttentionResult | Weights,
    *,
    layer: int | None = None,
    head: int | None = None,
    which: str = "self",
    level: str = "token",
    tokens: Sequence[str] | None = None,
    names: tuple[str, str] = ("a", "b"),
    annotate: bool | str = "auto",
    ax: Axes | None = None,
    cmap: str = "RdBu_r",
    title: str | None = None,
) -> Axes:
    """Draw ``a - b`` for two results (or two ``[query, key]`` matrices) on the same tokens; return the axes.

    The colour scale is diverging, centred at 0 and symmetric: ``[-m, m]`` with ``m = max |a - b|`` (1 when
    the two are identical, and the title then says so), so red means ``a`` attends more, blue means ``b``
    does; the colour bar's ticks carry their own exponent (no offset text). For results, ``layer`` is a model layer index
    (default: the last captured) and ``head`` a head index (default: the mean of all heads). Both
    results must hold the same tokens (e.g. two checkpoints, or one model with and without a change).
    """
    if isinstance(a, AttentionResult) and isinstance(b, AttentionResult):
        if a.stack(which)[1:] != b.stack(which)[1:]:
            raise InputError("the two results hold different tokens; compare results of the same text and tokenizer")
        ra, rb = _level(a, level), _level(b, level)
        wa, desc = _select(ra, layer, head, which)
        wb, _ = _select(rb, layer, head, which)
        ylab, xlab = _labels(ra, which)
    elif isinstance(a, AttentionResult) or isinstance(b, AttentionResult):
        raise InputError("pass two results or two [query, key] matrices, not one of each")
    else:
        wa, wb, desc = _as_matrix(a), _as_matrix(b), ""
        if wa.shape != wb.shape:
            raise InputError(f"the matrices differ in shape: {wa.shape} vs {wb.shape}")
        xlab = ylab = list(tokens) if tokens is not None else None
    diff = wa - wb
    m = float(np.abs(diff).max())
    identical = m == 0.0
    m = m or 1.0  # identical: the full range a difference of weights can take
    ax = _new_ax(*diff.shape, ax)
    im = ax.imshow(diff, cmap=cmap, vmin=-m, vmax=m, aspect="auto", interpolation="nearest")
    # "{x:.2g}" writes 1e-06 in the ticks themselves: no offset/multiplier text above the bar to crowd the title
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=f"{names[0]} - {names[1]}", format="{x:.2g}")
    thin_ticks(ax, xlab, diff.shape[1], "x")
    thin_ticks(ax, ylab, diff.shape[0], "y")
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    ax.set_title((title if title is not None else f"Attention difference {names[0]} - {names[1]}" + (f" ({desc})" if desc else ""))
                 + (" (identical)" if identical else ""))
    if (max(diff.shape) <= ANNOTATE_MAX_TOKENS) if annotate == "auto" else bool(annotate):
        _annotate(ax, diff, "+.2f", lambda v: abs(v) > 0.6 * m)
    return ax


def plot_head_metric_map(
    metrics: pd.DataFrame,
    metric: str = "entropy",
    *,
    classes: HeadClasses | bool | None = None,
    annotate: bool = True,
    ax: Axes | None = None,
    cmap: str = "viridis",
    title: str | None = None,
) -> Axes:
    """Draw a layers x heads heatmap of one metric of :func:`hf_attn_inspect.stats.tables.head_metrics`; return the axes.

    ``metrics`` has ``layer``, ``head`` and the ``metric`` column (one row per head; several rows per
    head, e.g. ``per_sentence=True``, are averaged). Each cell shows the value when ``annotate``; with
    ``classes`` (a DataFrame with ``layer``, ``head`` and a ``class`` column, a Series indexed by
    ``(layer, head)``, a dict ``{(layer, head): name}``, or ``True`` to use a ``class`` column of
    ``metrics``) each cell also names the class of its head.
    """
    import seaborn as sns

    if not isinstance(metrics, pd.DataFrame) or not {"layer", "head", metric} <= set(metrics.columns):
        raise InputError(f"metrics must be a DataFrame with columns layer, head and {metric!r} (see head_metrics)")
    grid = metrics.groupby(["layer", "head"])[metric].mean().unstack("head").sort_index().sort_index(axis=1)
    values = grid.to_numpy(dtype=float)
    lookup = class_lookup(metrics if classes is True else classes) if classes is not None and classes is not False else {}
    annot: np.ndarray | bool = False
    if annotate or lookup:
        cells = np.empty(values.shape, dtype=object)
        for i, layer in enumerate(grid.index):
            for j, head in enumerate(grid.columns):
                parts = [f"{values[i, j]:.2f}"] if annotate else []
                if lookup:
                    parts.append(lookup.get((int(layer), int(head)), ""))
                cells[i, j] = "\n".join(parts)
        annot = cells
    if ax is None:
        _, ax = _plt().subplots(figsize=(1.0 + 0.75 * values.shape[1], 1.0 + 0.55 * values.shape[0] * (1.5 if lookup else 1)))
    sns.heatmap(grid, ax=ax, cmap=cmap, annot=annot, fmt="", annot_kws={"fontsize": 7 if lookup else 8},
                cbar_kws={"label": metric}, linewidths=0.5, linecolor="white")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title if title is not None else f"{metric} per head")
    return ax


def plot_head_view(
    data: AttentionResult | Weights,
    tokens: Sequence[str] | None = None,
    *,
    layer: int | None = None,
    heads: Sequence[int] | None = None,
    which: str = "self",
    level: str = "token",
    threshold: float = 0.02,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """The static head view: query tokens left, key tokens right, a line per weight; return the axes.

    A line joins query ``i`` to key ``j`` with opacity equal to the weight (weights below ``threshold``
    are not drawn); each head has its own colour. ``data`` is a result (``layer``: a model layer index,
    default the last captured; ``heads``: model head indices, default all captured) or weights
    ``[heads, query, key]`` / ``[query, key]`` with ``tokens``. Long inputs keep every line but label
    only every k-th token (at most 40 labels per side).
    """
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    if isinstance(data, AttentionResult):
        r = _level(data, level)
        att = r.stack(which)[0]
        li = _layer_pos(r, layer)
        head_ids = list(r.head_ids) if heads is None else list(heads)
        w = att[li, [r.head_index(h) for h in head_ids]].float().numpy()
        qlab, klab = _labels(r, which)
        desc = f"layer {r.layer_ids[li]}"
    else:
        w = data.detach().float().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data, np.float32)
        if w.ndim == 2:
            w = w[None]
        if w.ndim != 3:
            raise InputError(f"weights must be [heads, query, key] or [query, key], got shape {w.shape}")
        head_ids = list(range(w.shape[0])) if heads is None else list(heads)
        qlab = klab = list(tokens) if tokens is not None else None
        desc = ""
    nh, nq, nk = w.shape
    import seaborn as sns

    colors = np.asarray(sns.color_palette("husl", max(nh, 1)))
    h_idx, qi, ki = np.nonzero(w >= threshold)
    alpha = np.clip(w[h_idx, qi, ki], 0.0, 1.0)
    segments = np.stack([np.stack([np.zeros_like(qi), qi], -1), np.stack([np.ones_like(ki), ki], -1)], 1).astype(float)
    rgba = np.concatenate([colors[h_idx], alpha[:, None]], 1)
    n = max(nq, nk)
    if ax is None:
        _, ax = _plt().subplots(figsize=(5, min(max(3.0, 0.22 * min(n, 4 * MAX_TICK_LABELS)), 16)))
    lines = LineCollection(segments, colors=rgba, linewidths=1.5 if n <= 64 else 0.6)
    ax.add_collection(lines)
    ax.set_xlim(0, 1)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    thin_ticks(ax, qlab, nq, "y")
    twin = ax.twinx()
    twin.set_ylim(n - 0.5, -0.5)
    thin_ticks(twin, klab, nk, "y")
    for side in ("top", "right", "bottom", "left"):
        twin.spines[side].set_visible(False)
    ax.tick_params(axis="y", length=0)
    twin.tick_params(axis="y", length=0)
    ax.text(0, -0.02, "query", transform=ax.transAxes, ha="center", va="top", fontsize=8)
    ax.text(1, -0.02, "key", transform=ax.transAxes, ha="center", va="top", fontsize=8)
    if nh > 1 or head_ids:
        handles = [Line2D([0], [0], color=colors[i], lw=2, label=f"head {h}") for i, h in enumerate(head_ids)]
        if nh <= 16:
            ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.04), ncol=min(nh, 6),
                      fontsize=7, frameon=False)
    ax.set_title(title if title is not None else "Head view" + (f" ({desc})" if desc else ""))
    return ax


def plot_rollout(
    result: AttentionResult,
    *,
    layer: int | None = None,
    kind: str = "rollout",
    which: str = "self",
    level: str = "token",
    residual: float = 0.5,
    annotate: bool | str = "auto",
    ax: Axes | None = None,
    cmap: str = "Blues",
    title: str | None = None,
) -> Axes:
    """Draw attention rollout after ``layer`` (``kind="rollout"``) or that layer's head average (``kind="mean"``); return the axes.

    Rollout is :func:`hf_attn_inspect.stats.aggregate.attention_rollout` (Abnar & Zuidema 2020) computed on
    tokens, then merged into words when ``level="word"``: row ``i`` shows how much of each input token
    reaches position ``i`` after ``layer`` (a model layer index, default the last captured). Colour runs
    from 0 to the matrix maximum; values are written in cells up to 16 tokens.
    """
    if not isinstance(result, AttentionResult):
        raise InputError("plot_rollout needs an AttentionResult")
    li = _layer_pos(result, layer)
    if kind == "rollout":
        m = attention_rollout(result, which=which, residual=residual)[li]
        name = f"Attention rollout after layer {result.layer_ids[li]}"
    elif kind == "mean":
        m = head_average(result.stack(which)[0][li])
        name = f"Mean of heads, layer {result.layer_ids[li]}"
    else:
        raise InputError(f"unknown kind '{kind}'; use 'rollout' or 'mean'")
    r = result
    if level == "word":
        if which == "decoder":
            units = word_units(result.decoder_word_ids, result.decoder_special_tokens_mask)
        else:
            units = word_units(result.word_ids, result.special_tokens_mask, result.segment_ids)
        m = aggregate_words(m, units)
        r = words(result)
    elif level != "token":
        raise InputError(f"unknown level '{level}'; use 'token' or 'word'")
    ylab, xlab = _labels(r, which)
    return plot_attention_heatmap(m.numpy(), xlab, ylab, ax=ax, title=title if title is not None else name,
                                  cmap=cmap, vmax=None, annotate=annotate)
