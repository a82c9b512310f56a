"""Compare the attention of two checkpoints head by head: what did fine-tuning (or an edit) change?

Both models read the same inputs through the one capture path (:meth:`AttentionInspector.run` with
recorders: a :class:`~hf_attn_inspect.capture.recorders.WeightsRecorder` for A). Model A's weights of one padded batch are kept per layer; while
model B runs, each of its layers is reduced at once against A's same layer (Jensen-Shannon divergence of
every query row, and every metric of :func:`~hf_attn_inspect.stats.metrics.sentence_metrics` for both models)
and A's copy of that layer is dropped, so nothing larger than one batch of one model's weights is held.
Inputs go through the shared run loop (:mod:`hf_attn_inspect.runs.sharded`): the same dataset loading as the
batch engine (one :class:`~hf_attn_inspect.runs.data.DataSpec`), rows read shard by shard, length-sorted
batches (:func:`~hf_attn_inspect.runs.data.sorted_batches`), statistics merged as sums
(:class:`~hf_attn_inspect.runs.sharded.ShardStats`), shards written atomically and a stopped run resumable.
The engine returns the table (and with ``out`` writes ``head_divergence.csv``, ``run.json`` and the
shards); the figures and ``report.md`` are the view layer's
(:func:`hf_attn_inspect.views.comparison.write_comparison`).

Numbers per (layer, head), all sentences weighing the same:

- ``js_divergence``: ``JS(p, q) = 1/2 KL(p || m) + 1/2 KL(q || m)``, ``m = (p + q) / 2``, natural log (nats,
  between 0 and ``ln 2 = 0.693``), where ``p``/``q`` are A's/B's attention rows of one query; averaged over
  the sentence's real (non-padding) query rows, then over sentences (``js_divergence_std``: its standard
  deviation over sentences). Padding keys carry no weight in either model and do not count.
- ``delta_<metric>``: B's mean minus A's mean of each metric of :mod:`hf_attn_inspect.stats.metrics`;
  ``a_<metric>`` and ``b_<metric>`` are the two means.
- ``class_a`` / ``class_b``: each head's pattern class in A and in B
  (:func:`~hf_attn_inspect.stats.patterns.classify_heads` on the first :data:`CLASS_SAMPLE` texts);
  absent with ``classes=False``.
"""

from __future__ import annotations

import itertools
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..capture.inputs import Batch
from ..capture.inspector import AttentionInspector, ModelSource, resolve_inspector
from ..capture.recorders import AttentionCall, Recorder, WeightsRecorder
from ..capture.result import AttentionResult
from ..core.errors import InputError
from ..core.files import atomic_write
from ..core.stacks import DECODER, is_self_attention, main_stack_of, result_stack, self_attention_stacks
from ..core.tokens import Tokenizer
from ..stats.metrics import METRICS, sentence_metrics
from ..stats.patterns import classify_heads
from .data import DataSpec, Rows, encode_rows, sorted_batches
from .sharded import Progress, ShardStats, clean_rows, finish_run, package_versions, run_sharded
from .distributed import process_device
from .sources import DatasetSource

__all__ = [
    "BATCH_SIZE",
    "CLASS_SAMPLE",
    "OUTPUTS",
    "VALUE_NAMES",
    "compare_models",
    "head_pair_results",
    "js_divergence_rows",
]

#: Per-sentence values kept for every head: the divergence, then A's and B's metrics.
VALUE_NAMES = ("js_divergence",) + tuple(f"a_{k}" for k in METRICS) + tuple(f"b_{k}" for k in METRICS)
_ALL = ("compared",)  # ShardStats counts sentences per class; compare has one "class": compared

#: Number of texts (from the start of the input) on which the pattern classes are computed.
CLASS_SAMPLE = 16

#: Sentences per batch when neither ``batch_size`` nor the :class:`~hf_attn_inspect.runs.data.DataSpec` says.
BATCH_SIZE = 16


