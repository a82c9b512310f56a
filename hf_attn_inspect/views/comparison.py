"""The comparison's views: the divergence map, A/B/difference heatmaps, the report, and the files of ``compare --out``.

:func:`~hf_attn_inspect.runs.compare.compare_models` returns the per-head table (and with ``out`` writes
``head_divergence.csv``, ``run.json`` and its shards); :func:`write_comparison` adds
``divergence_map.png`` (:func:`plot_divergence_map`), ``head_diffs.png`` (:func:`plot_head_diffs` of the
most changed heads on the first text) and ``report.md`` (:func:`comparison_report`, whose head lines come
from :func:`describe_changes`), each written atomically with ordinary umask permissions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from ..capture.inspector import AttentionInspector
from ..capture.result import AttentionResult
from ..core.errors import InputError
from ..core.files import atomic_path, write_json, write_text
from ..core.stacks import result_stack
from ..runs.compare import head_pair_results
from .figures import plot_attention_diff
from .fonts import readable_text
from .plotting import thin_ticks
from .words import counted

if TYPE_CHECKING:  # matplotlib is imported when a function draws
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["UNCHANGED", "changed_heads", "comparison_report", "describe_changes", "plot_divergence_map", "plot_head_diffs", "write_comparison"]


# ------------------------------------------------------------------------------------------ figures
def plot_divergence_map(df: pd.DataFrame, ax: "Axes | None" = None, *, value: str = "js_divergence",
                        cmap: str = "magma") -> "Axes":
    """Heatmap of ``value`` (default the JS divergence, nats) with layers as rows and heads as columns.

    ``df`` is the frame of :func:`~hf_attn_inspect.runs.compare.compare_models`. The colour scale starts
    at 0 (a divergence cannot be negative) and ends at the largest value; when every head is identical
    (all 0) it ends at ln 2, the divergence of disjoint rows, and the title says so. Returns the axes (a
    new figure when ``ax`` is None).
    """
    import math

    import matplotlib.pyplot as plt

    grid = df.pivot(index="layer", columns="head", values=value).sort_index().sort_index(axis=1)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.45 * grid.shape[1] + 2), max(3.0, 0.4 * grid.shape[0] + 1.5)))
    top = float(np.nanmax(grid.to_numpy())) if grid.size else 0.0
    identical = not top > 0.0
    image = ax.imshow(grid.to_numpy(), cmap=cmap, aspect="auto", vmin=0.0, vmax=math.log(2) if identical else top)
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [str(r) for r in grid.index])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    title = "Jensen-Shannon divergence A vs B (nats)" if value == "js_divergence" else value
    ax.set_title(title + ("\nall 0: A and B attend identically" if identical else ""))
    ax.figure.colorbar(image, ax=ax, label="nats (0 = identical, ln 2 = disjoint)" if value == "js_divergence" else value)
    return ax


def plot_head_diffs(result_a: AttentionResult, result_b: AttentionResult, heads: Sequence[tuple[int, int]],
                    fig: "Figure | None" = None, *, which: str = "self", text: str | None = None) -> "Figure":
    """One row per (layer, head): A's and B's attention on one text and B - A (rows = queries, columns = keys).

    ``result_a``/``result_b`` are :class:`AttentionResult` objects of the same text holding those heads
    (:func:`~hf_attn_inspect.runs.compare.head_pair_results`); ``text`` (that text) is quoted in the
    figure's title (shortened to 80 characters). Token labels are those of
    :func:`~hf_attn_inspect.views.plotting.thin_ticks` on every panel (9 pt on short texts, thinned on long ones).
    The difference uses a diverging scale centred at 0 (red = more weight in B, blue = less), drawn by
    :func:`~hf_attn_inspect.views.figures.plot_attention_diff`. Returns the figure.
    """
    import matplotlib.pyplot as plt

    heads = list(heads)
    if fig is None:
        fig = plt.figure(figsize=(12, 3.6 * max(1, len(heads))))
    tokens = list(result_a.stack(which)[1])
    axes = fig.subplots(len(heads), 3, squeeze=False)
    n = len(tokens)
    for row, (layer, head) in enumerate(heads):
        wa = result_a.head(layer, head, which).numpy()
        wb = result_b.head(layer, head, which).numpy()
        for ax, mat, name in ((axes[row][0], wa, "A"), (axes[row][1], wb, "B")):
            image = ax.imshow(mat, cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"{name}  L{layer} H{head}")
            fig.colorbar(image, ax=ax, fraction=0.046, label="attention weight")
        plot_attention_diff(result_b, result_a, layer=layer, head=head, which=which, names=("B", "A"),
                            ax=axes[row][2], annotate=False, title=f"B - A  L{layer} H{head}")
        axes[row][2].set_ylabel("")  # the query label sits once per row, on A's panel
        for ax in axes[row][:2]:
            thin_ticks(ax, tokens, n, "x")
            thin_ticks(ax, tokens, n, "y")
            ax.set_xlabel("key")
        axes[row][0].set_ylabel("query")
    if text is not None:
        quoted = text if len(text) <= 80 else text[:77].rstrip() + "..."
        shown = readable_text([f'A and B on the first text ({counted(n, "token")}): "{quoted}"'])  # any script
        fig.suptitle(shown.texts[0], fontsize=11, **shown.style())
    fig.tight_layout()
    return fig


_WORDS = {
    "entropy": "entropy (nats)",
    "diagonal": "self (diagonal) share",
    "previous_token": "previous-token share",
    "next_token": "next-token share",
    "first_token": "first-token share",
    "special_tokens": "special-token share",
    "punctuation": "punctuation share",
    "max_weight": "max weight",
    "weight_std": "weight std",
    "sparsity": "sparsity",
    "mean_distance": "mean distance (tokens)",
}


def describe_changes(row: pd.Series, df: pd.DataFrame, n: int = 3) -> list[str]:
    """The ``n`` metrics of one head that changed most, in words (``"first-token share 0.12 -> 0.71"``).

    ``row`` is one head's row of the :func:`~hf_attn_inspect.runs.compare.compare_models` table and ``df``
    the whole table. Each string is the metric's name and A's and B's means over sentences
    (``"<metric> <a> -> <b>"``, three decimals). A change counts relative to the spread of that metric
    over all heads of A (``|delta| / std over heads of a_<metric>``, so entropies and shares compare
    fairly); ``max_entropy`` is left out (it depends only on the input lengths). Raises
    :class:`InputError` when a metric's ``a_``/``b_``/``delta_`` column is missing.
    """
    missing = [c for k in _WORDS for c in (f"a_{k}", f"b_{k}", f"delta_{k}") if c not in row.index or c not in df]
    if missing:
        raise InputError(f"describe_changes needs the compare table's columns; missing {', '.join(missing[:3])}")
    scored = []
    for k in _WORDS:
        spread = float(df[f"a_{k}"].std()) or 1.0
        scored.append((abs(float(row[f"delta_{k}"])) / (spread + 1e-12), k))
    scored.sort(reverse=True)
    out = []
    for _, k in scored[:n]:
        out.append(f"{_WORDS[k]} {row[f'a_{k}']:.3f} -> {row[f'b_{k}']:.3f}")
    return out


#: A head whose JS divergence (nats) is below this is unchanged (float noise of identical models is ~1e-9).
UNCHANGED = 1e-6


def changed_heads(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of a comparison table (:func:`~hf_attn_inspect.runs.compare.compare_models`) whose heads
    changed: JS divergence at least :data:`UNCHANGED` nats, most changed first (the table's order)."""
    return df[df["js_divergence"] >= UNCHANGED]


