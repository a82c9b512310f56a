"""Figures and files of a long-context report (:class:`~hf_attn_inspect.runs.long_context.LongContextReport`).

The ``plot_*`` functions are axes-level in the seaborn style: each takes one of the report's tables and an
optional ``ax``, draws, and returns the axes; none shows or prints. :func:`save_long_context_report`
writes the three tables as CSV and the three figures as PNG into a folder, each file atomically (the
``long`` command's output).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pandas as pd

from ..core.errors import InputError
from ..core.files import atomic_path
from ..runs.long_context import LongContextReport
from ..stats.metrics import METRICS
from ..stats.streaming import DISTANCE_BUCKETS

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "METRIC_LABELS",
    "REPORT_FILES",
    "plot_sink_curve",
    "plot_distance_mass",
    "plot_head_metric",
    "save_long_context_report",
]

#: Words for each metric of :mod:`hf_attn_inspect.stats.metrics` in titles and colour bars.
METRIC_LABELS = {
    "entropy": "entropy (nats)",
    "max_entropy": "maximum entropy (nats)",
    "diagonal": "share of attention on the token itself",
    "previous_token": "share of attention on the previous token",
    "next_token": "share of attention on the next token",
    "first_token": "share of attention on the first token",
    "special_tokens": "share of attention on special tokens",
    "punctuation": "share of attention on punctuation",
    "max_weight": "mean row maximum",
    "weight_std": "standard deviation of the weights",
    "sparsity": "share of weights at or below 0.3",
    "mean_distance": "mean distance |i - j| (tokens)",
    "local_window": "share of attention within the local window",
}

#: The files :func:`save_long_context_report` writes, in order.
REPORT_FILES = ("head_metrics.csv", "sinks.csv", "distance.csv", "sinks.png", "distance.png", "first_token_heads.png")


def plot_sink_curve(sinks: pd.DataFrame, ax: Axes | None = None, *, per_head: bool = False) -> Axes:
    """Line plot of the first-token (sink) share against query position, one line per layer (mean over heads).

    ``sinks`` is :attr:`LongContextReport.sinks`; x is the bin's middle query position (log scale), y
    the mean weight on token 0 (0..1). ``per_head=True`` draws one faint line per head as well. Returns the axes.
    """
    import matplotlib.pyplot as plt

    missing = {"layer", "head", "start", "end", "first_token"} - set(sinks.columns)
    if missing:
        raise InputError(f"the sinks table lacks column(s) {', '.join(sorted(missing))}; pass LongContextReport.sinks")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    df = sinks.assign(position=(sinks["start"] + sinks["end"] - 1) / 2.0)
    cmap = plt.get_cmap("viridis")
    layers = sorted(df["layer"].unique())
    for i, layer in enumerate(layers):
        color = cmap(i / max(1, len(layers) - 1))
        sub = df[df["layer"] == layer]
        if per_head:
            for _, head in sub.groupby("head"):
                ax.plot(head["position"], head["first_token"], color=color, alpha=0.2, lw=0.8)
        mean = sub.groupby("position", as_index=False)["first_token"].mean()
        ax.plot(mean["position"], mean["first_token"], color=color, lw=1.8, label=f"layer {layer}")
    if df["position"].max() > 1:
        ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("query position (tokens)")
    ax.set_ylabel("attention on first token")
    ax.set_ylim(0, 1)
    ax.set_title("Attention sinks: first-token share by query position")
    ax.legend(fontsize="small", ncol=2)
    return ax


def plot_distance_mass(distance: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Heatmap of attention mass by distance bucket (columns) for each layer (rows), mean over heads.

    ``distance`` is :attr:`LongContextReport.distance`; cells are shares of a query row's attention
    (each row of the heatmap sums to 1). Only the buckets the table holds are drawn (the report lists
    those a distance of the input's length can reach). Returns the axes.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    missing = {"layer", "bucket", "mass"} - set(distance.columns)
    if missing:
        raise InputError(f"the distance table lacks column(s) {', '.join(sorted(missing))}; pass LongContextReport.distance")
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.5 * distance["layer"].nunique() + 1.5))
    table = distance.groupby(["layer", "bucket"], sort=False)["mass"].mean().unstack("bucket")
    table = table[[b for b in DISTANCE_BUCKETS if b in table.columns]]
    sns.heatmap(table, ax=ax, vmin=0, vmax=1, cmap="magma", annot=table.shape[0] * table.shape[1] <= 120,
                fmt=".2f", cbar_kws={"label": "attention mass"})
    ax.set_xlabel("distance |i - j| (tokens)")
    ax.set_ylabel("layer")
    ax.set_title("Attention mass by distance")
    return ax


def plot_head_metric(metrics: pd.DataFrame, metric: str = "first_token", ax: Axes | None = None) -> Axes:
    """Heatmap of one metric per (layer, head) from a ``layer``/``head``/metrics table
    (:attr:`LongContextReport.metrics`): rows are layers, columns heads, cells the metric's mean over the
    document's query rows (entropies in nats, shares in 0..1). Returns the axes."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if metric not in metrics.columns:
        raise InputError(f"unknown metric '{metric}'; choose one of {', '.join(METRICS)}")
    if not {"layer", "head"} <= set(metrics.columns):
        raise InputError("the metrics table needs 'layer' and 'head' columns; pass LongContextReport.metrics")
    table = metrics.pivot(index="layer", columns="head", values=metric)
    if ax is None:
        _, ax = plt.subplots(figsize=(0.45 * table.shape[1] + 2.5, 0.45 * table.shape[0] + 1.5))
    label = METRIC_LABELS.get(metric, metric.replace("_", " "))
    sns.heatmap(table, ax=ax, cmap="viridis", cbar_kws={"label": label})
    ax.set_title(f"{label[:1].upper()}{label[1:]} per head (mean over query rows)")
    return ax


