"""Whole-dataset attention analysis at about the speed of the model's own forward pass.

:func:`analyze_dataset` runs a model over every text of a dataset and returns one row per
(layer, head) with, for every metric ``m`` of :mod:`hf_attn_inspect.stats.metrics`, ``m_mean`` (the average
over sentences of the per-sentence value: each sentence weighs the same, as in Clark et al. 2019) and
``m_std`` (its population standard deviation over sentences), plus ``share_<class>``: the share of
sentences in which the head falls in each pattern class.

How it stays fast and small:

- texts are read shard by shard (``shard_size`` rows, dataset order); inside a shard they are sorted
  by token length and run ``batch_size`` at a time, padded only to the longest text of the batch;
- a :class:`SentenceStatsProbe` reduces each layer's attention to per-sentence statistics with
  :func:`~hf_attn_inspect.stats.metrics.sentence_metrics` inside the capture, so no weights outlive their
  layer: memory does not grow with the dataset size or the number of layers;
- statistics are merged as float64 sums, sums of squares and counts, so shards combine exactly; with an
  output directory each shard is written atomically as it finishes, a killed run restarts from the
  last finished shard (``resume=True``) and ends with the same numbers, and a finished run is never
  overwritten unless asked (``overwrite=True``).

The probe is pluggable (``probe=``): any :class:`~hf_attn_inspect.capture.interface.Probe` that, after
:meth:`AttentionInspector.run`, returns per-sentence values from ``per_sentence()`` (see
:class:`SentenceStatsProbe`) can replace the default exact weights-based one, e.g. a streaming probe
that computes the statistics from query/key tiles.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..stats.analysis import PATTERN_CLASSES, PatternThresholds, pattern_index
from ..capture.interface import Probe, Site
from ..core.kernels import scaled_dot_product_attention_with_weights
from ..core.errors import InputError, OutputError
from ..core.tokens import punctuation_table
from ..stats.metrics import METRICS, sentence_metrics

__all__ = [
    "PATTERN_CLASSES",
    "SentenceStatsProbe",
    "ShardStats",
    "analyze_dataset",
    "classify_sentence_heads",
    "head_stats_frame",
    "layer_stats_frame",
    "write_report",
]

# --------------------------------------------------------------------------- pattern classes
def classify_sentence_heads(
    values: dict[str, torch.Tensor], thresholds: dict[str, float] | None = None
) -> tuple[tuple[str, ...], torch.Tensor]:
    """Pattern class of every (sentence, layer, head) from its per-sentence metrics.

    ``values`` maps metric names to tensors of one shape (e.g. ``[batch, layers, heads]``); the rule and
    its inputs are :func:`hf_attn_inspect.stats.analysis.pattern_index` (Clark et al. 2019 thresholds,
    :class:`~hf_attn_inspect.stats.analysis.PatternThresholds`; override fields with ``thresholds``). Returns
    ``(class names, index tensor)`` of that shape.
    """
    th = PatternThresholds(**(thresholds or {}))
    return PATTERN_CLASSES, pattern_index(values, th)


# --------------------------------------------------------------------------- the probe
def _fast_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float | None,
    scratch: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and float32 weights of float32, non-GQA attention with an additive (or no) mask.

    Same numbers as the core (scores, softmax and weighted sum in float32), without the core's mask
    analysis: the model's additive eager mask (0 / dtype minimum) is added to the scores as is, so
    masked keys get exactly 0. Rows whose keys are all masked (padding queries) come out uniform instead
    of 0; they are padding, which every statistic ignores. The scores are computed into ``scratch``
    (a buffer reused from layer to layer) and the softmax is done in place: on CPU, allocating fresh
    ``[batch, heads, T, T]`` tensors costs more than the arithmetic.
    """
    scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    shape = (*query.shape[:-1], key.shape[-2])
    if scratch is not None and tuple(scratch.shape) == shape:
        scores = torch.matmul(query, key.transpose(-1, -2), out=scratch)
    else:
        scores = torch.matmul(query, key.transpose(-1, -2))
    scores.mul_(scale)
    if mask is not None:
        scores.add_(mask)
    scores.sub_(scores.amax(-1, keepdim=True)).exp_()
    scores.div_(scores.sum(-1, keepdim=True))
    return torch.matmul(scores, value), scores


