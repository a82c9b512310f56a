"""The dataset report: figures and ``report.md`` of a :func:`~hf_attn_inspect.runs.dataset.analyze_dataset` run.

The engine writes the data (``shards/``, ``head_stats.csv`` / ``.parquet``, ``layer_stats.csv``,
``run.json``); :func:`write_dataset_report` draws from its ``head_stats`` table: ``figures/`` (layers x
heads maps of mean entropy, special-token share, previous-token share and the most frequent pattern
class) and ``report.md`` (:func:`dataset_report_text`). Every file is written atomically with ordinary
umask permissions (:mod:`hf_attn_inspect.core.files`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ..core.errors import InputError
from ..core.files import atomic_write, write_text
from ..runs.dataset import layer_stats_frame
from ..runs.sharded import RunRecord
from .words import counted

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["FIGURES", "dataset_report_text", "plot_class_map", "plot_head_stat_map", "write_dataset_report"]

#: The per-head maps of ``figures/``: file stem -> (``head_stats`` column, colour-bar label, colour map);
#: ``classes.png`` (the most frequent pattern class per head) is drawn besides them.
FIGURES = {
    "entropy": ("entropy_mean", "mean entropy (nats)", "viridis"),
    "special_tokens": ("special_tokens_mean", "share of attention on special tokens", "magma"),
    "previous_token": ("previous_token_mean", "share of attention on the previous token", "magma"),
}


def write_dataset_report(out_dir: str | os.PathLike, head_stats: pd.DataFrame, run: RunRecord | None = None, *,
                         figures: bool = True, report: bool = True) -> list[Path]:
    """Write the figures (``figures/*.png``, see :data:`FIGURES`) and ``report.md`` of a dataset run into
    ``out_dir``, each atomically; returns the written paths.

    ``head_stats`` is the table :func:`~hf_attn_inspect.runs.dataset.analyze_dataset` returns; ``run`` the
    run record that ``run.json`` holds (default ``head_stats.attrs["run"]``). The tables and ``run.json``
    are the engine's (``analyze_dataset(..., out=out_dir)``), so ``hf-attn-inspect batch --out`` is
    ``analyze_dataset(..., out=d)`` followed by ``write_dataset_report(d, df)``.
    """
    out = Path(out_dir)
    run = _run_of(head_stats, run)
    written: list[Path] = []
    if figures:
        written += _figures(out / "figures", head_stats)
    if report:
        written.append(write_text(dataset_report_text(head_stats, run), out / "report.md"))
    return written


def _run_of(head_stats: pd.DataFrame, run: RunRecord | None) -> RunRecord:
    if run is not None:
        return run
    if "run" not in head_stats.attrs:
        raise InputError("this table carries no run record; pass run=... (the contents of run.json)")
    return head_stats.attrs["run"]


def _grid(head_stats: pd.DataFrame, column: str) -> pd.DataFrame:
    return head_stats.pivot(index="layer", columns="head", values=column)


def _figures(fig_dir: Path, head_stats: pd.DataFrame) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    paths = []
    for name in FIGURES:
        ax = plot_head_stat_map(head_stats, name)
        paths.append(_save_fig(ax.figure, fig_dir / f"{name}.png"))
        plt.close(ax.figure)
    ax = plot_class_map(head_stats)
    paths.append(_save_fig(ax.figure, fig_dir / "classes.png"))
    plt.close(ax.figure)
    return paths


def _cell_size(n_heads: int, annotate: bool) -> float:
    """Inches per cell: room for a class name or a 2-decimal number at 9 pt when annotated."""
    return 0.85 if annotate else 0.4


def plot_head_stat_map(head_stats: pd.DataFrame, name: str, ax: "Axes | None" = None) -> "Axes":
    """Layers x heads map of one :data:`FIGURES` entry (``entropy``, ``special_tokens``, ``previous_token``)
    from a dataset run's ``head_stats``: cells are the mean over sentences (values written in the cells up
    to 16 heads). Returns the axes (a new figure, about 1,100 px wide for 12 heads at the report's dpi)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if name not in FIGURES:
        raise InputError(f"unknown figure '{name}'; choose one of {', '.join(FIGURES)}")
    col, title, cmap = FIGURES[name]
    n = int(head_stats["n_sentences"].iloc[0])
    grid = _grid(head_stats, col)
    annotate = grid.shape[1] <= 16
    if ax is None:
        cell = _cell_size(grid.shape[1], annotate)
        _, ax = plt.subplots(figsize=(2.2 + cell * grid.shape[1], 1.4 + 0.55 * grid.shape[0]))
    sns.heatmap(grid, ax=ax, cmap=cmap, annot=annotate, fmt=".2f", annot_kws={"size": 9},
                cbar_kws={"label": title})
    ax.set_title(f"{title}, mean over {counted(n, 'sentence')}")
    return ax


def plot_class_map(head_stats: pd.DataFrame, ax: "Axes | None" = None) -> "Axes":
    """Layers x heads map of each head's most frequent pattern class (``pattern``) in a dataset run's
    ``head_stats``, one colour per class of :data:`~hf_attn_inspect.stats.patterns.PATTERN_CLASSES`: the
    colour bar beside the map names every class in full, and each cell (up to 16 heads) holds the full class
    name and the share of sentences in which the head had it. Returns the axes."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.colors import ListedColormap

    n = int(head_stats["n_sentences"].iloc[0])
    classes = [c[len("share_"):] for c in head_stats.columns if c.startswith("share_")]
    codes = _grid(head_stats.assign(code=head_stats["pattern"].map({c: i for i, c in enumerate(classes)})), "code")
    annotate = codes.shape[1] <= 16
    share = head_stats.apply(lambda r: r[f"share_{r['pattern']}"], axis=1)
    labels = _grid(head_stats.assign(lbl=[f"{p}\n{s:.0%}" for p, s in zip(head_stats["pattern"], share)]), "lbl")
    if ax is None:
        cell = _cell_size(codes.shape[1], annotate)
        _, ax = plt.subplots(figsize=(2.6 + cell * codes.shape[1], 1.4 + 0.6 * codes.shape[0]))
    cmap = ListedColormap(sns.color_palette("tab10", len(classes)))
    sns.heatmap(codes, ax=ax, cmap=cmap, vmin=-0.5, vmax=len(classes) - 0.5, annot=labels if annotate else False,
                fmt="", annot_kws={"size": 8}, linewidths=0.5, linecolor="white",
                cbar_kws={"ticks": range(len(classes)), "label": "pattern class"})
    ax.collections[0].colorbar.set_ticklabels(classes)
    ax.set_title(f"most frequent pattern class per head (share of {counted(n, 'sentence')})")
    return ax


def _save_fig(fig: "Figure", path: Path) -> Path:
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110, bbox_inches="tight"), binary=True)


def dataset_report_text(head_stats: pd.DataFrame, run: RunRecord | None = None) -> str:
    """The ``report.md`` text of a dataset run: what was analysed, the heads with a clear pattern (a class in
    at least half of the sentences, with its share and the matching metric's mean +/- std), per-layer means
    (entropy in nats, shares of attention on special, previous and first tokens) and the files.

    ``head_stats`` is the table of :func:`~hf_attn_inspect.runs.dataset.analyze_dataset`; ``run`` its run
    record (default ``head_stats.attrs["run"]``).
    """
    run = _run_of(head_stats, run)
    layer = layer_stats_frame(head_stats)
    p = run.get("parameters", {})
    c = run.get("counts", {})
    n = int(head_stats["n_sentences"].iloc[0])
    ds = p.get("dataset", {})
    lines = [
        "# Attention over a dataset",
        "",
        f"Model `{p.get('model')}`, dataset `{ds.get('source')}` (column {', '.join(ds.get('columns', []))}, "
        f"split {ds.get('split')}): {counted(n, 'sentence')} analysed of {counted(c.get('rows', n), 'row')} "
        f"({c.get('skipped_total', 0)} skipped as empty or not text, {c.get('truncated', 0)} truncated to "
        f"{p.get('max_length')} tokens). Every sentence weighs the same; values are mean +/- standard "
        "deviation over sentences; padding never counts.",
        "",
        "## Heads with a clear pattern",
        "",
    ]
    classes = [col[len("share_"):] for col in head_stats.columns if col.startswith("share_")]
    metric_of = {"previous": "previous_token", "next": "next_token", "diagonal": "diagonal",
                 "column": "column_share", "uniform": "entropy", "broad": "entropy", "sparse": "max_weight"}
    found = False
    for cls in classes:
        if cls == "mixed":
            continue
        rows = head_stats[(head_stats["pattern"] == cls) & (head_stats[f"share_{cls}"] >= 0.5)]
        rows = rows.sort_values(f"share_{cls}", ascending=False).head(8)
        m = metric_of.get(cls)
        for _, r in rows.iterrows():
            found = True
            value = (f", {m.replace('_', '-')} {r[f'{m}_mean']:.2f} +/- {r[f'{m}_std']:.2f}"
                     if m and f"{m}_mean" in r else "")
            lines.append(f"- layer {int(r['layer'])} head {int(r['head'])}: {cls} head in {r[f'share_{cls}']:.0%} of "
                         f"{counted(n, 'sentence')}{value}")
    if not found:
        lines.append("- no head shows one pattern in at least half of the sentences")
    lines += ["", "## Layers", ""]
    for _, r in layer.iterrows():
        parts = [f"entropy {r['entropy_mean']:.2f} nats"] if "entropy_mean" in r else []
        for m, label in (("special_tokens", "on special tokens"), ("previous_token", "on the previous token"),
                         ("first_token", "on the first token")):
            if f"{m}_mean" in r:
                parts.append(f"{r[f'{m}_mean']:.0%} {label}")
        lines.append(f"- layer {int(r['layer'])}: " + ", ".join(parts))
    special = layer[layer.get("special_tokens_mean", pd.Series(0, index=layer.index)) > 0.5]["layer"].tolist()
    if special:
        lines += ["", f"Layers {', '.join(map(str, special))} put over half of their attention on special tokens."]
    lines += ["", "Files: `head_stats.csv` / `.parquet` (one row per head), `layer_stats.csv`, `figures/`, "
              "`run.json` (model, dataset, parameters, versions, counts).", ""]
    return "\n".join(lines)