def save_long_context_report(report: LongContextReport, out: str | os.PathLike) -> list[Path]:
    """Write ``report`` into the folder ``out`` (created if missing): the files of :data:`REPORT_FILES`.

    ``head_metrics.csv`` (one row per layer and head), ``sinks.csv`` (first-token share by query-position
    bin) and ``distance.csv`` (attention mass by distance bucket) hold the report's tables; ``sinks.png``,
    ``distance.png`` and ``first_token_heads.png`` are :func:`plot_sink_curve`, :func:`plot_distance_mass`
    and :func:`plot_head_metric` of ``first_token`` (100 dpi); when the text was cut to the model's
    maximum, every figure's title says so (:attr:`LongContextReport.truncation_note`). Each file is written
    to a temporary name and renamed, so an interrupted run leaves no half-written file. Returns the paths written.
    """
    out = Path(out)
    nl = report.metrics["layer"].nunique()
    nh = report.metrics["head"].nunique()

    def figure(draw: Callable[[Axes], object], size: tuple[float, float]) -> Callable[[str], None]:
        def write(tmp: str) -> None:
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=size)
            try:
                draw(ax)
                if report.truncation_note:
                    ax.set_title(f"{ax.get_title()}\n({report.truncation_note})")
                fig.tight_layout()
                fig.savefig(tmp, dpi=100, format="png")
            finally:
                plt.close(fig)

        return write

    writers: dict[str, Callable[[str], object]] = {
        "head_metrics.csv": lambda p: report.metrics.to_csv(p, index=False),
        "sinks.csv": lambda p: report.sinks.to_csv(p, index=False),
        "distance.csv": lambda p: report.distance.to_csv(p, index=False),
        "sinks.png": figure(lambda ax: plot_sink_curve(report.sinks, ax=ax), (8, 4.5)),
        "distance.png": figure(lambda ax: plot_distance_mass(report.distance, ax=ax).set_xlabel(
            f"distance |i - j| (tokens; the longest in this input is {max(report.n_tokens - 1, 0):,})"),
            (9, 0.45 * nl + 2.3)),
        "first_token_heads.png": figure(lambda ax: plot_head_metric(report.metrics, "first_token", ax=ax),
                                        (max(7.0, 0.4 * nh + 3), 0.4 * nl + 2.3)),
    }
    written = []
    for name in REPORT_FILES:
        with atomic_path(out / name) as tmp:
            writers[name](tmp)
        written.append(out / name)
    return written