class SentenceStatsProbe(Probe):
    """Reduces every layer's attention to per-sentence statistics inside the capture; keeps no weights.

    ``valid``/``special``/``punctuation`` are boolean ``[batch, tokens]`` masks of the batch (real
    tokens, the tokenizer's special tokens, punctuation-only tokens). Each attention call of the chosen
    ``stacks`` (default: ``self`` and ``encoder``, the model's main text stack) computes the exact
    float32 weights, passes them to :func:`~hf_attn_inspect.stats.metrics.sentence_metrics` and keeps only
    the ``[batch, heads, metrics]`` result; the weights are dropped before the next layer runs.
    :meth:`per_sentence` returns ``[batch, layers, heads, metrics]`` (metric order: :attr:`metric_names`).

    The engine calls ``probe_factory(valid=..., special=..., punctuation=..., sparsity_threshold=...)``
    for each batch; a replacement probe must accept these keywords and provide ``metric_names`` and
    ``per_sentence()``.
    """

    metric_names: tuple[str, ...] = METRICS + ("column_share",)

    def __init__(
        self,
        valid: torch.Tensor,
        special: torch.Tensor | None = None,
        punctuation: torch.Tensor | None = None,
        *,
        sparsity_threshold: float = 0.3,
        stacks: Sequence[str] = ("self", "encoder"),
    ) -> None:
        self.valid = valid
        self.special = special
        self.punctuation = punctuation
        self.sparsity_threshold = sparsity_threshold
        self.stacks = set(stacks)
        self.values: dict[int, torch.Tensor] = {}
        self.causal = False
        self._scratch: torch.Tensor | None = None

    def attend(self, site, module, query, key, value, mask, scaling, **kwargs):  # noqa: ANN001
        if site.stack not in self.stacks:
            return scaled_dot_product_attention_with_weights(
                query, key, value, mask, scale=scaling, softcap=kwargs.get("softcap")
            )
        causal = bool(getattr(module, "is_causal", False))
        fast = (
            kwargs.get("softcap") is None
            and query.dtype == torch.float32
            and key.shape[-3] == query.shape[-3]
            and (mask is None or (mask.is_floating_point() and mask.dtype == torch.float32))
        )
        if fast:
            shape = (*query.shape[:-1], key.shape[-2])
            if self._scratch is None or tuple(self._scratch.shape) != shape:
                self._scratch = torch.empty(shape, dtype=torch.float32, device=query.device)
            output, weights = _fast_attention(query, key, value, mask, scaling, self._scratch)
        else:
            output, weights = scaled_dot_product_attention_with_weights(
                query, key, value, mask, scale=scaling, softcap=kwargs.get("softcap")
            )
        self._reduce(site, weights, causal)
        return output, None

    def record(self, site: Site, weights: torch.Tensor) -> None:
        """Eager fallback (models without the attention interface): reduce the weights we are given."""
        if site.stack in self.stacks:
            self._reduce(site, weights, self.causal)

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
        v = self.valid.to(dev).float()
        cols = torch.matmul(v[:, None, None, :], weights).squeeze(-2)  # sum over valid query rows
        cols = cols * v[:, None, :] / v.sum(-1).clamp_min(1.0)[:, None, None]
        m["column_share"] = cols.amax(-1)
        self.values[site.layer] = torch.stack([m[k] for k in self.metric_names], -1).float()

    def per_sentence(self) -> torch.Tensor:
        """``[batch, layers, heads, metrics]`` float32 on the CPU, layers in model order."""
        if not self.values:
            raise InputError("the model produced no attention for the analysed stack")
        return torch.stack([self.values[k] for k in sorted(self.values)], 1).cpu()


