"""Long-context report: per-head metrics, attention sinks by query position, attention mass by distance.

Everything here comes from :func:`hf_attn_inspect.stats.streaming.run_streaming`, so a document of tens of
thousands of tokens is analysed without any ``[T, T]`` weight matrix. :func:`long_context_report`
returns three tables; :mod:`hf_attn_inspect.views.long_context` draws them and writes the report files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from ..capture.inspector import AttentionInspector
from ..core.errors import InputError
from ..core.kernels import LOCAL_WINDOW
from ..core.stacks import main_stack_of
from ..stats.metrics import METRICS, ROW_QUANTITIES, reduce_rows
from ..stats.streaming import DISTANCE_BUCKETS, DISTANCE_EDGES, distance_bucket_mass, run_streaming

__all__ = [
    "LongContextReport",
    "long_context_report",
    "document_tokens",
    "position_bins",
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
      the mean share of a query row's attention at that distance (the buckets of a head sum to 1). Only
      the buckets a distance of the analysed length can reach are listed (``low <= n_tokens - 1``): a
      512-token input has no ``1025-4096`` or ``>4096`` rows.
    - ``n_tokens``: the tokens analysed; ``n_input_tokens``: the tokens of the whole text, more than
      ``n_tokens`` when ``truncated`` (the text was cut to the model's maximum or ``max_length``).
    """

    metrics: pd.DataFrame
    sinks: pd.DataFrame
    distance: pd.DataFrame
    n_tokens: int
    model_name: str
    truncated: bool
    causal: bool
    n_input_tokens: int | None = None

    @property
    def truncation_note(self) -> str:
        """``"input cut to 512 of 2,003 tokens"`` when the text was truncated, else ``""`` (for titles and reports)."""
        if not self.truncated:
            return ""
        whole = f" of {self.n_input_tokens:,}" if self.n_input_tokens else ""
        return f"input cut to {self.n_tokens:,}{whole} tokens"


def position_bins(n: int, bins: int = 32) -> np.ndarray:
    """Edges ``[0, e_1, ..., n]`` of about ``bins`` query-position bins, geometric so early positions are resolved."""
    if n <= 1:
        return np.array([0, max(n, 1)])
    inner = np.unique(np.geomspace(1, n, num=max(2, bins)).astype(int))
    return np.unique(np.concatenate([[0], inner[inner < n], [n]]))


def document_tokens(inspector: AttentionInspector, text: str) -> int:
    """Number of tokens of ``text`` for the inspector's tokenizer, special tokens included, before any
    truncation (what ``long`` compares with the model's maximum)."""
    return len(inspector.tokenizer(text, truncation=False)["input_ids"])


def long_context_report(
    inspector: AttentionInspector,
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

    ``max_length`` (default: the model's maximum) truncates longer texts with a warning. ``layers``
    (0-based, default all) limits the layers analysed; ``bins`` is the number of query-position bins of
    the sink table and ``local_window`` the half-width of the ``local_window`` metric, in tokens.
    Encoder-decoder models are analysed on their encoder. Memory is ``O(T)`` per head plus one
    ``[heads, q_tile, k_tile]`` block; no ``[T, T]`` tensor is created. Bad input (an empty text, a layer
    the model lacks, a tile or bin count below 1) raises :class:`InputError`.
    """
    if not isinstance(text, str) or not text.strip():
        raise InputError("the text is empty; give a file with some text in it")
    for name, value in (("bins", bins), ("q_tile", q_tile), ("k_tile", k_tile)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    if local_window < 0:
        raise InputError(f"local_window must be 0 or more, got {local_window}")
    if layers is not None:
        bad = [layer for layer in layers if not 0 <= layer < inspector.num_layers]
        if bad:
            raise InputError(f"layer {bad[0]} does not exist; this model has layers 0-{inspector.num_layers - 1}")
    batch = inspector.encode([text], max_length=max_length)
    keep = [*ROW_QUANTITIES, "within"]
    probe = run_streaming(inspector, batch, layers=layers, local_window=local_window, distance_edges=DISTANCE_EDGES,
                          q_tile=q_tile, k_tile=k_tile, keep=keep)
    stack = main_stack_of(probe.rows)
    rows = probe.stacked(stack)  # {name: [1, L, H, T]}
    layer_ids = sorted(probe.rows[stack])
    valid = batch.masks(stack).valid
    n = int(batch.lengths[0])
    causal = stack in batch.causal_stacks
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
    distance = distance[distance["low"] <= max(n - 1, 0)].copy()  # drop buckets no distance of this length reaches
    distance["bucket"] = pd.Categorical(distance["bucket"], categories=list(DISTANCE_BUCKETS), ordered=True)
    distance = distance.sort_values(["layer", "head", "bucket"], ignore_index=True)
    distance["bucket"] = distance["bucket"].astype(str)
    truncated = bool(batch.truncated[0])
    return LongContextReport(metrics_df, sinks, distance, n, inspector.name, truncated, causal,
                             document_tokens(inspector, text) if truncated else n)
