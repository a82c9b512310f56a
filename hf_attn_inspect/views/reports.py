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

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn
    from matplotlib.figure import Figure

__all__ = ["FIGURES", "dataset_report_text", "write_dataset_report"]

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
    import seaborn as sns
    from matplotlib.colors import ListedColormap

    paths = []
    n = int(head_stats["n_sentences"].iloc[0])
    for name, (col, title, cmap) in FIGURES.items():
        grid = _grid(head_stats, col)
        fig, ax = plt.subplots(figsize=(1.0 + 0.45 * grid.shape[1], 1.0 + 0.4 * grid.shape[0]))
        sns.heatmap(grid, ax=ax, cmap=cmap, annot=grid.shape[1] <= 16, fmt=".2f", annot_kws={"size": 6},
                    cbar_kws={"label": title})
        ax.set_title(f"{title}, mean over {n:,} sentences")
        paths.append(_save_fig(fig, fig_dir / f"{name}.png"))
        plt.close(fig)
    classes = [c[len("share_"):] for c in head_stats.columns if c.startswith("share_")]
    codes = _grid(head_stats.assign(code=head_stats["pattern"].map({c: i for i, c in enumerate(classes)})), "code")
    share = head_stats.apply(lambda r: r[f"share_{r['pattern']}"], axis=1)
    labels = _grid(head_stats.assign(lbl=[f"{p[:4]}\n{s:.0%}" for p, s in zip(head_stats["pattern"], share)]), "lbl")
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * codes.shape[1], 1.0 + 0.5 * codes.shape[0]))
    cmap = ListedColormap(sns.color_palette("tab10", len(classes)))
    sns.heatmap(codes, ax=ax, cmap=cmap, vmin=-0.5, vmax=len(classes) - 0.5, annot=labels, fmt="",
                annot_kws={"size": 6}, cbar_kws={"ticks": range(len(classes))})
    ax.collections[0].colorbar.set_ticklabels(classes)
    ax.set_title(f"most frequent pattern class per head (share of {n:,} sentences)")
    paths.append(_save_fig(fig, fig_dir / "classes.png"))
    plt.close(fig)
    return paths


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
        f"split {ds.get('split')}): {n:,} sentences analysed of {c.get('rows', n):,} rows "
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
                         f"{n:,} sentences{value}")
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