# --------------------------------------------------------------------------- mergeable statistics
@dataclass
class ShardStats:
    """Sums over sentences for one shard (or any set of shards): combine with ``+``, exactly.

    ``sums``/``sumsq`` are float64 ``[layers, heads, metrics]`` sums of the per-sentence values and of
    their squares; ``class_counts`` ``[layers, heads, classes]`` counts sentences per pattern class;
    ``n`` is the number of analysed sentences; ``rows`` the rows read; ``skipped`` the rows left out by
    reason; ``truncated`` the texts cut to the model's maximum length.
    """

    metric_names: tuple[str, ...]
    class_names: tuple[str, ...]
    sums: np.ndarray
    sumsq: np.ndarray
    class_counts: np.ndarray
    n: int = 0
    rows: int = 0
    truncated: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    @classmethod
    def empty(cls, layers: int, heads: int, metric_names, class_names) -> "ShardStats":
        m, c = len(metric_names), len(class_names)
        return cls(
            tuple(metric_names), tuple(class_names),
            np.zeros((layers, heads, m)), np.zeros((layers, heads, m)), np.zeros((layers, heads, c), np.int64),
        )

    def add_values(self, values: torch.Tensor, classes: torch.Tensor) -> None:
        """Add per-sentence ``values [batch, layers, heads, metrics]`` and ``classes [batch, layers, heads]``."""
        v = values.double().numpy()
        self.sums += v.sum(0)
        self.sumsq += np.square(v).sum(0)
        onehot = torch.nn.functional.one_hot(classes, len(self.class_names)).sum(0)
        self.class_counts += onehot.numpy().astype(np.int64)
        self.n += int(values.shape[0])

    def __add__(self, other: "ShardStats") -> "ShardStats":
        if other.metric_names != self.metric_names or other.class_names != self.class_names:
            raise InputError("cannot merge statistics with different metrics or classes")
        skipped = dict(self.skipped)
        for k, v in other.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
        return ShardStats(
            self.metric_names, self.class_names, self.sums + other.sums, self.sumsq + other.sumsq,
            self.class_counts + other.class_counts, self.n + other.n, self.rows + other.rows,
            self.truncated + other.truncated, skipped,
        )

    def save(self, path: Path) -> None:
        """Write atomically (temporary file in the same folder, then ``os.replace``)."""
        meta = {
            "metric_names": list(self.metric_names), "class_names": list(self.class_names), "n": self.n,
            "rows": self.rows, "truncated": self.truncated, "skipped": self.skipped,
        }
        _atomic_write(path, lambda fh: np.savez(
            fh, sums=self.sums, sumsq=self.sumsq, class_counts=self.class_counts, meta=np.array(json.dumps(meta))
        ), binary=True)

    @classmethod
    def load(cls, path: Path) -> "ShardStats":
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            return cls(
                tuple(meta["metric_names"]), tuple(meta["class_names"]), z["sums"], z["sumsq"],
                z["class_counts"], meta["n"], meta["rows"], meta["truncated"], dict(meta["skipped"]),
            )


def head_stats_frame(stats: ShardStats) -> pd.DataFrame:
    """The ``head_stats`` table: one row per (layer, head), 0-indexed ``layer``, ``head``, ``n_sentences``,
    ``<metric>_mean`` / ``<metric>_std`` (population std over sentences), ``share_<class>`` and ``pattern``
    (the class with the largest share)."""
    nl, nh, _ = stats.sums.shape
    n = max(stats.n, 1)
    mean = stats.sums / n
    var = np.clip(stats.sumsq / n - np.square(mean), 0.0, None)
    layer, head = np.meshgrid(np.arange(nl), np.arange(nh), indexing="ij")
    frame: dict[str, Any] = {"layer": layer.ravel(), "head": head.ravel(), "n_sentences": np.full(nl * nh, stats.n)}
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


# --------------------------------------------------------------------------- helpers
def _atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _atomic_write(path, lambda fh: json.dump(data, fh, indent=2, default=str))


def _release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``), so batches of varying shapes do not
    leave the process's peak memory growing with the number of batches; a no-op elsewhere."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None


def _versions() -> dict[str, str]:
    import datasets
    import transformers

    from .. import __version__

    return {
        "hf_attn_inspect": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "datasets": datasets.__version__, "numpy": np.__version__, "pandas": pd.__version__,
        "python": platform.python_version(),
    }


def _clean_rows(ds: Any, start: int, stop: int, columns: tuple[str, ...]):
    """Rows ``start:stop``: -> (texts, pairs or None, skipped counts)."""
    chunk = ds[start:stop]
    firsts = chunk[columns[0]]
    seconds = chunk[columns[1]] if len(columns) == 2 else [None] * len(firsts)
    texts, pairs, skipped = [], [], {"empty": 0, "non_string": 0}
    for a, b in zip(firsts, seconds):
        parts = (a,) if len(columns) == 1 else (a, b)
        if any(not isinstance(p, str) for p in parts):
            skipped["non_string"] += 1
        elif any(not p.strip() for p in parts):
            skipped["empty"] += 1
        else:
            texts.append(a)
            pairs.append(b)
    return texts, (pairs if len(columns) == 2 else None), skipped


# --------------------------------------------------------------------------- the engine
@dataclass
class ShardedRun:
    """What :func:`run_sharded` returns: the merged statistics and the run's bookkeeping."""

    total: ShardStats
    counts: dict[str, Any]
    shards_total: int
    shards_resumed: int
    analysed_now: int
    elapsed: float


