"""The figure of a generation: what each generated token looked at (rows) over its context (columns)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..capture.result import GenerationResult
from ..core.errors import InputError
from ..core.stacks import CROSS
from ..core.tokens import clean_token
from .fonts import readable_text
from .plotting import default_scale, label_font_size, weight_colorbar, plot_attention_heatmap, thin_ticks

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

__all__ = ["generation_rows", "generation_table", "plot_generation"]


def generation_rows(
    result: GenerationResult, layer: int | None = None, head: int | None = None, which: str | None = None
) -> tuple[np.ndarray, str]:
    """``(rows [generated, context], description)``: row ``k`` is what the model looked at when it wrote generated
    token ``k`` (the query row of the position before it), over the context it could see: every position before
    the last generated token (prompt, then generated), or the source for ``which="cross"``. ``layer`` defaults to
    the last captured layer, ``head`` ``None`` averages the captured heads."""
    layer = result.layer_ids[-1] if layer is None else layer
    rows = result.step_rows(layer, head, which).numpy()
    if which != CROSS:
        rows = rows[:, : len(result.sequence_tokens) - 1]
    what = f"layer {layer}, " + ("head average" if head is None else f"head {head}")
    return rows, what + (" (cross-attention)" if which == CROSS else "")


def plot_generation(
    result: GenerationResult,
    layer: int | None = None,
    head: int | None = None,
    *,
    which: str | None = None,
    ax: "Axes | None" = None,
    scale: str | None = None,
    max_labels: int = 60,
    probabilities: bool = True,
    title: str | None = None,
) -> "Axes":
    """Draw what each generated token looked at and return the axes.

    Rows are the generated tokens, each labelled with the token it wrote and, on the right, the model's
    probability of it; row ``k`` is the attention of the query whose output predicted that token (the
    position before it). Columns are the context: the prompt, a line, then the tokens generated so far
    (or the source tokens for ``which="cross"`` on encoder-decoder models). Colour is the weight of the
    model's ``layer`` (default: the last captured) and ``head`` (``None``: the average of the captured heads),
    on the ``linear`` or ``sqrt`` ``scale`` (default: sqrt above 150 tokens). Labels are thinned to at most
    ``max_labels`` per axis so 100 generated tokens stay readable.
    """
    if not isinstance(result, GenerationResult):
        raise InputError("plot_generation needs the result of inspector.generate(...)")
    if result.num_generated == 0:
        raise InputError("the result holds no generated token")
    rows, what = generation_rows(result, layer, head, which)
    import matplotlib.pyplot as plt
    g, k = rows.shape
    if ax is None:
        _, ax = plt.subplots(figsize=(min(5 + 0.16 * k, 18), min(3 + 0.16 * g, 16)))
    keys = result.tokens if which == CROSS else result.sequence_tokens[: k]
    x_labels = [clean_token(t) for t in keys]
    y_labels = [clean_token(t) for t in result.generated_tokens]
    scale = scale or default_scale(max(g, k))
    plot_attention_heatmap(rows, None, None, ax=ax, title=None, annotate=False, colorbar=False, scale=scale, vmax=None)
    weight_colorbar(ax.figure, ax.images[-1], scale, ax=ax, fraction=0.046, pad=0.1 if probabilities else 0.04)
    thin_ticks(ax, x_labels, k, "x", max_labels)
    thin_ticks(ax, y_labels, g, "y", max_labels)
    ax.set_ylabel("generated token (row: the query that wrote it)")
    if which == CROSS:
        ax.set_xlabel("source token")
    else:
        p = result.prompt_length
        ax.axvline(p - 0.5, color="crimson", lw=1.2)
        ax.set_xlabel(f"context: prompt ({p} tokens) | generated")
        ax.text((p - 1) / 2, -0.6, "prompt", ha="center", va="bottom", fontsize=8, color="crimson", clip_on=False)
        if k > p:
            ax.text((p + k - 1) / 2, -0.6, "generated", ha="center", va="bottom", fontsize=8, color="crimson",
                    clip_on=False)
    if probabilities and result.probabilities:
        right = ax.twinx()
        right.set_ylim(ax.get_ylim())
        step = max(1, -(-g // max_labels))
        shown = list(range(0, g, step))
        right.set_yticks(shown)
        right.set_yticklabels([_probability(result.probabilities[i]) for i in shown], fontsize=label_font_size(min(g, max_labels)))
        right.set_ylabel("p(token)")
    shown = readable_text([title if title is not None else f"what each generated token looked at: {what}"])
    ax.set_title(shown.texts[0], pad=14, **shown.style())  # generated text in any script
    return ax


def _probability(p: float) -> str:
    return f"{p:.2f}" if p >= 0.01 else f"{p:.0e}"


def generation_table(result: GenerationResult) -> "pd.DataFrame":
    """One row per token of the generating stack (the prompt, then the generated tokens): ``position``,
    ``token``, ``source`` (``prompt`` or ``generated``; for encoder-decoder models the prompt is the decoder's
    start token), ``probability`` (the model's probability of a generated token when it was chosen, empty for the
    prompt) and ``alternatives`` (that step's most probable tokens, ``token (probability)`` joined by ``; ``)."""
    import pandas as pd

    rows = []
    for i, token in enumerate(result.sequence_tokens):
        k = i - result.prompt_length
        generated = k >= 0
        rows.append({
            "position": i,
            "token": token,
            "source": "generated" if generated else "prompt",
            "probability": result.probabilities[k] if generated else None,
            "alternatives": "; ".join(f"{t} ({p:.4f})" for t, p in result.alternatives[k]) if generated else "",
        })
    return pd.DataFrame(rows, columns=["position", "token", "source", "probability", "alternatives"])