# ------------------------------------------------------------------------------------------ maths
def js_divergence_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between matching rows of ``p`` and ``q`` (``[..., K]`` -> ``[...]``).

    Rows are probability vectors (attention rows); zero entries contribute nothing (``0 ln 0 = 0``).
    Identical rows give exactly 0; disjoint rows give ``ln 2``. Values are clamped at 0 against rounding.
    """
    p = p.float()
    q = q.float()
    m = 0.5 * (p + q)
    kl_p = (torch.xlogy(p, p) - torch.xlogy(p, m)).sum(-1)
    kl_q = (torch.xlogy(q, q) - torch.xlogy(q, m)).sum(-1)
    return (0.5 * (kl_p + kl_q)).clamp_min(0.0)


class _ReduceRecorder(Recorder):
    """Model B's recorder: reduces each layer against A's kept layer as soon as it is computed, then drops it.

    :meth:`per_sentence` returns ``[batch, layers, heads, len(VALUE_NAMES)]``.
    """

    needs_weights = True

    def __init__(self, stack: str, reference: dict[int, torch.Tensor], valid: torch.Tensor, special: torch.Tensor,
                 punctuation: torch.Tensor, causal: bool) -> None:
        self.stack = stack
        self.reference = reference
        self.valid, self.special, self.punctuation = valid, special, punctuation
        self.causal = causal
        self.values: dict[int, torch.Tensor] = {}

    def record(self, call: AttentionCall) -> None:
        site = call.site
        if site.stack != self.stack:
            return
        wa = self.reference.pop(site.layer, None)
        if wa is None:
            raise InputError(f"model B has a layer {site.layer} that model A did not run; compare models of the same shape")
        wb = call.weights.detach().float().to(wa.device)
        dev = wa.device
        valid = self.valid.to(dev)
        rows = valid[:, None, :].float()
        js = (js_divergence_rows(wa, wb) * rows).sum(-1) / rows.sum(-1).clamp_min(1.0)  # [B, H]
        kw = {"special": self.special.to(dev), "punctuation": self.punctuation.to(dev), "causal": self.causal}
        ma = sentence_metrics(wa, valid, **kw)
        mb = sentence_metrics(wb, valid, **kw)
        # kept on the device: one transfer per batch in per_sentence(), no host synchronisation per layer
        self.values[site.layer] = torch.stack([js] + [ma[k] for k in METRICS] + [mb[k] for k in METRICS], -1)

    def per_sentence(self) -> torch.Tensor:
        if self.reference:
            missing = sorted(self.reference)
            raise InputError(f"model B ran no layer {missing[0]} that model A has; compare models of the same shape")
        return torch.stack([self.values[k] for k in sorted(self.values)], 1).cpu()


# ------------------------------------------------------------------------------------- model setup
def _main_stack(inspector: AttentionInspector, stack: str | None) -> str:
    dims = inspector.dims()
    if stack is None:
        return main_stack_of(dims)
    if stack not in dims or not is_self_attention(stack):
        choices = ", ".join(self_attention_stacks(dims))
        raise InputError(f"cannot compare stack '{stack}'; this model has: {choices}")
    return stack


def _check_shapes(a: AttentionInspector, b: AttentionInspector, stack: str) -> tuple[int, int]:
    da, db = a.dims(), b.dims()
    if da.get(stack) != db.get(stack) or set(da) != set(db):
        fa = ", ".join(f"{s}: {l} layers x {h} heads" for s, (l, h) in da.items())
        fb = ", ".join(f"{s}: {l} layers x {h} heads" for s, (l, h) in db.items())
        raise InputError(f"model A ({fa}) and model B ({fb}) differ in shape; only models with the same layers and heads can be compared")
    return da[stack]


def _check_tokens(ea: Batch, eb: Batch, rows: Sequence[int], first_row: int | None) -> None:
    """Both tokenizers must split every text of a batch into the same tokens; name the first text (in dataset
    order) and token that differ. ``rows`` are the batch's indices into its shard, ``first_row`` the shard's
    first row number when no row before a text was skipped (its number is then ``first_row + row + 1``)."""
    decoder = ea.decoder_encoding is not None
    for i in sorted(range(len(rows)), key=rows.__getitem__):
        pairs = [(ea.tokens(i), eb.tokens(i))] + ([(ea.tokens(i, True), eb.tokens(i, True))] if decoder else [])
        for ta, tb in pairs:
            if ta == tb:
                continue
            pos = next((j for j, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
            xa = repr(ta[pos]) if pos < len(ta) else "the end of the text"
            xb = repr(tb[pos]) if pos < len(tb) else "the end of the text"
            which = f"text {first_row + rows[i] + 1}" if first_row is not None else "the text"
            raise InputError(
                f"the tokenizers of A and B split {which} ({ea.texts[i][:40]!r}) differently at token {pos}: "
                f"A has {xa}, B has {xb}; compare models that share a tokenizer"
            )


# -------------------------------------------------------------------------------------------- engine
def _run_shard(ia: AttentionInspector, ib: AttentionInspector, ds: Rows, start: int, stop: int,
               columns: tuple[str, ...], batch_size: int, limit_len: int, stack: str, dims: tuple[int, int],
               bar: Progress | None) -> ShardStats:
    texts, pairs, skipped = clean_rows(ds, start, stop, columns)
    stats = ShardStats.empty(dims[0], dims[1], VALUE_NAMES, _ALL)
    truncated = 0
    first_row = start if not sum(skipped.values()) else None
    for rows, batch_a in sorted_batches(ia, texts, pairs, batch_size=batch_size, max_length=limit_len, kept_length=True):
        batch_b = encode_rows(ib, texts, pairs, rows, limit_len)
        _check_tokens(batch_a, batch_b, rows, first_row)
        truncated += int(sum(batch_a.truncated))
        masks = batch_a.masks(stack)
        keep = WeightsRecorder(stacks=[stack], device=None)
        ia.run(batch_a, keep)
        causal = stack in batch_a.causal_stacks or stack == DECODER
        reduce = _ReduceRecorder(stack, keep.weights.get(stack, {}), masks.valid, masks.special, masks.punctuation,
                                 causal)
        ib.run(batch_b, reduce)
        values = reduce.per_sentence()
        stats.add_values(values, torch.zeros(values.shape[:3], dtype=torch.long))
        if bar is not None:
            bar.update(len(rows))
    stats.rows = len(texts) + sum(skipped.values())  # rows read: fewer than stop - start at a stream's end
    stats.truncated = truncated
    stats.skipped = skipped
    if bar is not None:
        bar.update(stats.rows - stats.n)
    return stats


def _frame(stats: ShardStats) -> pd.DataFrame:
    nl, nh, _ = stats.sums.shape
    n = max(stats.n, 1)
    mean = stats.sums / n
    var = np.clip(stats.sumsq / n - np.square(mean), 0.0, None)
    col = {name: i for i, name in enumerate(stats.metric_names)}
    layer, head = np.meshgrid(np.arange(nl), np.arange(nh), indexing="ij")
    frame: dict[str, np.ndarray] = {"layer": layer.ravel(), "head": head.ravel(), "js_divergence": mean[..., 0].ravel()}
    frame.update({f"delta_{k}": (mean[..., col[f"b_{k}"]] - mean[..., col[f"a_{k}"]]).ravel() for k in METRICS})
    frame["js_divergence_std"] = np.sqrt(var[..., 0]).ravel()
    frame["n_sentences"] = np.full(nl * nh, stats.n)
    frame.update({f"a_{k}": mean[..., col[f"a_{k}"]].ravel() for k in METRICS})
    frame.update({f"b_{k}": mean[..., col[f"b_{k}"]].ravel() for k in METRICS})
    df = pd.DataFrame(frame)
    return df.sort_values(["js_divergence", "layer", "head"], ascending=[False, True, True], kind="stable").reset_index(drop=True)


def _first_rows(ds: Rows, columns: tuple[str, ...], n: int) -> tuple[list[str], list[str] | None]:
    """The first ``n`` usable texts (and pairs) of the dataset (or a fresh stream), skipping rows as the
    batch engine does."""
    texts: list[str] = []
    pairs: list[str] = []
    for start in itertools.count(0, 256):
        t, p, skipped = clean_rows(ds, start, start + 256, columns)
        texts += t
        pairs += p or []
        if len(texts) >= n or len(t) + sum(skipped.values()) < 256:
            break
    return texts[:n], (pairs[:n] if len(columns) == 2 else None)


def _add_classes(df: pd.DataFrame, a: AttentionInspector, b: AttentionInspector, texts: list[str],
                 pairs: list[str] | None, stack: str, max_length: int | None) -> pd.DataFrame:
    """Add ``class_a``/``class_b``: :func:`~hf_attn_inspect.stats.patterns.classify_heads` of each model on
    ``texts`` (the first :data:`CLASS_SAMPLE` texts; pattern classes are not additive over shards, so they
    come from one sample)."""
    which = result_stack(stack)
    for side, inspector in (("a", a), ("b", b)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = inspector(texts, pairs, max_length=max_length, batch_size=len(texts))
        classes = classify_heads(results, which=which)
        merged = df[["layer", "head"]].merge(classes[["layer", "head", "class"]], on=["layer", "head"], how="left")
        df[f"class_{side}"] = merged["class"].to_numpy()
    return df


#: Every file of a finished comparison's output directory besides ``run.json`` and ``shards/``: the
#: engine's ``head_divergence.csv`` and the view layer's figures and ``report.md`` (deleted by ``overwrite=True``).
OUTPUTS = ("head_divergence.csv", "divergence_map.png", "head_diffs.png", "report.md")

#: The outputs a finished comparison may lack: ``head_diffs.png`` is not drawn with ``top=0``.
OPTIONAL = ("head_diffs.png",)


def compare_models(
    a: ModelSource,
    b: ModelSource,
    texts_or_dataset: DatasetSource = None,
    *,
    tokenizer: Tokenizer | None = None,
    column: str | Sequence[str] = "text",
    config: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    max_length: int | None = None,
    shard_size: int = 2048,
    stack: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    classes: bool = True,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    streaming: bool = False,
    data: DataSpec | None = None,
    report: Callable[[pd.DataFrame], object] | None = None,
) -> pd.DataFrame:
    """Per-head difference between the attention of models A and B on the same inputs.

    ``a``/``b`` are Hub names, local checkpoint directories, :class:`AttentionInspector` objects or
    in-memory models (with ``tokenizer=`` or as ``(model, tokenizer)`` pairs; B defaults to A's
    tokenizer), resolved by :func:`~hf_attn_inspect.capture.inspector.resolve_inspector`.
    The inputs are a :class:`~hf_attn_inspect.runs.data.DataSpec` (``data=``, or as ``texts_or_dataset``),
    or are given by the shortcut keywords: ``texts_or_dataset`` is anything the batch engine reads: a list
    of texts, a ``datasets.Dataset``, a local file/folder or Hub name (with ``column``/``config``/``split``/
    ``limit``; ``column="a,b"`` compares sentence pairs), or ``None`` for the sample shipped with the package. Empty or non-string
    rows are skipped and counted, long texts truncated to ``max_length`` (default: A's maximum) and
    counted (``df.attrs["counts"]``).

    Returns one row per (layer, head) sorted by ``js_divergence`` descending, with the columns of the
    module docstring; ``df.attrs`` holds ``counts``, ``n_sentences``, ``model_a``, ``model_b``, ``stack``,
    ``max_length``, ``first_text`` / ``first_pair`` (the first usable input, the one the view draws) and
    ``run`` (the run record ``run.json`` holds). Rows are read ``shard_size`` at a time and run in
    length-sorted batches of ``batch_size`` (default :data:`BATCH_SIZE`).

    With ``out``, writes there (each file atomically) one shard of sums per ``shard_size`` rows as it
    finishes, then ``head_divergence.csv`` and ``run.json``; ``resume=True`` continues a stopped run from
    its shards (same numbers as an uninterrupted run), ``overwrite=True`` replaces a finished one (refused
    otherwise). The figures and ``report.md`` are written by
    :func:`hf_attn_inspect.views.comparison.write_comparison`: pass it as ``report`` (called with the table
    once ``head_divergence.csv`` is written), so ``run.json`` says ``finished`` only once they are written
    too (an interrupted report leaves a ``stopped`` run that ``resume=True`` completes). Raises :class:`InputError` when the models
    differ in layers/heads or their tokenizers split a text differently (naming text and token).
    ``classes=False`` skips the pattern classes. ``streaming=True`` reads the dataset as a stream (same
    rows, same numbers; see :func:`~hf_attn_inspect.runs.sources.load_dataset_texts`).

    Launched on several processes (``accelerate launch`` / ``torchrun``), models given by name load on
    each rank's own device (:func:`~hf_attn_inspect.runs.distributed.process_device`), the shards are
    shared out, every rank returns the same table and only rank 0 writes ``head_divergence.csv`` and
    ``run.json`` (with ``world_size`` and ``ranks``).
    """
    device = process_device(device)
    ia = resolve_inspector(a, tokenizer, device=device, dtype=dtype, what="model A")
    ib = resolve_inspector(b, tokenizer or ia.tokenizer, device=device, dtype=dtype, what="model B")
    which = _main_stack(ia, stack)
    dims = _check_shapes(ia, ib, which)
    spec = DataSpec.build(texts_or_dataset, data=data, default_batch_size=BATCH_SIZE, column=column, config=config, split=split,
                          limit=limit, streaming=streaming, batch_size=batch_size, max_length=max_length,
                          shard_size=shard_size)
    loaded = spec.load()
    info, rows = loaded.info, loaded.rows()
    limit_len = spec.max_length or min(ia.max_length, ib.max_length)
    params = {
        "kind": "compare",
        "model_a": ia.name,
        "model_b": ib.name,
        "dataset": info.to_dict(),
        "batch_size": spec.batch_size,
        "max_length": limit_len,
        "shard_size": spec.shard_size,
        "stack": which,
        "dtype": str(next(ia.model.parameters()).dtype).replace("torch.", ""),
    }

    def compute(start: int, stop: int, bar: Progress | None) -> ShardStats:
        return _run_shard(ia, ib, rows, start, stop, info.columns, spec.batch_size, limit_len, which, dims, bar)

    run_ = run_sharded(
        loaded.num_rows, spec.shard_size, compute, out_dir=out, params=params, outputs=OUTPUTS, optional=OPTIONAL,
        resume=resume,
        overwrite=overwrite, progress=progress, desc="compare", column=info.columns[0],
    )
    total, counts = run_.total, run_.counts
    df = _frame(total)
    first_texts, first_pairs = _first_rows(loaded.rows(), info.columns, CLASS_SAMPLE)
    if classes:
        df = _add_classes(df, ia, ib, first_texts, first_pairs, which, limit_len)
    run = {"status": "finished", "parameters": params, "versions": package_versions(), "counts": counts,
           "shards_total": run_.shards_total, "shards_resumed": run_.shards_resumed, "first_text": first_texts[0],
           "pattern_classes": "class_a" in df, "elapsed_s": round(run_.elapsed, 3),
           "world_size": run_.world_size, "ranks": run_.ranks,
           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    df.attrs.update({"counts": counts, "n_sentences": total.n, "model_a": ia.name, "model_b": ib.name, "stack": which,
                     "max_length": limit_len, "first_text": first_texts[0],
                     "first_pair": None if first_pairs is None else first_pairs[0], "run": run})
    finish_run(out, run, df, _write_divergence, report, is_main=run_.is_main)
    return df


def _write_divergence(out_dir: str | os.PathLike, df: pd.DataFrame) -> None:
    """``head_divergence.csv``, atomically."""
    atomic_write(Path(out_dir) / "head_divergence.csv", lambda fh: df.to_csv(fh, index=False))


def head_pair_results(
    a: AttentionInspector,
    b: AttentionInspector,
    text: str,
    pair: str | None,
    heads: Sequence[tuple[int, int]],
    *,
    max_length: int | None = None,
) -> tuple[AttentionResult, AttentionResult]:
    """A's and B's :class:`AttentionResult` of one text (and its pair), holding the layers and heads of
    ``heads`` (``(layer, head)`` pairs; a result keeps every combination of those layers and heads).

    The exact weights the view draws side by side (:func:`hf_attn_inspect.views.comparison.plot_head_diffs`);
    truncation to ``max_length`` is silent here, as the comparison already counted it.
    """
    keep = {"layers": sorted({l for l, _ in heads}), "heads": sorted({h for _, h in heads}), "max_length": max_length}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ra = a(text, pair, **keep)
        rb = b(text, pair, **keep)
    return ra, rb