def run_sharded(
    n_rows: int,
    shard_size: int,
    compute: Callable[[int, int, Any], ShardStats],
    *,
    out_dir: Path | None,
    params: dict[str, Any],
    resume: bool,
    overwrite: bool,
    progress: bool,
    desc: str,
    column: str,
) -> ShardedRun:
    """Run ``compute(start, stop, bar)`` over rows ``[0, n_rows)`` shard by shard and merge the results.

    With ``out_dir``, every finished shard is written atomically and a run with the same ``params`` is
    resumed from its finished shards (``resume``) or replaced (``overwrite``); ``run.json`` says
    ``running`` meanwhile. The shared loop of ``batch`` and ``compare``. Raises :class:`InputError` when
    no row of ``column`` was usable.
    """
    n_shards = max(1, math.ceil(n_rows / shard_size))
    done: dict[int, ShardStats] = {}
    if out_dir is not None:
        done = _prepare_out(out_dir, params, resume, overwrite)
        _write_json(out_dir / "run.json", {"status": "running", "parameters": params, "versions": _versions(),
                                           "shards_total": n_shards, "shards_done": len(done)})
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_rows, unit="sent", desc=desc, dynamic_ncols=True,
                   initial=sum(s.rows for s in done.values()))
    started = time.perf_counter()
    analysed_now = 0
    total: ShardStats | None = None
    try:
        for shard in range(n_shards):
            if shard in done:
                stats = done[shard]
            else:
                stats = compute(shard * shard_size, min(n_rows, (shard + 1) * shard_size), bar)
                analysed_now += stats.n
                if out_dir is not None:
                    _save_shard(out_dir, shard, stats)
            total = stats if total is None else total + stats
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - started
    assert total is not None
    if total.n == 0:
        raise InputError(f"no usable text in column {column!r} ({total.rows} rows, all empty or not text)")
    counts = {"rows": total.rows, "analysed": total.n, "skipped": dict(total.skipped),
              "skipped_total": sum(total.skipped.values()), "truncated": total.truncated}
    return ShardedRun(total, counts, n_shards, len(done), analysed_now, elapsed)


