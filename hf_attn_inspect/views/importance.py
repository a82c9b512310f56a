"""Figures and report of head importance: the layers x heads importance map, the pruning curve, ``report.md``.

Draws from the tables of :mod:`hf_attn_inspect.runs.importance` (:func:`~hf_attn_inspect.runs.importance.head_importance`
and :func:`~hf_attn_inspect.runs.importance.pruning_curve`); :func:`write_importance_report` writes
``importance_map.png``, ``pruning_curve.png`` and ``report.md`` into a run's output directory. The
plotting functions are axes-level: they take the data and an optional ``ax`` and return the axes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np
import pandas as pd

from ..core.errors import InputError
from ..core.files import atomic_write, write_text

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "plot_importance_map",
    "plot_pruning_curve",
    "importance_report_text",
    "write_importance_report",
]

_PATTERN_NAMES = {
    "previous": "previous-token head", "next": "next-token head", "diagonal": "self-token head",
    "column": "column head", "uniform": "uniform head", "broad": "broad head", "sparse": "sparse head",
    "mixed": "mixed-pattern head",
}


_SHORT = {"previous": "prev", "diagonal": "diag", "uniform": "unif", "column": "column", "broad": "broad",
          "sparse": "sparse", "mixed": "mixed", "next": "next"}


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _check(df: pd.DataFrame, columns: set[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame) or not columns <= set(df.columns):
        raise InputError(f"{what} must be a DataFrame with columns {', '.join(sorted(columns))}")


def plot_importance_map(
    importance: pd.DataFrame,
    ax: "Axes | None" = None,
    *,
    stack: str | None = None,
    value: str = "importance",
    patterns: bool = True,
    title: str | None = None,
) -> "Axes":
    """Layers x heads heatmap of ``importance[value]`` for one ``stack`` (default: the first); returns the axes.

    The colours diverge around 0 (red: the objective gets worse without the head, blue: better) when
    values of both signs occur; when every value is >= 0 (gradient importance, or no head whose removal
    helps) the scale runs from 0 (white) to the largest value in reds only, so no colour-bar half stands
    for values that do not occur (and the other way round for all values <= 0). Each cell shows the value
    and, with ``patterns``, the head's pattern class (``pattern`` column).
    """
    import seaborn as sns

    _check(importance, {"layer", "head", value}, "importance")
    df = importance
    if "stack" in df.columns:
        stack = stack or str(df["stack"].iloc[0])
        df = df[df["stack"] == stack]
    grid = df.pivot_table(index="layer", columns="head", values=value, aggfunc="mean").sort_index()
    vals = grid.to_numpy(dtype=float)
    lim = float(np.nanmax(np.abs(vals))) if np.isfinite(vals).any() else 1.0
    lim = lim or 1.0
    pat: Mapping[tuple[int, int], str] = {}
    if patterns and "pattern" in df.columns:
        pat = {(int(l), int(h)): str(p) for l, h, p in zip(df["layer"], df["head"], df["pattern"]) if isinstance(p, str)}
    cells = np.empty(vals.shape, dtype=object)
    fmt = ".2f" if lim >= 0.1 else ".3f" if lim >= 0.01 else ".1e"
    for i, layer in enumerate(grid.index):
        for j, head in enumerate(grid.columns):
            text = "" if not np.isfinite(vals[i, j]) else format(vals[i, j], fmt)
            p = pat.get((int(layer), int(head)), "")
            cells[i, j] = f"{text}\n{_SHORT.get(p, p[:6])}" if p else text
    if ax is None:
        _, ax = _plt().subplots(figsize=(1.4 + 0.72 * vals.shape[1], 1.2 + 0.62 * vals.shape[0]))
    unit = importance.attrs.get("unit", "")
    label = value + (f" ({unit})" if unit and value == "importance" else "")
    finite = vals[np.isfinite(vals)]
    lo, hi = (-lim, lim)
    if finite.size and finite.min() >= 0:
        lo = 0.0
    elif finite.size and finite.max() <= 0:
        hi = 0.0
    cmap = "RdBu_r" if lo < 0 < hi else "Reds" if lo == 0 else "Blues_r"
    sns.heatmap(grid, ax=ax, cmap=cmap, vmin=lo, vmax=hi, annot=cells, fmt="",
                annot_kws={"fontsize": 7}, cbar_kws={"label": label, "format": "%.2g"}, linewidths=0.5,
                linecolor="white")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    method = importance.attrs.get("method", "")
    default = f"Head importance ({method}{', ' + stack if stack and stack != 'self' else ''})" if method else "Head importance"
    ax.set_title(title if title is not None else default)
    return ax


def plot_pruning_curve(curve: pd.DataFrame, ax: "Axes | None" = None, *, title: str | None = None) -> "Axes":
    """The objective (with +-1 standard error of its change) against the share of heads removed, least
    important first; with an ``accuracy`` column, accuracy on a second y axis. Returns the main axes."""
    _check(curve, {"fraction", "objective"}, "curve")
    if ax is None:
        _, ax = _plt().subplots(figsize=(6.4, 4.2))
    x = curve["fraction"].to_numpy(dtype=float) * 100
    y = curve["objective"].to_numpy(dtype=float)
    ax.plot(x, y, "o-", color="C3", label="objective")
    if "stderr" in curve.columns:
        se = curve["stderr"].to_numpy(dtype=float)
        ax.fill_between(x, y - se, y + se, color="C3", alpha=0.2, linewidth=0)
    unit = curve.attrs.get("unit", "")
    ax.set_xlabel("heads removed (%), least important first")
    ax.set_ylabel("objective" + (f" ({unit})" if unit else ""))
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.grid(alpha=0.3)
    if "accuracy" in curve.columns:
        ax2 = ax.twinx()
        ax2.plot(x, curve["accuracy"].to_numpy(dtype=float), "s--", color="C0", label="accuracy")
        ax2.set_ylabel("accuracy")
        ax2.set_ylim(0, 1.02)
    how = curve.attrs.get("how", "")
    name = curve.attrs.get("objective", "")
    default = "Pruning curve" + (f" ({how} ablation)" if how else "") + (f"\n{name}" if name else "")
    ax.set_title(title if title is not None else default, fontsize=10)
    return ax


def _head_name(row: pd.Series, main: str) -> str:
    stack = f"{row['stack']} " if "stack" in row and row["stack"] != main else ""
    return f"{stack}layer {int(row['layer'])} head {int(row['head'])}"


def importance_report_text(importance: pd.DataFrame, curve: pd.DataFrame | None = None,
                           effect: Mapping[str, object] | None = None, *, top: int = 10) -> str:
    """``report.md``: the method and objective, the ``top`` heads that matter most with their pattern
    (e.g. ``layer 3 head 5 (previous-token head): +0.41 nats when removed``), the least important ones,
    the pruning curve as a table and, with ``effect`` (:func:`~hf_attn_inspect.runs.importance.ablation_effect`),
    the objective before and after removing the chosen heads."""
    _check(importance, {"layer", "head", "importance", "stderr", "rank"}, "importance")
    a = importance.attrs
    unit = a.get("unit", "")
    method = a.get("method", "ablation")
    main = str(importance["stack"].iloc[0]) if "stack" in importance.columns else "self"
    lines = ["# Head importance", ""]
    n = int(importance["n_sentences"].iloc[0]) if "n_sentences" in importance.columns else None
    lines.append(f"- model: {a.get('model', '?')}")
    lines.append(f"- objective: {a.get('objective', '?')}" + (f" ({unit})" if unit else ""))
    if method == "ablation":
        lines.append(f"- method: {a.get('how', 'zero')} ablation of one head at a time; importance = objective "
                     "without the head minus objective with it, averaged over sentences")
    else:
        lines.append("- method: gradient (Michel et al. 2019), importance = mean over sentences of |dL/d xi_h|")
    if n is not None:
        lines.append(f"- sentences: {n}")
    if "objective" in importance.columns:
        lines.append(f"- intact model's objective: {float(importance['objective'].iloc[0]):.4g}" + (f" {unit}" if unit else ""))
    lines += ["", f"## The {min(top, len(importance))} heads that matter most", ""]
    ordered = importance.sort_values("rank")
    verb = "when removed" if method == "ablation" else "|dL/d xi|"
    for _, row in ordered.head(top).iterrows():
        pattern = row.get("pattern", "")
        kind = f" ({_PATTERN_NAMES.get(pattern, pattern + ' head')})" if isinstance(pattern, str) and pattern else ""
        lines.append(f"{int(row['rank'])}. {_head_name(row, main)}{kind}: {row['importance']:+.3g}"
                     f"{' ' + unit if unit and method == 'ablation' else ''} {verb} (stderr {row['stderr']:.2g})")
    least = ordered.tail(min(5, len(ordered)))[::-1]
    lines += ["", "## Least important", ""]
    lines += [f"- {_head_name(r, main)}: {r['importance']:+.3g}" for _, r in least.iterrows()]
    if effect is not None:
        lines += ["", "## Chosen heads removed together", "",
                  f"- heads: {', '.join(map(str, effect.get('heads', [])))}",
                  f"- objective before: {float(effect['before']):.4g}, after: {float(effect['after']):.4g} "
                  f"(change {float(effect['change']):+.4g} +- {float(effect['stderr']):.2g})"]
    if curve is not None and len(curve):
        lines += ["", "## Pruning curve", "", "| heads removed | share | objective | stderr |" +
                  (" accuracy |" if "accuracy" in curve.columns else ""),
                  "|---:|---:|---:|---:|" + ("---:|" if "accuracy" in curve.columns else "")]
        for _, r in curve.iterrows():
            lines.append(f"| {int(r['heads_removed'])} | {r['fraction']:.0%} | {r['objective']:.4g} | {r['stderr']:.2g} |"
                         + (f" {r['accuracy']:.3f} |" if "accuracy" in curve.columns else ""))
    lines += ["", "Files: `head_importance.csv`, `importance_map.png`, `pruning_curve.csv`, `pruning_curve.png`, `run.json`.", ""]
    return "\n".join(lines)


def _save(fig: "Figure", path: Path) -> Path:
    fig.tight_layout()
    try:
        return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=130), binary=True)
    finally:
        _plt().close(fig)


def write_importance_report(out_dir: str | os.PathLike, importance: pd.DataFrame, curve: pd.DataFrame | None = None,
                            effect: Mapping[str, object] | None = None) -> list[Path]:
    """Write ``importance_map.png`` (one panel per stack), ``pruning_curve.png`` (when ``curve`` is given) and
    ``report.md`` into ``out_dir``, each atomically; returns the written paths."""
    out = Path(out_dir)
    plt = _plt()
    stacks = list(dict.fromkeys(importance["stack"])) if "stack" in importance.columns else [None]
    n_layers = importance["layer"].nunique()
    n_heads = importance["head"].nunique()
    fig, axes = plt.subplots(1, len(stacks), figsize=((1.6 + 0.72 * n_heads) * len(stacks), 1.4 + 0.62 * n_layers),
                             squeeze=False)
    for ax, stack in zip(axes[0], stacks):
        plot_importance_map(importance, ax, stack=stack)
    written = [_save(fig, out / "importance_map.png")]
    if curve is not None:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        plot_pruning_curve(curve, ax)
        written.append(_save(fig, out / "pruning_curve.png"))
    written.append(write_text(importance_report_text(importance, curve, effect), out / "report.md"))
    return written
