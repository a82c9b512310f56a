"""Whole-dataset attention analysis at about the speed of the model's own forward pass.

:func:`analyze_dataset` runs a model over every text of a dataset and returns one row per
(layer, head) with, for every metric ``m`` of :mod:`hf_attn_inspect.stats.metrics`, ``m_mean`` (the average
over sentences of the per-sentence value: each sentence weighs the same, as in Clark et al. 2019) and
``m_std`` (its population standard deviation over sentences), plus ``share_<class>``: the share of
sentences in which the head falls in each pattern class.

How it stays fast and small:

- texts are read shard by shard (``shard_size`` rows, dataset order); inside a shard they are sorted
  by token length and run ``batch_size`` at a time, padded only to the longest text of the batch;
- a :class:`SentenceStatsRecorder` reduces each layer's attention to per-sentence statistics with
  :func:`~hf_attn_inspect.stats.metrics.sentence_metrics` inside the capture, so no weights outlive their
  layer: memory does not grow with the dataset size or the number of layers;
- statistics are merged as float64 sums, sums of squares and counts, so shards combine exactly; with an
  output directory each shard is written atomically as it finishes, a killed run restarts from the
  last finished shard (``resume=True``) and ends with the same numbers, and a finished run is never
  overwritten unless asked (``overwrite=True``).

The recorder is pluggable (``probe=``): any :class:`~hf_attn_inspect.capture.recorders.Recorder` (or
probe) that, after :meth:`AttentionInspector.run`, returns per-sentence values from ``per_sentence()`` (see
:class:`SentenceStatsRecorder`) can replace the default exact weights-based one, e.g. a streaming
recorder that computes the statistics from query/key tiles. The data options are one
:class:`~hf_attn_inspect.runs.data.DataSpec`; the batches of a shard come from
:func:`~hf_attn_inspect.runs.data.sorted_batches`.

The shards, resume and counts are the shared run loop of :mod:`hf_attn_inspect.runs.sharded`. With
``out`` the engine writes the data: ``shards/``, ``head_stats.csv`` / ``.parquet``, ``layer_stats.csv``
(:func:`write_tables`) and ``run.json``; the figures and ``report.md`` are the view layer's
(:func:`hf_attn_inspect.views.reports.write_dataset_report`).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..stats.patterns import classify_sentence_heads
from ..capture.inspector import AttentionInspector
from ..capture.interface import Probe, Site
from ..capture.recorders import AttentionCall, Recorder
from ..core.kernels import (
    TILE_MIN_LENGTH,
    FusedLayout,
    FusedMasks,
    TilePlan,
    TileWorkspace,
    attention_output_row_stats,
    fast_attention_with_weights,
    fused_attention_packed,
    fused_available,
    fused_masks,
    plan_tiles,
    single_threaded,
    scaled_dot_product_attention_with_weights,
)
from ..core.errors import CaptureError
from ..core.files import atomic_write
from ..core.stacks import MAIN_STACKS
from ..stats.metrics import HEAD_METRICS, METRICS, column_share, reduce_rows, sentence_metrics
from .data import DataSpec, Rows, sorted_batches
from .sharded import (Progress, ShardStats, clean_rows, finish_run, package_versions, release_free_memory,
                      run_sharded)
from .sources import DatasetSource

__all__ = [
    "BATCH_SIZE",
    "OUTPUTS",
    "SentenceStatsRecorder",
    "analyze_dataset",
    "head_stats_frame",
    "layer_stats_frame",
    "write_tables",
]

# --------------------------------------------------------------------------- the recorder
#: Below this many scores per layer (``batch * heads * T * S``) the weights path runs on one intra-op
#: thread: its two dozen small operations would each end in a barrier of torch's threads.
_SMALL = 1 << 20


class SentenceStatsRecorder(Recorder):
    """Reduces every layer's attention to per-sentence statistics inside the capture; keeps no weights.

    ``valid``/``special``/``punctuation`` are boolean ``[batch, tokens]`` masks of the batch (real
    tokens, the tokenizer's special tokens, punctuation-only tokens). It computes attention itself
    (:meth:`compute`): each attention call of the chosen ``stacks`` (default: ``self`` and ``encoder``, the
    model's main text stack) computes the exact float32 weights, passes them to
    :func:`~hf_attn_inspect.stats.metrics.sentence_metrics` and keeps only the ``[batch, heads, metrics]``
    result; the weights are dropped before the next layer runs. On CUDA (Triton installed) the fused kernel
    :func:`~hf_attn_inspect.core.kernels.fused_attention_stats` gives the output and the same statistics
    without ever forming the weights (``weight_std`` from power sums, equal within float32 rounding); each
    layer leaves one packed row buffer on the device and :meth:`finish` (called by the inspector after the
    forward pass) reduces all layers and heads at once, with no host synchronisation until
    :meth:`per_sentence`. On the CPU, batches of at least :data:`~hf_attn_inspect.core.kernels.TILE_MIN_LENGTH`
    tokens take the tiled kernel :func:`~hf_attn_inspect.core.kernels.attention_output_row_stats` instead
    (output and row statistics in one pass over score tiles, buffers reused across layers,
    ``weight_std`` from power sums as on CUDA), shorter ones the materialised weights, whichever is
    cheaper (small batches run their weights path on one intra-op thread); :attr:`paths` says which ran
    (``"fused"``, ``"tiles"``, ``"weights"``). Other stacks are
    computed with the reference kernel. On the eager fallback (:meth:`record`) the model's own weights are
    reduced.
    :meth:`per_sentence` returns ``[batch, layers, heads, metrics]`` (metric order: :attr:`metric_names`).

    The engine calls ``probe_factory(valid=..., special=..., punctuation=..., sparsity_threshold=...)``
    for each batch; a replacement (a :class:`~hf_attn_inspect.capture.recorders.Recorder` or a probe) must
    accept these keywords and provide ``metric_names`` and ``per_sentence()``.
    """

    metric_names: tuple[str, ...] = HEAD_METRICS

    def __init__(
        self,
        valid: torch.Tensor,
        special: torch.Tensor | None = None,
        punctuation: torch.Tensor | None = None,
        *,
        sparsity_threshold: float = 0.3,
        stacks: Sequence[str] = MAIN_STACKS,
        workspace: TileWorkspace | None = None,
    ) -> None:
        self.valid = valid
        self.special = special
        self.punctuation = punctuation
        self.sparsity_threshold = sparsity_threshold
        self.stacks = set(stacks)
        self.values: dict[int, torch.Tensor] = {}
        self.causal = False
        self._scratch: torch.Tensor | None = None
        self._device: tuple[torch.Tensor | None, ...] | None = None
        self._masks: tuple[object, FusedMasks] | None = None  # the fused kernel's key masks, once per batch
        self._pending: list[tuple[int, bool, torch.Tensor, torch.Tensor]] = []
        self._layout: FusedLayout | None = None
        self._plan: tuple[object, TilePlan | None] | None = None  # the tiled kernel's mask plan, once per batch
        self._workspace = workspace  # None: the kernel's buffers of this thread, kept from batch to batch
        #: The attention paths this batch took (``"fused"``, ``"tiles"``, ``"weights"``), for the run record.
        self.paths: set[str] = set()

    def compute(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layer's output; on the analysed ``stacks`` the exact float32 weights are reduced to
        per-sentence statistics and dropped (no weights are returned), other stacks pass through."""
        query, key, value, mask, scaling = call.query, call.key, call.value, call.mask, call.scaling
        if call.site.stack not in self.stacks:
            return scaled_dot_product_attention_with_weights(query, key, value, mask, scale=scaling, softcap=call.softcap)
        causal = call.causal
        if (
            self.sparsity_threshold >= 0
            and query.shape[-1] <= 256
            and (mask is None or isinstance(mask, torch.Tensor))
            and fused_available(query.device)
        ):
            self.paths.add("fused")
            return self._fused(call.site, query, key, value, mask, scaling, causal, call.softcap), None
        plan = self._tile_plan(call)
        if plan is not None:
            self.paths.add("tiles")
            return self._tiles(call, plan), None
        self.paths.add("weights")
        fast = (
            call.softcap is None
            and query.dtype == torch.float32
            and key.shape[-3] == query.shape[-3]
            and (mask is None or (mask.is_floating_point() and mask.dtype == torch.float32))
        )
        # small CPU batches (sentences): one intra-op thread, no barrier per small operation
        small = query.device.type == "cpu" and query.shape[0] * query.shape[1] * query.shape[2] * key.shape[-2] < _SMALL
        with single_threaded() if small else contextlib.nullcontext():
            if fast:
                shape = (*query.shape[:-1], key.shape[-2])
                if self._scratch is None or tuple(self._scratch.shape) != shape:
                    self._scratch = torch.empty(shape, dtype=torch.float32, device=query.device)
                output, weights = fast_attention_with_weights(query, key, value, mask, scaling, self._scratch)
            else:
                output, weights = scaled_dot_product_attention_with_weights(
                    query, key, value, mask, scale=scaling, softcap=call.softcap
                )
            self._reduce(call.site, weights, causal)
        return output, None

    def _tile_plan(self, call: AttentionCall) -> TilePlan | None:
        """The tiled CPU kernel's mask plan when it is the cheaper exact path for this call, else None.

        Taken on the CPU for float32 self-attention of at least :data:`TILE_MIN_LENGTH` tokens without a
        softcap or gradients, when the mask hides every padding key from the real queries (so the tiles'
        statistics equal the materialised ones); shorter batches are faster on the materialised weights.
        """
        q, k, mask = call.query, call.key, call.mask
        if (
            q.device.type != "cpu"
            or q.shape[-2] < TILE_MIN_LENGTH
            or k.shape[-2] != q.shape[-2]
            or q.dtype != torch.float32
            or k.dtype != torch.float32
            or call.softcap is not None
            or self.sparsity_threshold < 0
            or (torch.is_grad_enabled() and q.requires_grad)
            or not (mask is None or isinstance(mask, torch.Tensor))
            or tuple(self.valid.shape) != (q.shape[0], q.shape[-2])
        ):
            return None
        if self._plan is None or self._plan[0] is not mask:
            self._plan = (mask, plan_tiles(mask, self.valid, q.shape[1]))
        return self._plan[1]

    def _tiles(self, call: AttentionCall, plan: TilePlan) -> torch.Tensor:
        """The tiled CPU kernel: the layer's output, its per-row statistics reduced to this layer's values."""
        self.causal = self.causal or call.causal
        output, rows, cols = attention_output_row_stats(
            call.query, call.key, call.value, plan, valid=self.valid, special=self.special,
            punctuation=self.punctuation, scale=call.scaling, sparsity_threshold=self.sparsity_threshold,
            workspace=self._workspace,
        )
        with single_threaded():  # a few dozen small operations: no intra-op barriers
            m = reduce_rows(rows, self.valid, causal=call.causal)
            n = self.valid.float().sum(-1).clamp_min(1.0).reshape(-1, 1)
            m["column_share"] = (cols / n.unsqueeze(-1)).amax(-1)
            self.values[call.site.layer] = torch.stack([m[k] for k in self.metric_names], -1).float()
        return output

    def _fused(
        self,
        site: Site,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        scaling: float | None,
        causal: bool,
        softcap: float | None,
    ) -> torch.Tensor:
        """The fused kernel (CUDA): output and per-row statistics in one pass; :meth:`finish` reduces them.

        Same definitions as :meth:`_reduce` (``weight_std`` from power sums instead of two passes, equal
        within float32 rounding); ``column_share`` from the kernel's column sums. The key masks are
        prepared once per batch; per layer only the kernel runs. No host synchronisation.
        """
        self.causal = self.causal or causal
        dev = query.device
        if self._device is None or self._device[0].device != dev:
            self._device = tuple(None if x is None else x.to(dev) for x in (self.valid, self.special, self.punctuation))
        valid, special, punctuation = self._device
        b, s = query.shape[0], key.shape[2]
        if self._masks is None or self._masks[0] is not mask or tuple(self._masks[1].bits.shape) != (b, s):
            self._masks = (mask, fused_masks(b, s, dev, mask=mask, key_valid=valid, special=special,
                                             punctuation=punctuation))
        output, packed, col, self._layout = fused_attention_packed(
            query, key, value, self._masks[1], scale=scaling, softcap=softcap,
            sparsity_threshold=self.sparsity_threshold, column_sums=True,
        )
        self._pending.append((site.layer, causal, packed, col))
        return output

    def finish(self) -> None:
        """Reduce the pending fused layers, all layers and heads at once (device tensors; no transfer)."""
        if not self._pending:
            return
        valid = self._device[0]
        for causal in sorted({c for _, c, _, _ in self._pending}):
            items = [x for x in self._pending if x[1] == causal]
            rows = self._layout.rows(torch.stack([p for _, _, p, _ in items], 2))  # [batch, layers, heads, T]
            m = reduce_rows(rows, valid, causal=causal)
            n = valid.float().sum(-1).clamp_min(1.0).reshape(-1, 1, 1, 1)
            m["column_share"] = (torch.stack([c for *_, c in items], 1) / n).amax(-1)
            values = torch.stack([m[k] for k in self.metric_names], -1).float()  # [batch, layers, heads, M]
            for (layer, *_), v in zip(items, values.unbind(1)):
                self.values[layer] = v
        self._pending = []

    def record(self, call: AttentionCall) -> None:
        """Eager fallback (models without the attention interface): reduce the weights we are given."""
        if call.site.stack in self.stacks:
            self._reduce(call.site, call.weights, self.causal)

    def _reduce(self, site: Site, weights: torch.Tensor, causal: bool) -> None:
        self.causal = self.causal or causal
        dev = weights.device
        m = sentence_metrics(
            weights,
            self.valid.to(dev),
            special=None if self.special is None else self.special.to(dev),
            punctuation=None if self.punctuation is None else self.punctuation.to(dev),
            causal=causal,
            sparsity_threshold=self.sparsity_threshold,
        )
        # column_share: the largest mean column weight max_j mean_i a_ij (the "column" pattern)
        m["column_share"] = column_share(weights, self.valid.to(dev))[0]
        self.values[site.layer] = torch.stack([m[k] for k in self.metric_names], -1).float()

    def per_sentence(self) -> torch.Tensor:
        """``[batch, layers, heads, metrics]`` float32 on the CPU, layers in model order."""
        self.finish()
        if not self.values:
            raise CaptureError("the model produced no attention for the analysed stack")
        return torch.stack([self.values[k] for k in sorted(self.values)], 1).cpu()


# --------------------------------------------------------------------------- tables
def head_stats_frame(stats: ShardStats) -> pd.DataFrame:
    """The ``head_stats`` table: one row per (layer, head), 0-indexed ``layer``, ``head``, ``n_sentences``,
    ``<metric>_mean`` / ``<metric>_std`` (population std over sentences), ``share_<class>`` and ``pattern``
    (the class with the largest share)."""
    nl, nh, _ = stats.sums.shape
    n = max(stats.n, 1)
    mean = stats.sums / n
    var = np.clip(stats.sumsq / n - np.square(mean), 0.0, None)
    layer, head = np.meshgrid(np.arange(nl), np.arange(nh), indexing="ij")
    frame: dict[str, np.ndarray] = {"layer": layer.ravel(), "head": head.ravel(), "n_sentences": np.full(nl * nh, stats.n)}
    for i, name in enumerate(stats.metric_names):
        frame[f"{name}_mean"] = mean[..., i].ravel()
        frame[f"{name}_std"] = np.sqrt(var[..., i]).ravel()
    shares = stats.class_counts / n
    for i, name in enumerate(stats.class_names):
        frame[f"share_{name}"] = shares[..., i].ravel()
    frame["pattern"] = np.array(stats.class_names)[shares.argmax(-1).ravel()]
    return pd.DataFrame(frame)


def layer_stats_frame(head_stats: pd.DataFrame) -> pd.DataFrame:
    """Per layer: the mean over heads of every ``*_mean`` and ``share_*`` column of ``head_stats``."""
    cols = [c for c in head_stats.columns if c.endswith("_mean") or c.startswith("share_")]
    out = head_stats.groupby("layer", sort=True)[cols].mean().reset_index()
    out.insert(1, "n_heads", head_stats.groupby("layer").size().to_numpy())
    return out


#: The tables a finished run writes into its output directory (:func:`write_tables`).
TABLES = ("head_stats.csv", "head_stats.parquet", "layer_stats.csv")

#: Every file of a finished run's output directory besides ``run.json`` and ``shards/``: the tables and
#: the view layer's ``report.md`` and figures (deleted by ``overwrite=True``; never replaced when the
#: folder holds no run of ours).
OUTPUTS = TABLES + ("report.md", "figures/entropy.png", "figures/special_tokens.png", "figures/previous_token.png",
                    "figures/classes.png")


def write_tables(out_dir: str | os.PathLike, head_stats: pd.DataFrame) -> list[Path]:
    """Write ``head_stats.csv`` (9 significant digits), ``head_stats.parquet`` and ``layer_stats.csv``
    (:func:`layer_stats_frame`) into ``out_dir``, each atomically; returns the written paths."""
    out = Path(out_dir)
    csv_path = atomic_write(out / "head_stats.csv", lambda fh: head_stats.to_csv(fh, index=False, float_format="%.9g"))
    table = head_stats.copy(deep=False)  # parquet keeps the frame's attrs: the counts, not the run record (run.json)
    table.attrs = {k: v for k, v in head_stats.attrs.items() if k != "run"}
    pq = atomic_write(out / "head_stats.parquet", lambda fh: table.to_parquet(fh, index=False), binary=True)
    layer = layer_stats_frame(head_stats)
    lay = atomic_write(out / "layer_stats.csv", lambda fh: layer.to_csv(fh, index=False, float_format="%.9g"))
    return [csv_path, pq, lay]


# --------------------------------------------------------------------------- the engine
#: Sentences per batch when neither ``batch_size`` nor the :class:`DataSpec` says.
BATCH_SIZE = 64


def analyze_dataset(
    inspector: AttentionInspector,
    dataset: DataSpec | DatasetSource = None,
    column: str | Sequence[str] = "text",
    *,
    config: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    max_length: int | None = None,
    shard_size: int = 2048,
    sparsity_threshold: float = 0.3,
    probe: Callable[..., Recorder | Probe] | None = None,
    classify: Callable[[dict[str, torch.Tensor]], tuple[tuple[str, ...], torch.Tensor]] | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    streaming: bool = False,
    data: DataSpec | None = None,
    report: Callable[[pd.DataFrame], object] | None = None,
) -> pd.DataFrame:
    """Analyse every text of a dataset and return the ``head_stats`` table (one row per layer and head).

    The data is a :class:`~hf_attn_inspect.runs.data.DataSpec` (``data=``, or as ``dataset``), or is given
    by the shortcut keywords: ``dataset`` is a :class:`datasets.Dataset`, a list of strings (or of
    ``(text, pair)`` tuples), a local file/folder or Hub name, or ``None`` for the shipped sample (see
    :func:`~hf_attn_inspect.runs.sources.load_dataset_texts`, which also takes ``config``/``split``/
    ``column``/``limit``; ``column="a,b"`` analyses sentence pairs). Columns: ``layer``, ``head``,
    ``n_sentences``, ``<metric>_mean`` (average over sentences of the per-sentence value, padding never
    counted), ``<metric>_std`` (population standard deviation over sentences), ``share_<class>`` (share
    of sentences in which the head is in that pattern class, see :func:`classify_sentence_heads`) and
    ``pattern`` (the most frequent class). Empty or non-string rows are skipped and counted; texts longer
    than ``max_length`` (default: the model's maximum) are truncated and counted (``df.attrs["counts"]``).
    ``df.attrs["run"]`` is the run record (parameters, versions, counts, timing) that ``run.json`` holds.
    Rows are read ``shard_size`` at a time and run in length-sorted batches of ``batch_size`` (default
    :data:`BATCH_SIZE`).

    ``probe`` builds the per-batch recorder (default :class:`SentenceStatsRecorder`); ``classify`` maps the
    per-sentence metrics to pattern classes (default :func:`classify_sentence_heads`). With ``out``, the
    run is written there shard by shard (:func:`~hf_attn_inspect.runs.sharded.run_sharded`):
    ``resume=True`` continues a stopped run, ``overwrite=True`` replaces a previous one; at the end the
    tables (:func:`write_tables`) and ``run.json`` are written. The figures and ``report.md`` come from
    :func:`hf_attn_inspect.views.reports.write_dataset_report`: pass it as ``report`` (called with the table
    after the tables are written), so ``run.json`` says ``finished`` only once they are written too (an
    interrupted report leaves a ``stopped`` run that ``resume=True`` completes). ``progress=True`` shows a tqdm bar with
    sentences per second on stderr. ``streaming=True`` reads the dataset as a stream (see
    :func:`~hf_attn_inspect.runs.sources.load_dataset_texts`): same rows, same numbers, nothing loaded
    or converted before the first batch.

    Launched on several processes (``accelerate launch`` / ``torchrun``; put each rank's model on
    :func:`~hf_attn_inspect.runs.distributed.process_device`), the shards are shared out among them,
    every rank returns the same table, and only rank 0 writes the tables and ``run.json`` (which records
    ``world_size`` and what each rank computed, ``ranks``).
    """
    spec = DataSpec.build(dataset, data=data, default_batch_size=BATCH_SIZE, column=column, config=config, split=split,
                          limit=limit, streaming=streaming, batch_size=batch_size, max_length=max_length,
                          shard_size=shard_size)
    loaded = spec.load()
    info, rows = loaded.info, loaded.rows()
    probe_factory = probe or SentenceStatsRecorder
    classify = classify or classify_sentence_heads
    limit_len = spec.max_length or inspector.max_length
    params = {
        "model": inspector.name,
        "model_revision": getattr(inspector.config, "_commit_hash", None),
        "dataset": info.to_dict(),
        "batch_size": spec.batch_size,
        "max_length": limit_len,
        "shard_size": spec.shard_size,
        "sparsity_threshold": sparsity_threshold,
        "probe": getattr(probe_factory, "__qualname__", repr(probe_factory)),
        "dtype": str(next(inspector.model.parameters()).dtype).replace("torch.", ""),
        "device": str(inspector.device),
    }

    paths: dict[str, int] = {}  # batches per attention path (SentenceStatsRecorder.paths), this process

    def compute(start: int, stop: int, bar: Progress | None) -> ShardStats:
        return _run_shard(inspector, rows, start, stop, info.columns, spec.batch_size, limit_len, sparsity_threshold,
                          probe_factory, classify, bar, paths)

    run_ = run_sharded(
        loaded.num_rows, spec.shard_size, compute, out_dir=out, params=params, outputs=OUTPUTS, resume=resume,
        overwrite=overwrite, progress=progress, desc="batch", column=info.columns[0],
    )
    elapsed = run_.elapsed
    df = head_stats_frame(run_.total)
    run = {"status": "finished", "parameters": params, "versions": package_versions(), "counts": run_.counts,
           "shards_total": run_.shards_total, "shards_resumed": run_.shards_resumed, "elapsed_s": round(elapsed, 3),
           "sentences_per_s": round(run_.analysed_now / elapsed, 2) if elapsed > 0 else None,
           "world_size": run_.world_size, "ranks": run_.ranks,
           "attention_paths": dict(sorted(paths.items())),
           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    df.attrs["counts"] = run_.counts
    df.attrs["run"] = run
    finish_run(out, run, df, write_tables, report, is_main=run_.is_main)
    return df


def _run_shard(
    inspector: AttentionInspector,
    ds: Rows,
    start: int,
    stop: int,
    columns: tuple[str, ...],
    batch_size: int,
    limit_len: int,
    threshold: float,
    probe_factory: Callable[..., Recorder | Probe],
    classify: Callable[[dict[str, torch.Tensor]], tuple[tuple[str, ...], torch.Tensor]],
    bar: Progress | None,
    paths: dict[str, int] | None = None,
) -> ShardStats:
    """Statistics of rows ``start:stop``: length-sorted batches (:func:`sorted_batches`) through
    ``probe_factory``'s recorder; ``paths`` counts the batches by the attention path the recorder took
    (its ``paths``, e.g. ``"tiles+weights"`` when stacks differed)."""
    texts, pairs, skipped = clean_rows(ds, start, stop, columns)
    nl, nh = next(iter(inspector.dims().values()))
    stats: ShardStats | None = None
    truncated = 0
    for sel, enc in sorted_batches(inspector, texts, pairs, batch_size=batch_size, max_length=limit_len):
        truncated += int(sum(enc.truncated))
        m = enc.masks("self")
        p = probe_factory(valid=m.valid, special=m.special, punctuation=m.punctuation, sparsity_threshold=threshold)
        inspector.run(enc, p)
        if paths is not None and getattr(p, "paths", None):
            name = "+".join(sorted(p.paths))
            paths[name] = paths.get(name, 0) + 1
        values = p.per_sentence()  # [b, L, H, M]
        names = tuple(p.metric_names)
        per = {k: values[..., i] for i, k in enumerate(names)}
        class_names, classes = classify(per)
        if stats is None:
            stats = ShardStats.empty(values.shape[1], values.shape[2], names, class_names)
        stats.add_values(values, classes)
        del p, values, per, classes
        if inspector.device.type == "cpu":
            release_free_memory()
        if bar is not None:
            bar.update(len(sel))
    if stats is None:  # nothing usable in this shard
        names = tuple(getattr(probe_factory, "metric_names", METRICS))
        stats = ShardStats.empty(nl, nh, names, classify({k: torch.zeros(1) for k in names})[0])
    stats.rows = len(texts) + sum(skipped.values())  # rows read: fewer than stop - start at a stream's end
    stats.truncated = truncated
    stats.skipped = skipped
    if bar is not None:
        bar.update(stats.rows - stats.n)
    return stats
