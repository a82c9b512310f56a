"""Ablation importance: each head removed in turn (layers below replayed from a cache), mean head outputs
for mean ablation, and sets of heads removed together (:func:`ablation_effect`)."""

from __future__ import annotations

import math
import re
import weakref
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

import torch

from ...capture.ablation import (
    ABLATIONS,
    HeadKey,
    HeadScale,
    HeadSpec,
    MeanOutputRecorder,
    SiteRecorder,
    UnitKey,
    query_masks,
    resolve_heads,
)
from ...capture.inputs import Batch
from ...capture.inspector import AttentionInspector
from ...capture.interface import OutputEdit, Site
from ...capture.recorders import AttentionCall, Recorder
from ...core.errors import CaptureError, InputError
from ...core.kernels import fast_attention_output
from ..data import DataOptions, DataSpec
from ..sharded import Progress, ShardStats, run_sharded
from ..sources import DatasetSource
from .data import ImportanceData, load_scored_data, shard_batches
from .objectives import Objective, ObjectiveFn
from .passes import copies_per_pass, forward_pass, model_inputs, repeat_rows, attention_units

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["ablation_effect"]


_LAYER_NAME = re.compile(r"^(.*?\.\d+)(?:\.|$)")


class _LayerCache:
    """Records every layer's output in a plain pass and replays it for the layers below an ablated head."""

    def __init__(self, model: torch.nn.Module, sites: dict[UnitKey, Site]) -> None:
        modules = dict(model.named_modules())
        self.layer_of: dict[UnitKey, str] = {}
        for unit, site in sites.items():
            m = _LAYER_NAME.match(site.name)
            if m and m.group(1) in modules:
                self.layer_of[unit] = m.group(1)
        self.modules = {name: modules[name] for name in set(self.layer_of.values())}
        self.ok = len(self.layer_of) == len(sites) and len(sites) > 0
        self.order: list[str] = []
        self.outputs: dict[str, object] = {}

    @contextmanager
    def record(self) -> Iterator[None]:
        self.order, self.outputs = [], {}
        handles = []
        for name, mod in self.modules.items():
            def hook(module: torch.nn.Module, args: object, output: object, name: str = name) -> None:
                self.order.append(name)
                self.outputs[name] = output
            handles.append(mod.register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
        if len(set(self.order)) != len(self.order):  # a layer ran twice: replay would be wrong
            self.ok = False

    @contextmanager
    def replay_below(self, unit: UnitKey, copies: int, batch: int) -> Iterator[None]:
        """Within the block, the layers run before ``unit``'s layer return their recorded outputs."""
        target = self.layer_of[unit]
        below = self.order[: self.order.index(target)]
        try:
            for name in below:
                out = repeat_rows(self.outputs[name], copies, batch)
                self.modules[name].forward = (lambda *a, _o=out, **k: _o)  # type: ignore[method-assign]
            yield
        finally:
            for name in below:
                self.modules[name].__dict__.pop("forward", None)


class _ReplayRecorder(Recorder):
    """Computes every layer with torch's fused attention, except the ablated layer ``unit``, whose intact
    output ``output`` (from the intact pass, repeated for the ``copies`` batch copies) it returns instead of
    recomputing it: the heads' outputs there are unchanged until the edit removes one."""

    def __init__(self, unit: UnitKey, output: torch.Tensor | None, copies: int) -> None:
        self.unit, self.output, self.copies = unit, output, copies

    def compute(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.output
        if out is not None and (call.site.stack, call.site.layer) == self.unit and call.query.shape[0] == out.shape[0] * self.copies:
            return repeat_rows(out, self.copies, out.shape[0]), None
        return fast_attention_output(call.query, call.key, call.value, call.mask, scale=call.scaling, softcap=call.softcap), None


def ablation_batch(
    inspector: AttentionInspector,
    inputs: dict[str, torch.Tensor],
    targets: object,
    obj: Objective,
    units: list[tuple[UnitKey, int]],
    stats: Recorder,
    edits: Sequence[OutputEdit],
    means: Mapping[UnitKey, torch.Tensor] | None,
    cache_layers: bool,
    copies_tokens: int | None,
) -> torch.Tensor:
    """``[B, units, heads, metrics]``: the intact pass (``stats`` records the pattern statistics and every
    layer's output), then each head removed in turn (in batch copies, the layers below replayed)."""
    model = inspector.model
    b = next(iter(inputs.values())).shape[0]
    t = next(iter(inputs.values())).shape[1]
    h_max = max(h for _, h in units)
    acc = obj.has_accuracy
    values = torch.zeros(b, len(units), h_max, 4 if acc else 2)
    model_in = model_inputs(inputs, inspector.device)
    with torch.no_grad():
        cache = _LayerCache(model, _sites_of(inspector)) if cache_layers else None
        if cache is not None and not cache.ok:
            cache = None
        with ExitStack() as stack:
            if cache is not None:
                stack.enter_context(cache.record())
            output = forward_pass(inspector, model_in, [stats], edits)
        if cache is not None and not cache.ok:
            cache = None
        if obj.needs_reference:
            targets = obj.set_reference(output, targets)
        base = obj.loss(output, targets).float().cpu()
        base_acc = obj.accuracy(output, targets) if acc else None
        del output
        per_pass = copies_per_pass(copies_tokens, b, t, inspector.device)
        for i, (unit, h) in enumerate(units):
            for h0 in range(0, h, per_pass):
                heads = list(range(h0, min(h, h0 + per_pass)))
                g = len(heads)
                scale = torch.ones(g, h)
                scale[torch.arange(g), torch.tensor(heads)] = 0.0
                fill = {unit: means[unit]} if means is not None and unit in means else {}
                edit = HeadScale({unit: scale}, fill)
                rep_in = {k: repeat_rows(v, g, b) for k, v in model_in.items()}
                rep_targets = {k: repeat_rows(v, g, b) for k, v in targets.items()}
                replay = _ReplayRecorder(unit, stats.outputs.get(unit) if cache is not None else None, g)
                with ExitStack() as stack:
                    if cache is not None:
                        stack.enter_context(cache.replay_below(unit, g, b))
                    output = forward_pass(inspector, rep_in, [replay], [*edits, edit])
                loss = obj.loss(output, rep_targets).float().cpu().view(g, b)
                values[:, i, heads, 0] = (loss - base[None]).T
                if acc:
                    a = obj.accuracy(output, rep_targets).float().cpu().view(g, b)
                    values[:, i, heads, 2] = (a - base_acc.cpu()[None]).T
                del output
    values[..., 1] = base[:, None, None]
    if acc:
        values[..., 3] = base_acc.float().cpu()[:, None, None]
    return values


def _sites_of(inspector: AttentionInspector) -> dict[UnitKey, Site]:
    """The site of every attention module of the model, found by a one-token dry run (cached per model)."""
    model = inspector.model
    cached = _SITES.get(model)
    if cached is not None:
        return cached
    recorder = SiteRecorder()
    ids = torch.zeros(1, 2, dtype=torch.long, device=inspector.device)
    inputs = {"input_ids": ids}
    if inspector.is_encoder_decoder:
        inputs["decoder_input_ids"] = ids
    forward_pass(inspector, inputs, [recorder])
    _SITES[model] = dict(recorder.sites)
    return recorder.sites


_SITES: "weakref.WeakKeyDictionary[torch.nn.Module, dict[UnitKey, Site]]" = weakref.WeakKeyDictionary()


# =========================================================================== means for mean ablation
def dataset_means(inspector: AttentionInspector, src: ImportanceData, progress: bool) -> dict[UnitKey, torch.Tensor]:
    """Each head's mean output over every real token of the data (one forward pass per batch)."""
    units = attention_units(inspector)
    recorder = MeanOutputRecorder()

    def compute(start: int, stop: int, bar: Progress | None) -> ShardStats:
        stats = ShardStats.empty(1, 1, ("sentences",), ("",))
        for batch, rows in shard_batches(inspector, src, start, stop):
            recorder.query_valid = query_masks(batch)
            inspector.run(batch, recorder)
            stats.add_values(torch.zeros(len(rows), 1, 1, 1), torch.zeros(len(rows), 1, 1, dtype=torch.long))
            if bar is not None:
                bar.update(len(rows))
        stats.rows = stop - start
        return stats

    run_sharded(src.rows, max(src.rows, 1), compute, progress=progress, desc="mean head outputs", column=src.columns[0])
    missing = [u for u, _ in units if u not in recorder.sums]
    if missing:
        raise CaptureError(f"no attention output was seen for layer {missing[0][1]} ({missing[0][0]})")
    return recorder.means()


# =========================================================================== sets of heads removed together
def _group_batch(inspector: AttentionInspector, batch: Batch, rows: list[int], obj: Objective,
                 groups: list[list[HeadKey]], means: dict[UnitKey, torch.Tensor] | None,
                 copies_tokens: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``([groups, B] objective, [groups, B] accuracy or None)`` with each group's heads removed together."""
    dims = inspector.dims()
    b, t = batch.size, batch.inputs["attention_mask"].shape[1]
    inputs, targets = obj.prepare(batch, rows)
    model_in = model_inputs(inputs, inspector.device)
    if obj.needs_reference:
        targets = obj.set_reference(forward_pass(inspector, model_in), targets)
    per_pass = copies_per_pass(copies_tokens, b, t, inspector.device)
    losses, accs = [], []
    for g0 in range(0, len(groups), per_pass):
        chunk = groups[g0:g0 + per_pass]
        g = len(chunk)
        scale: dict[UnitKey, torch.Tensor] = {}
        for gi, heads in enumerate(chunk):
            for stack, layer, head in heads:
                scale.setdefault((stack, layer), torch.ones(g, dims[stack][1]))[gi, head] = 0.0
        fill = {k: means[k] for k in scale} if means is not None else {}
        rep_targets = {k: repeat_rows(v, g, b) for k, v in targets.items()}
        output = forward_pass(inspector, {k: repeat_rows(v, g, b) for k, v in model_in.items()}, (), [HeadScale(scale, fill)])
        losses.append(obj.loss(output, rep_targets).float().cpu().view(g, b))
        if obj.has_accuracy:
            accs.append(obj.accuracy(output, rep_targets).float().cpu().view(g, b))
    return torch.cat(losses), (torch.cat(accs) if accs else None)


def groups_over_data(
    inspector: AttentionInspector, src: ImportanceData, obj: Objective, groups: list[list[HeadKey]],
    means: dict[UnitKey, torch.Tensor] | None, copies_tokens: int | None, progress: bool, desc: str,
) -> tuple[ShardStats, tuple[str, ...]]:
    names = ("objective", "change", "accuracy") if obj.has_accuracy else ("objective", "change")

    def compute(start: int, stop: int, bar: Progress | None) -> ShardStats:
        stats, skipped = ShardStats.empty(len(groups), 1, names, ("",)), {}
        for batch, rows in shard_batches(inspector, src, start, stop, skipped):
            loss, acc = _group_batch(inspector, batch, rows, obj, groups, means, copies_tokens)
            parts = [loss.T, (loss - loss[:1]).T] + ([acc.T] if acc is not None else [])
            vals = torch.stack(parts, -1)[:, :, None, :]  # [B, groups, 1, metrics]; "change" is against group 0
            stats.add_values(vals, torch.zeros(vals.shape[:3], dtype=torch.long))
            if bar is not None:
                bar.update(len(rows))
        stats.rows, stats.skipped = stop - start, skipped
        return stats

    run_ = run_sharded(src.rows, max(src.rows, 1), compute, progress=progress, desc=desc, column=src.columns[0])
    return run_.total, names


def ablation_effect(
    inspector: AttentionInspector,
    data: DataSpec | DatasetSource | torch.Tensor = None,
    heads: HeadSpec = (),
    *,
    how: str = "zero",
    objective: Objective | ObjectiveFn | None = None,
    means: dict[UnitKey, torch.Tensor] | None = None,
    seed: int = 0,
    progress: bool = False,
    **shortcuts: Unpack[DataOptions],
) -> dict[str, object]:
    """The objective before and after removing ``heads`` together, over ``data`` (a
    :class:`~hf_attn_inspect.runs.data.DataSpec` or its source with the shortcut keywords, as
    :func:`head_importance`; the rows run in one pass, ``shard_size`` is not used).

    Returns ``before`` and ``after`` (mean objective over sentences, in ``unit``), ``change`` (after minus
    before, the mean of per-sentence differences) with ``stderr``, ``n_sentences``, ``heads`` (the removed
    heads as ``stack.layer.head``), ``objective``, ``unit`` and, with labels, ``accuracy_before``/``accuracy_after``.
    """
    if how not in ABLATIONS:
        raise InputError(f"unknown ablation {how!r}; choose one of {', '.join(ABLATIONS)}")
    keys = resolve_heads(inspector, heads)
    if not keys:
        raise InputError("no head given to ablate; pass heads like '3.5,0.1'")
    src, obj = load_scored_data(inspector, data, shortcuts, objective, seed)
    if how == "mean" and means is None:
        means = dataset_means(inspector, src, progress)
    total, names = groups_over_data(inspector, src, obj, [[], keys], means if how == "mean" else None, None,
                                     progress, "ablation")
    if total.n == 0:
        raise InputError("no usable sentence in the data")
    n = total.n
    before, after = total.sums[0, 0, 0] / n, total.sums[1, 0, 0] / n
    change = total.sums[1, 0, 1] / n
    var = max((total.sumsq[1, 0, 1] - n * change ** 2) / max(n - 1, 1), 0.0)
    out: dict[str, object] = {"before": float(before), "after": float(after), "change": float(change),
                              "stderr": float(math.sqrt(var / n)), "n_sentences": n,
                              "heads": [f"{s}.{l}.{h}" for s, l, h in keys], "objective": obj.name, "unit": obj.unit}
    if "accuracy" in names:
        out["accuracy_before"] = float(total.sums[0, 0, 2] / n)
        out["accuracy_after"] = float(total.sums[1, 0, 2] / n)
    return out