def analyze_dataset(
    inspector: Any,
    dataset: Any = None,
    column: str | Sequence[str] = "text",
    *,
    config: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    max_length: int | None = None,
    shard_size: int = 2048,
    sparsity_threshold: float = 0.3,
    probe: Callable[..., Probe] | None = None,
    classify: Callable[[dict[str, torch.Tensor]], tuple[tuple[str, ...], torch.Tensor]] | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    report: bool = True,
) -> pd.DataFrame:
    """Analyse every text of ``dataset`` and return the ``head_stats`` table (one row per layer and head).

    ``dataset`` is a :class:`datasets.Dataset`, a list of strings (or of ``(text, pair)`` tuples), a
    local file/folder or Hub name, or ``None`` for the shipped sample (see
    :func:`~hf_attn_inspect.runs.sources.load_dataset_texts`, which also takes ``config``/``split``/
    ``column``/``limit``; ``column="a,b"`` analyses sentence pairs). Columns: ``layer``, ``head``,
    ``n_sentences``, ``<metric>_mean`` (average over sentences of the per-sentence value, padding never
    counted), ``<metric>_std`` (population standard deviation over sentences), ``share_<class>`` (share
    of sentences in which the head is in that pattern class, see :func:`classify_sentence_heads`) and
    ``pattern`` (the most frequent class). Empty or non-string rows are skipped and counted; texts longer
    than ``max_length`` (default: the model's maximum) are truncated and counted (``df.attrs["counts"]``).

    ``probe`` builds the per-batch probe (default :class:`SentenceStatsProbe`); ``classify`` maps the
    per-sentence metrics to pattern classes (default :func:`classify_sentence_heads`). With ``out``, the
    run is written there shard by shard (see the module docstring): ``resume=True`` continues a stopped
    run, ``overwrite=True`` replaces a previous one; when ``report`` is True the tables, figures,
    ``report.md`` and ``run.json`` are written at the end. ``progress=True`` shows a tqdm bar with
    sentences per second on stderr.
    """
    from .sources import load_dataset_texts

    if batch_size < 1 or shard_size < 1:
        raise InputError("batch size and shard size must be at least 1")
    ds, info = load_dataset_texts(dataset, config=config, split=split, column=column, limit=limit)
    probe_factory = probe or SentenceStatsProbe
    classify = classify or classify_sentence_heads
    limit_len = max_length or inspector.max_length
    n_rows = ds.num_rows
    params = {
        "model": inspector.name,
        "model_revision": getattr(inspector.config, "_commit_hash", None),
        "dataset": info.to_dict(),
        "batch_size": batch_size,
        "max_length": limit_len,
        "shard_size": shard_size,
        "sparsity_threshold": sparsity_threshold,
        "probe": getattr(probe_factory, "__qualname__", repr(probe_factory)),
        "dtype": str(next(inspector.model.parameters()).dtype).replace("torch.", ""),
        "device": str(inspector.device),
    }
    out_dir = Path(out) if out is not None else None
    run_ = run_sharded(
        n_rows, shard_size,
        lambda start, stop, bar: _run_shard(inspector, ds, start, stop, info.columns, batch_size, limit_len,
                                            sparsity_threshold, probe_factory, classify, bar),
        out_dir=out_dir, params=params, resume=resume, overwrite=overwrite, progress=progress, desc="batch",
        column=info.columns[0],
    )
    total, counts, elapsed = run_.total, run_.counts, run_.elapsed
    df = head_stats_frame(total)
    df.attrs["counts"] = counts
    if out_dir is not None:
        run = {"status": "finished", "parameters": params, "versions": _versions(), "counts": counts,
               "shards_total": run_.shards_total, "shards_resumed": run_.shards_resumed, "elapsed_s": round(elapsed, 3),
               "sentences_per_s": round(run_.analysed_now / elapsed, 2) if elapsed > 0 else None,
               "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_report(out_dir, df, run, figures=report, report=report)
        _write_json(out_dir / "run.json", run)
    return df


def _run_shard(inspector, ds, start, stop, columns, batch_size, limit_len, threshold, probe_factory, classify, bar):
    texts, pairs, skipped = _clean_rows(ds, start, stop, columns)
    nl, nh = next(iter(inspector.dims().values()))
    stats: ShardStats | None = None
    truncated = 0
    if texts:
        # Lengths first (plain id lists), then each length-sorted batch is encoded on its own, so
        # memory depends on the batch, not on the shard or dataset size.
        tok_args = {"text": texts} if pairs is None else {"text": texts, "text_pair": pairs}
        lengths = torch.tensor([len(x) for x in inspector.tokenizer(**tok_args)["input_ids"]])
        order = torch.sort(lengths, stable=True).indices  # length buckets, deterministic
        table = punctuation_table(inspector.tokenizer)
        for b0 in range(0, len(texts), batch_size):
            sel = order[b0:b0 + batch_size].tolist()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # truncation is counted, not warned about per text
                enc = inspector.encode([texts[i] for i in sel], None if pairs is None else [pairs[i] for i in sel],
                                       max_length=limit_len, truncation=True)
            truncated += int(sum(enc.truncated))
            valid = enc.valid.cpu()
            special = enc.special_mask
            ids = enc.inputs["input_ids"]
            punct = table[ids.clamp(0, len(table) - 1)] & valid
            batch = enc
            idx = sel
            p = probe_factory(valid=valid, special=special, punctuation=punct, sparsity_threshold=threshold)
            inspector.run(batch, p)
            values = p.per_sentence()  # [b, L, H, M]
            names = tuple(p.metric_names)
            per = {k: values[..., i] for i, k in enumerate(names)}
            class_names, classes = classify(per)
            if stats is None:
                stats = ShardStats.empty(values.shape[1], values.shape[2], names, class_names)
            stats.add_values(values, classes)
            del p, values, per, classes
            if inspector.device.type == "cpu":
                _release_free_memory()
            if bar is not None:
                bar.update(len(idx))
    if stats is None:  # nothing usable in this shard
        names = tuple(getattr(probe_factory, "metric_names", METRICS))
        stats = ShardStats.empty(nl, nh, names, classify({k: torch.zeros(1) for k in names})[0])
    stats.rows = stop - start
    stats.truncated = truncated
    stats.skipped = skipped
    if bar is not None:
        bar.update(stop - start - stats.n)
    return stats


def _slice_inputs(inputs: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows ``idx`` of every input, trimmed to the longest of them (encoder and decoder separately)."""
    enc_len = int(inputs["attention_mask"][idx].sum(-1).max())
    dec_len = int(inputs["decoder_attention_mask"][idx].sum(-1).max()) if "decoder_attention_mask" in inputs else 0
    return {k: v[idx, : (dec_len if k.startswith("decoder_") else enc_len)].contiguous() for k, v in inputs.items()}


# --------------------------------------------------------------------------- output directory
_SHARDS = "shards"


def _prepare_out(out_dir: Path, params: dict[str, Any], resume: bool, overwrite: bool) -> dict[int, ShardStats]:
    """Check the output directory and return the shards a resumed run already finished."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"output path {str(out_dir)!r} exists and is not a directory")
    run_file = out_dir / "run.json"
    previous = None
    if run_file.exists():
        try:
            previous = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
    has_shards = (out_dir / _SHARDS).is_dir() and any((out_dir / _SHARDS).glob("shard-*.npz"))
    if overwrite:
        _clear(out_dir)
        return {}
    if previous is not None and previous.get("status") == "finished":
        raise OutputError(
            f"{str(out_dir)!r} holds a finished run; pass --overwrite to replace it or choose another --out"
        )
    if (previous is not None or has_shards) and not resume:
        raise OutputError(
            f"{str(out_dir)!r} holds an unfinished run; pass --resume to continue it or --overwrite to start again"
        )
    if not resume:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create output directory {str(out_dir)!r}: {exc.strerror}") from exc
        return {}
    if previous is not None and previous.get("parameters") != json.loads(json.dumps(params, default=str)):
        old = previous.get("parameters", {})
        diff = sorted(k for k in set(old) | set(params) if old.get(k) != json.loads(json.dumps(params.get(k), default=str)))
        raise OutputError(
            f"cannot resume {str(out_dir)!r}: it was started with different settings ({', '.join(diff)}); "
            "rerun with the same options or pass --overwrite"
        )
    done = {}
    for path in sorted((out_dir / _SHARDS).glob("shard-*.npz")):
        try:
            done[int(path.stem.split("-")[1])] = ShardStats.load(path)
        except Exception:  # a damaged shard is recomputed
            continue
    return done


def _clear(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = out_dir / _SHARDS
    if shards.is_dir():
        for p in shards.glob("shard-*.npz"):
            p.unlink()
    for name in ("run.json", "head_stats.csv", "head_stats.parquet", "layer_stats.csv", "report.md"):
        if (out_dir / name).exists():
            (out_dir / name).unlink()


def _save_shard(out_dir: Path, shard: int, stats: ShardStats) -> None:
    stats.save(out_dir / _SHARDS / f"shard-{shard:06d}.npz")


# --------------------------------------------------------------------------- report
FIGURES = {
    "entropy": ("entropy_mean", "mean entropy (nats)", "viridis"),
    "special_tokens": ("special_tokens_mean", "share of attention on special tokens", "magma"),
    "previous_token": ("previous_token_mean", "share of attention on the previous token", "magma"),
}


def write_report(out_dir: str | os.PathLike, head_stats: pd.DataFrame, run: dict[str, Any], *,
                 figures: bool = True, report: bool = True) -> list[Path]:
    """Write ``head_stats.parquet``/``.csv``, ``layer_stats.csv``, the figures (layers x heads maps of
    entropy, special-token share, previous-token share and the pattern class) and ``report.md`` into
    ``out_dir``, each atomically; returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    csv_path = out / "head_stats.csv"
    _atomic_write(csv_path, lambda fh: head_stats.to_csv(fh, index=False, float_format="%.9g"))
    pq = out / "head_stats.parquet"
    _atomic_write(pq, lambda fh: head_stats.to_parquet(fh, index=False), binary=True)
    layer = layer_stats_frame(head_stats)
    _atomic_write(out / "layer_stats.csv", lambda fh: layer.to_csv(fh, index=False, float_format="%.9g"))
    written += [csv_path, pq, out / "layer_stats.csv"]
    if figures:
        written += _figures(out / "figures", head_stats)
    if report:
        text = _report_text(head_stats, layer, run)
        _atomic_write(out / "report.md", lambda fh: fh.write(text))
        written.append(out / "report.md")
    return written


def _grid(head_stats: pd.DataFrame, column: str) -> pd.DataFrame:
    return head_stats.pivot(index="layer", columns="head", values=column)


def _figures(fig_dir: Path, head_stats: pd.DataFrame) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.colors import ListedColormap

    fig_dir.mkdir(parents=True, exist_ok=True)
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


def _save_fig(fig, path: Path) -> Path:
    _atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110, bbox_inches="tight"), binary=True)
    return path


def _report_text(head_stats: pd.DataFrame, layer: pd.DataFrame, run: dict[str, Any]) -> str:
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
