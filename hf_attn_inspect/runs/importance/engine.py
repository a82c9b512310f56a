"""The importance engine: :func:`head_importance` scores every head over a dataset (ablation or gradient)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Callable

import pandas as pd
import torch

from ...capture.ablation import ABLATIONS, HeadKey, HeadScale, HeadSpec, UnitKey, resolve_heads
from ...capture.inputs import Batch
from ...capture.inspector import AttentionInspector
from ...capture.interface import OutputEdit, Site
from ...capture.recorders import AttentionCall, Recorder
from ...core.errors import InputError
from ...core.kernels import fast_attention_output, scaled_dot_product_attention_with_weights
from ...core.stacks import is_main
from ...stats.patterns import PATTERN_CLASSES, classify_sentence_heads
from ..dataset import SentenceStatsRecorder
from ..data import DataOptions, DataSpec
from ..sharded import Progress, ShardStats, finish_run, package_versions, release_free_memory, run_sharded
from ..sources import DatasetSource
from .ablation import ablation_batch, dataset_means
from .data import load_scored_data, shard_batches
from .gradient import gradient_batch
from .objectives import Objective, ObjectiveFn
from .passes import attention_units
from .tables import importance_frame, write_importance_tables

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["METHODS", "IMPORTANCE_OPTIONAL", "IMPORTANCE_OUTPUTS", "head_importance"]

#: The importance methods of :func:`head_importance`.
METHODS = ("ablation", "gradient")
#: Files of an importance run's output directory besides ``run.json`` and the shards.
IMPORTANCE_OUTPUTS = ("head_importance.csv", "pruning_curve.csv", "importance_map.png", "pruning_curve.png", "report.md")

#: The outputs a finished importance run may lack: no pruning curve with ``--no-pruning``.
IMPORTANCE_OPTIONAL = ("pruning_curve.csv", "pruning_curve.png")


class _StatsRecorder(Recorder):
    """Computes every layer for the importance engine's intact (or gated) pass: the dataset engine's statistics
    (``stats``, a :class:`~hf_attn_inspect.runs.dataset.SentenceStatsRecorder` of the batch's masks, which also
    computes the output) and the ``sites`` and ``outputs`` of every layer (for the layer cache and the replay).
    ``differentiable`` (gradients): the output is differentiable, from the reference kernel whose weights also
    give the statistics, or from torch's fused attention where that kernel's float32 path does not apply (the
    statistics are then computed on detached inputs); ``outputs`` stays empty."""

    def __init__(self, valid: torch.Tensor, special: torch.Tensor | None, punctuation: torch.Tensor | None, *,
                 differentiable: bool = False) -> None:
        self.stats = SentenceStatsRecorder(valid=valid, special=special, punctuation=punctuation)
        self.sites: dict[UnitKey, Site] = {}
        self.outputs: dict[UnitKey, torch.Tensor] = {}
        self.differentiable = differentiable

    def compute(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor | None]:
        site, stats = call.site, self.stats
        query, key, value, mask = call.query, call.key, call.value, call.mask
        self.sites[(site.stack, site.layer)] = site
        if not self.differentiable:
            output, weights = stats.compute(call)
            self.outputs[(site.stack, site.layer)] = output
            return output, weights
        simple = (site.stack in stats.stacks and call.softcap is None and query.dtype == torch.float32
                  and key.shape[-3] == query.shape[-3] and (mask is None or mask.dtype == torch.float32))
        if simple:  # one differentiable computation gives the output and the weights for the statistics
            output, weights = scaled_dot_product_attention_with_weights(query, key, value, mask, scale=call.scaling)
            stats._reduce(site, weights.detach(), call.causal)
            return output, None
        with torch.no_grad():
            stats.compute(AttentionCall(site, call.module, query.detach(), key.detach(), value.detach(), mask, call.scaling,
                                        call.kwargs))
        return fast_attention_output(query, key, value, mask, scale=call.scaling, softcap=call.softcap), None

    def record(self, call: AttentionCall) -> None:
        """Eager fallback: the statistics of the model's own weights."""
        self.stats.record(call)

    def finish(self) -> None:
        self.stats.finish()