def comparison_report(df: pd.DataFrame, *, top: int = 5, figures: Sequence[str] = ()) -> str:
    """``report.md`` text: the inputs, the heads that changed most and how, per-layer means, figures."""
    n = df.attrs.get("n_sentences", "?")
    lines = [
        "# Attention comparison",
        "",
        f"- model A: `{df.attrs.get('model_a', 'A')}`",
        f"- model B: `{df.attrs.get('model_b', 'B')}`",
        f"- sentences: {n}; stack: {df.attrs.get('stack', 'self')}",
        "- divergence: Jensen-Shannon divergence between A's and B's attention rows, natural log "
        "(0 = identical, ln 2 = 0.693 = disjoint), averaged over real query rows and sentences.",
        "",
        f"## Heads that changed most (top {min(top, len(df))})",
        "",
    ]
    changed = changed_heads(df)
    if changed.empty:
        lines.append(f"No head changed: every head's divergence is below {UNCHANGED:g} nats.")
    for rank, (_, row) in enumerate(changed.head(top).iterrows(), 1):
        how = "; ".join(describe_changes(row, df))
        cls = ""
        if "class_a" in df and "class_b" in df:
            cls = f" [{row['class_a']} -> {row['class_b']}]" if row["class_a"] != row["class_b"] else f" [{row['class_a']}]"
        lines.append(f"{rank}. layer {int(row['layer'])} head {int(row['head'])}: JS {row['js_divergence']:.4f}{cls}; {how}")
    per_layer = df.groupby("layer")["js_divergence"].mean().sort_index()
    lines += ["", "## Mean divergence per layer", "", "| layer | mean JS (nats) |", "|---|---|"]
    lines += [f"| {int(layer)} | {value:.4f} |" for layer, value in per_layer.items()]
    quiet = len(df) - len(changed)
    lines += ["", f"{quiet} of {len(df)} heads are unchanged (JS < {UNCHANGED:g})."]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({Path(f).name})" for f in figures]
    return "\n".join(lines) + "\n"


