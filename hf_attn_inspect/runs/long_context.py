"""Long-context report: per-head metrics, attention sinks by query position, attention mass by distance.

Everything here comes from :func:`hf_attn_inspect.stats.streaming.run_streaming`, so a document of tens of
thousands of tokens is analysed without any ``[T, T]`` weight matrix. :func:`long_context_report`
returns three tables; the ``plot_*`` functions draw them (axes-level, they never show or print).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..core.errors import InputError
from ..stats.metrics import LOCAL_WINDOW, METRICS, reduce_rows
from ..stats.streaming import DISTANCE_BUCKETS, DISTANCE_EDGES, KeyMasks, distance_bucket_mass, run_streaming

__all__ = [
    "LongContextReport",
    "long_context_report",
    "position_bins",
    "plot_sink_curve",
    "plot_distance_mass",
    "plot_head_metric",
]


@dataclass
class LongContextReport:
    """Tables of one long document.

    - ``metrics``: one row per (layer, head): ``layer``, ``head`` and every metric of
      :mod:`hf_attn_inspect.stats.metrics` (means over the document's query rows).
    - ``sinks``: one row per (layer, head, position bin): ``start``/``end`` (query positions
      ``start <= i < end``) and ``first_token``, the mean weight query rows in that bin give to token 0.
    - ``distance``: one row per (layer, head, bucket): ``bucket`` (label of ``|i - j|`` in tokens, e.g.
      ``2-4``), ``low``/``high`` (inclusive bounds; ``high`` is -1 for the open last bucket) and ``mass``,
      the mean share of a query row's attention at that distance (the buckets of a head sum to 1).
    """

    metrics: pd.DataFrame
    sinks: pd.DataFrame
    distance: pd.DataFrame
    n_tokens: int
    model_name: str
    truncated: bool
    causal: bool


def position_bins(n: int, bins: int = 32) -> np.ndarray:
    """Edges ``[0, e_1, ..., n]`` of about ``bins`` query-position bins, geometric so early positions are resolved."""
    if n <= 1:
        return np.array([0, max(n, 1)])
    inner = np.unique(np.geomspace(1, n, num=max(2, bins)).astype(int))
    return np.unique(np.concatenate([[0], inner[inner < n], [n]]))


def long_context_report(
    inspector: Any,
    text: str,
    *,
    max_length: int | None = None,
    layers: Sequence[int] | None = None,
    bins: int = 32,
    local_window: int = LOCAL_WINDOW,
    q_tile: int = 512,
    k_tile: int = 2048,
) -> LongContextReport:
    """Analyse one long ``text`` with streaming statistics and return a :class:`LongContextReport`.

    ``max_length`` (default: the model's maximum) truncates longer texts with a warning. Encoder-decoder
    models are analysed on their encoder. Memory is ``O(T)`` per head plus one
    ``[heads, q_tile, k_tile]`` block; no ``[T, T]`` tensor is created.
    """
    if not isinstance(text, str) or not text.strip():
        raise InputError("the text is empty; give a file with some text in it")
    batch = inspector.encode([text], max_length=max_length)
    keep = ["entropy", "diagonal", "previous_token", "next_token", "first_token", "special_tokens", "punctuation",
            "max_weight", "mean_distance", "local_window", "mass", "sq_sum", "above", "within"]
    probe = run_streaming(inspector, batch, layers=layers, local_window=local_window, distance_edges=DISTANCE_EDGES,
                          q_tile=q_tile, k_tile=k_tile, keep=keep)
    stack = "encoder" if "encoder" in probe.rows else "self"
    rows = probe.stacked(stack)  # {name: [1, L, H, T]}
    layer_ids = sorted(probe.rows[stack])
    valid = probe.masks.get(stack, KeyMasks()).valid
    n = int(batch.lengths[0])
    if valid is None:
        valid = torch.ones(1, rows["entropy"].shape[-1], dtype=torch.bool)
    causal = bool(probe.causal.get(stack, False))
    metrics = reduce_rows({k: v for k, v in rows.items() if k != "within"}, valid, causal=causal)
    nl, nh = rows["entropy"].shape[1:3]
    lid = np.repeat(layer_ids, nh)
    hid = np.tile(np.arange(nh), nl)
    frame = {"layer": lid, "head": hid}
    frame.update({k: metrics[k][0].reshape(-1).numpy() for k in METRICS})
    metrics_df = pd.DataFrame(frame)

    first = rows["first_token"][0, ..., :n]  # [L, H, n]
    edges = position_bins(n, bins)
    sink_parts = []
    for a, b in zip(edges[:-1], edges[1:]):
        share = first[..., a:b].mean(-1).reshape(-1).numpy()
        sink_parts.append(pd.DataFrame({"layer": lid, "head": hid, "start": int(a), "end": int(b), "first_token": share}))
    sinks = pd.concat(sink_parts, ignore_index=True).sort_values(["layer", "head", "start"], ignore_index=True)

    buckets = distance_bucket_mass(rows["within"][0, ..., :n, :], rows["mass"][0, ..., :n]).mean(-2)  # [L, H, E+1]
    lows = [0] + [e + 1 for e in DISTANCE_EDGES]
    highs = list(DISTANCE_EDGES) + [-1]
    dist_parts = []
    for i, label in enumerate(DISTANCE_BUCKETS):
        dist_parts.append(pd.DataFrame({"layer": lid, "head": hid, "bucket": label, "low": lows[i], "high": highs[i],
                                        "mass": buckets[..., i].reshape(-1).numpy()}))
    distance = pd.concat(dist_parts, ignore_index=True)
    distance["bucket"] = pd.Categorical(distance["bucket"], categories=list(DISTANCE_BUCKETS), ordered=True)
    distance = distance.sort_values(["layer", "head", "bucket"], ignore_index=True)
    distance["bucket"] = distance["bucket"].astype(str)
    return LongContextReport(metrics_df, sinks, distance, n, inspector.name, bool(batch.truncated[0]), causal)


def plot_sink_curve(sinks: pd.DataFrame, ax: Any = None, *, per_head: bool = False) -> Any:
    """Line plot of the first-token (sink) share against query position, one line per layer (mean over heads).

    ``sinks`` is :attr:`LongContextReport.sinks`; x is the bin's middle query position (log scale), y
    the mean weight on token 0. ``per_head=True`` draws one faint line per head as well. Returns the axes.
    """
    import matplotlib.pyplot as plt

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


def plot_distance_mass(distance: pd.DataFrame, ax: Any = None) -> Any:
    """Heatmap of attention mass by distance bucket (columns) for each layer (rows), mean over heads.

    ``distance`` is :attr:`LongContextReport.distance`; cells are shares of a query row's attention
    (each row of the heatmap sums to 1). Returns the axes.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

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


def plot_head_metric(metrics: pd.DataFrame, metric: str = "first_token", ax: Any = None) -> Any:
    """Heatmap of one metric per (layer, head) from a ``layer``/``head``/metrics table. Returns the axes."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if metric not in metrics.columns:
        raise InputError(f"unknown metric '{metric}'; choose one of {', '.join(METRICS)}")
    table = metrics.pivot(index="layer", columns="head", values=metric)
    if ax is None:
        _, ax = plt.subplots(figsize=(0.45 * table.shape[1] + 2.5, 0.45 * table.shape[0] + 1.5))
    sns.heatmap(table, ax=ax, cmap="viridis", cbar_kws={"label": metric})
    ax.set_title(f"{metric} per head")
    return ax