_METRICS_BASE = ("importance", "objective")
_METRICS_ACC = ("accuracy_change", "accuracy")


def _metric_names(objective: Objective, method: str) -> tuple[str, ...]:
    return _METRICS_BASE + (_METRICS_ACC if objective.has_accuracy and method == "ablation" else ())


def head_importance(
    inspector: AttentionInspector,
    data: DataSpec | DatasetSource | torch.Tensor = None,
    *,
    method: str = "ablation",
    how: str = "zero",
    objective: Objective | ObjectiveFn | None = None,
    cache_layers: bool = True,
    copies_tokens: int | None = None,
    ablated: HeadSpec = (),
    means: dict[UnitKey, torch.Tensor] | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    report: Callable[[pd.DataFrame], object] | None = None,
    **shortcuts: Unpack[DataOptions],
) -> pd.DataFrame:
    """Score every head of ``inspector``'s model on ``data``; returns one row per head (the ``head_importance`` table).

    ``data`` is a :class:`~hf_attn_inspect.runs.data.DataSpec`, or its source given with the shortcut keywords
    of :class:`~hf_attn_inspect.runs.data.DataOptions` (``column``/``label_column``/``config``/``split``/
    ``limit``/``batch_size``/``max_length``/``shard_size``): anything
    :func:`~hf_attn_inspect.runs.sources.load_dataset_texts` reads (a list of texts, a file, a Hub name, None
    for the shipped sample; not a stream) or a ``[sentences, tokens]`` tensor of token ids (synthetic inputs,
    no padding). Rows run in length-sorted batches of ``batch_size`` (default :data:`BATCH_SIZE`), truncated
    to ``max_length`` tokens (default the model's maximum).
    Columns: ``stack``, ``layer``, ``head``, ``importance`` (``method="ablation"``: mean over sentences of
    objective with the head removed minus objective intact, in the objective's unit, positive = the model
    gets worse without it; ``"gradient"``: mean over sentences of ``|dL/d xi_h|``), ``stderr`` (standard
    error of that mean, sample standard deviation / sqrt(n)), ``rank`` (1 = most important),
    ``pattern`` (the head's most frequent attention pattern class over the sentences,
    :func:`~hf_attn_inspect.stats.patterns.classify_sentence_heads`; empty for decoder and cross stacks),
    ``objective`` (the intact model's mean objective), ``n_sentences``, and with labels and ablation
    ``accuracy_change``/``accuracy``. ``how`` is ``zero`` or ``mean`` (the head's mean output over the
    same data, computed first, or ``means``); ``ablated`` heads stay removed in every pass (for
    re-estimating importance after pruning). ``cache_layers`` replays the layers below the ablated one
    (same numbers as ``False``, faster); ``copies_tokens`` caps the tokens of one pass of batch copies.
    With ``out`` the run is sharded there (``resume``/``overwrite``, ``run.json``, ``shards/``) and
    ``head_importance.csv`` is written (by rank 0 of a run on several processes), then ``report(df)`` if
    given (the command's pruning curve and report; it may add to ``df.attrs["run"]``), and only then
    ``run.json`` says ``finished``. ``df.attrs`` holds ``objective``, ``unit``, ``method``, ``how``,
    ``counts`` and ``run``.
    """
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if how not in ABLATIONS:
        raise InputError(f"unknown ablation {how!r}; choose one of {', '.join(ABLATIONS)}")
    src, obj = load_scored_data(inspector, data, shortcuts, objective, seed)
    spec = src.spec
    fixed = resolve_heads(inspector, ablated) if ablated else []
    units = attention_units(inspector)
    params = {
        "model": inspector.name, "data": src.info, "method": method, "how": how, "objective": obj.name,
        "batch_size": spec.batch_size, "max_length": spec.max_length or inspector.max_length,
        "shard_size": spec.shard_size, "seed": seed,
        "ablated": [f"{s}.{l}.{h}" for s, l, h in fixed], "cache_layers": cache_layers,
        "dtype": str(next(inspector.model.parameters()).dtype).replace("torch.", ""), "device": str(inspector.device),
    }
    if how == "mean" and means is None:
        means = dataset_means(inspector, src, progress)
    if how == "zero":
        means = None
    fixed_edit = _fixed_edit(inspector, fixed, means)
    names = _metric_names(obj, method)
    n_units, h_max = len(units), max(h for _, h in units)

    def compute(start: int, stop: int, bar: Progress | None) -> ShardStats:
        stats = ShardStats.empty(n_units, h_max, names, _class_names())
        truncated, skipped = 0, {}
        for batch, rows in shard_batches(inspector, src, start, stop, skipped):
            truncated += int(sum(batch.truncated))
            values, classes = _score_batch(inspector, batch, rows, obj, units, method, means, fixed_edit,
                                           cache_layers, copies_tokens)
            stats.add_values(values, classes)
            if inspector.device.type == "cpu":
                release_free_memory()
            if bar is not None:
                bar.update(len(rows))
        stats.rows, stats.truncated, stats.skipped = stop - start, truncated, skipped
        if bar is not None:
            bar.update(stop - start - stats.n)
        return stats

    run_ = run_sharded(src.rows, spec.shard_size, compute, out_dir=out, params=params, outputs=IMPORTANCE_OUTPUTS,
                       optional=IMPORTANCE_OPTIONAL,
                       resume=resume, overwrite=overwrite, progress=progress, desc=f"importance ({method})",
                       column=src.columns[0])
    df = importance_frame(run_.total, units, obj, method, how)
    run = {"status": "finished", "parameters": params, "versions": package_versions(), "counts": run_.counts,
           "shards_total": run_.shards_total, "shards_resumed": run_.shards_resumed,
           "elapsed_s": round(run_.elapsed, 3), "objective": obj.name, "unit": obj.unit,
           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    df.attrs.update(objective=obj.name, unit=obj.unit, method=method, how=how, counts=run_.counts, run=run,
                    model=inspector.name)
    finish_run(out, run, df, write_importance_tables, report, is_main=run_.is_main)
    return df


def _class_names() -> tuple[str, ...]:
    """The pattern classes plus ``""`` (heads of stacks whose patterns are not measured)."""
    return tuple(PATTERN_CLASSES) + ("",)


def _fixed_edit(inspector: AttentionInspector, heads: list[HeadKey], means: dict[UnitKey, torch.Tensor] | None) -> HeadScale | None:
    if not heads:
        return None
    dims = inspector.dims()
    scale: dict[UnitKey, torch.Tensor] = {}
    for stack, layer, head in heads:
        scale.setdefault((stack, layer), torch.ones(1, dims[stack][1]))[0, head] = 0.0
    fill = {k: means[k] for k in scale} if means is not None else {}
    return HeadScale(scale, fill)


def _score_batch(
    inspector: AttentionInspector, batch: Batch, rows: list[int], obj: Objective, units: list[tuple[UnitKey, int]],
    method: str, means: dict[UnitKey, torch.Tensor] | None, fixed: HeadScale | None, cache_layers: bool, copies_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``([B, units, heads, metrics], [B, units, heads] pattern classes)`` of one batch."""
    b = batch.size
    h_max = max(h for _, h in units)
    inputs, targets = obj.prepare(batch, rows)
    m = batch.masks("self")
    recorder = _StatsRecorder(m.valid, m.special, m.punctuation, differentiable=method == "gradient")
    edits: list[OutputEdit] = [fixed] if fixed is not None else []
    if method == "gradient":
        values = gradient_batch(inspector, inputs, targets, rows, obj, units, recorder, edits)
    else:
        values = ablation_batch(inspector, inputs, targets, obj, units, recorder, edits, means, cache_layers, copies_tokens)
    stats = recorder.stats.per_sentence() if recorder.stats.values else None  # [B, L, H, M] of the main stack
    classes = torch.full((b, len(units), h_max), len(PATTERN_CLASSES), dtype=torch.long)
    if stats is not None:
        per = {k: stats[..., i] for i, k in enumerate(recorder.stats.metric_names)}
        _, cls = classify_sentence_heads(per)
        main = [i for i, ((s, _), _) in enumerate(units) if is_main(s)]
        classes[:, main, : cls.shape[2]] = cls
    return values, classes