def write_comparison(out_dir: str | os.PathLike, df: pd.DataFrame, a: AttentionInspector, b: AttentionInspector, *,
                     top: int = 4) -> list[str]:
    """Write the figures and ``report.md`` of a finished comparison into ``out_dir``; returns the figure names.

    ``df`` is the table of :func:`~hf_attn_inspect.runs.compare.compare_models` (its ``attrs`` name the
    first text, the stack and the maximum length) and ``a``/``b`` the two models' inspectors.
    ``divergence_map.png`` is drawn always, ``head_diffs.png`` for the ``top`` most changed heads on the
    first text (none when ``top`` is 0); ``report.md`` lists at least 5 heads. When ``out_dir`` holds the
    engine's finished ``run.json`` (``compare_models(..., out=out_dir)``), the figure names are added to
    it (and always to ``df.attrs["run"]``), so ``compare_models(..., out=d)`` followed by
    ``write_comparison(d, df, a, b, top=...)`` writes what ``hf-attn-inspect compare --out d`` writes; the
    command passes it as ``compare_models(..., report=...)``, so ``run.json`` says ``finished`` last.
    """
    import matplotlib

    if "first_text" not in df.attrs:
        raise InputError("this table carries no comparison record; pass the table compare_models returned")
    out = Path(out_dir)
    stack = df.attrs.get("stack", "self")
    figures = []
    with matplotlib.rc_context({"backend": "Agg"}):
        import matplotlib.pyplot as plt

        ax = plot_divergence_map(df)
        with atomic_path(out / "divergence_map.png") as tmp:
            ax.figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        plt.close(ax.figure)
        figures.append("divergence_map.png")
        k = max(0, min(top, len(df)))
        if k:
            heads = [(int(r.layer), int(r.head)) for r in df.head(k).itertuples()]
            ra, rb = head_pair_results(a, b, df.attrs["first_text"], df.attrs.get("first_pair"), heads,
                                       max_length=df.attrs.get("max_length"))
            fig = plot_head_diffs(ra, rb, heads, which=result_stack(stack), text=df.attrs["first_text"])
            with atomic_path(out / "head_diffs.png") as tmp:
                fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
            plt.close(fig)
            figures.append("head_diffs.png")
    write_text(comparison_report(df, top=max(top, 5), figures=figures), out / "report.md")
    run = df.attrs.get("run")
    if run is not None:
        record = {}
        for key, value in run.items():
            if key == "elapsed_s":
                record["figures"] = figures
            record[key] = value
        record["figures"] = figures
        run.clear()  # the record the engine writes as run.json once this returns (compare_models(report=...))
        run.update(record)
        if _finished(out / "run.json"):  # called after the engine: add the figures to its run.json
            write_json(record, out / "run.json")
    return figures


def _finished(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("status") == "finished"
    except (OSError, ValueError, AttributeError):
        return False
