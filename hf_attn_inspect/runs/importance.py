"""Which heads matter: head ablation importance, gradient importance and pruning curves over a dataset.

:func:`head_importance` scores every attention head of a model on a dataset:

- ``method="ablation"``: the objective with the head removed (zeroed, or replaced by its mean output)
  minus the objective of the intact model, per sentence, averaged with equal sentence weight
  (``importance``), with its standard error (``stderr``);
- ``method="gradient"``: Michel et al. (2019): a gate ``xi_h = 1`` multiplies each head's output and the
  importance is ``E |dL/d xi_h|`` over sentences, from one forward and one backward pass per batch (the
  gates are per sentence, so one backward pass gives every sentence's gradient; no weight is updated).

The objective follows the model (:func:`default_objective`): causal LM -> next-token cross-entropy
(nats), masked LM -> MLM loss on a seeded 15 % masking, sequence classification with labels ->
cross-entropy (and accuracy), encoder-decoder LM -> the decoder's next-token cross-entropy, any other
model (e.g. a sentence encoder) -> ``1 - cos`` between the ablated and the intact pooled final hidden
states (pooled as the model's own sentence-transformers pooling, else the mean over real tokens). For
that last objective the intact model is its minimum, where the gradient vanishes, so its gradient
importance is the expected norm of ``d e/d xi_h`` for the unit-length embedding ``e``, estimated with one
random Gaussian direction per sentence (``sqrt(pi/2) |u . de/dxi|`` has that expectation). Users can pass
their own objective: a callable ``(model output, batch) -> [batch]`` losses.

Speed (``cache_layers=True``): one plain forward pass per batch records every layer's output; ablating a
head of layer ``l`` then replays the cached outputs of the layers below ``l`` (their ``forward`` is
replaced for the pass, no computation) and runs only from ``l`` up, in ``copies`` copies of the batch
with a different head removed in each copy. All heads cost about ``(L + 1) / 2L`` of a forward pass each.

Everything runs through :func:`~hf_attn_inspect.runs.sharded.run_sharded` (shards, resume, progress);
:func:`pruning_curve` removes heads in increasing order of importance and reports the objective at each
step (Michel et al.'s pruning figures); :func:`ablation_effect` measures a chosen set of heads removed
together. :func:`write_importance_tables` writes ``head_importance.csv`` and ``pruning_curve.csv``; the
figures and ``report.md`` are :mod:`hf_attn_inspect.views.importance`'s.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
import weakref
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from ..capture.ablation import (
    ABLATIONS,
    HeadKey,
    HeadScale,
    HeadSpec,
    MeanOutputProbe,
    OutputProbe,
    UnitKey,
    query_masks,
    resolve_heads,
)
from ..capture.inputs import Batch
from ..capture.inspector import AttentionInspector
from ..capture.interface import OutputEdit, Probe, Site, capture
from ..core.errors import CaptureError, InputError
from ..core.files import atomic_write, write_json
from ..stats.patterns import PATTERN_CLASSES, classify_sentence_heads
from .dataset import SentenceStatsProbe
from .sharded import Progress, ShardStats, clean_rows_indexed, package_versions, release_free_memory, run_sharded
from .sources import DatasetSource, load_dataset_texts

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "METHODS",
    "IMPORTANCE_OUTPUTS",
    "Objective",
    "default_objective",
    "head_importance",
    "ablation_effect",
    "pruning_curve",
    "write_importance_tables",
]

#: The importance methods of :func:`head_importance`.
METHODS = ("ablation", "gradient")
#: Files of an importance run's output directory besides ``run.json`` and the shards.
IMPORTANCE_OUTPUTS = ("head_importance.csv", "pruning_curve.csv", "importance_map.png", "pruning_curve.png", "report.md")

#: A user objective: ``(model output, batch) -> [batch]`` per-sentence losses (higher = worse).
ObjectiveFn = Callable[[ModelOutput, Batch], torch.Tensor]


# =========================================================================== objectives
class Objective:
    """A per-sentence objective (higher = worse) for head importance; see :func:`default_objective`.

    ``prepare(batch, rows)`` returns the model inputs (e.g. with tokens masked) and the targets (tensors
    with a leading batch dimension, repeated with the inputs when a batch is copied); ``loss(output,
    targets)`` the ``[batch]`` losses; ``accuracy`` ``[batch]`` 0/1 values or None; ``grad_values`` what the
    gradient method differentiates per sentence (default: the loss) and ``grad_scale`` its factor.
    ``needs_reference``: the targets need the intact model's output (:meth:`set_reference`).
    """

    name = "objective"
    unit = ""
    kind = "custom"
    has_accuracy = False
    needs_reference = False
    grad_scale = 1.0

    def prepare(self, batch: Batch, rows: Sequence[int]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Model inputs and targets of ``batch`` (``rows``: dataset row of each sentence, for seeding)."""
        return dict(batch.inputs), {k: v for k, v in batch.inputs.items()}

    def set_reference(self, output: ModelOutput, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Targets completed with the intact model's ``output`` (only when ``needs_reference``)."""
        return targets

    def loss(self, output: ModelOutput, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[batch]`` per-sentence objective."""
        raise NotImplementedError

    def accuracy(self, output: ModelOutput, targets: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """``[batch]`` 0/1 correctness, or None when the objective has no accuracy."""
        return None

    def grad_values(self, output: ModelOutput, targets: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """``[batch]`` values whose gradients w.r.t. the gates are the gradient importance (times ``grad_scale``)."""
        return self.loss(output, targets)


def _token_ce(logits: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy per sentence (nats) over positions whose token and next token are real."""
    pred, tgt = logits[:, :-1], ids[:, 1:]
    m = (valid[:, 1:] & valid[:, :-1]).to(logits.device)
    ce = F.cross_entropy(pred.float().transpose(1, 2), tgt.to(logits.device), reduction="none")
    return (ce * m).sum(1) / m.sum(1).clamp(min=1)


class _CausalLM(Objective):
    name, unit, kind = "next-token cross-entropy", "nats", "causal_lm"

    def prepare(self, batch, rows):
        return dict(batch.inputs), {"ids": batch.inputs["input_ids"], "valid": batch.inputs["attention_mask"].bool()}

    def loss(self, output, targets):
        return _token_ce(output.logits, targets["ids"], targets["valid"])


class _Seq2SeqLM(Objective):
    name, unit, kind = "decoder next-token cross-entropy", "nats", "seq2seq_lm"

    def prepare(self, batch, rows):
        return dict(batch.inputs), {"ids": batch.inputs["decoder_input_ids"],
                                    "valid": batch.inputs["decoder_attention_mask"].bool()}

    def loss(self, output, targets):
        return _token_ce(output.logits, targets["ids"], targets["valid"])


class _MaskedLM(Objective):
    name, unit, kind = "masked-LM cross-entropy (15 % of tokens masked, seeded)", "nats", "masked_lm"

    def __init__(self, mask_token_id: int, seed: int = 0, rate: float = 0.15) -> None:
        self.mask_token_id, self.seed, self.rate = int(mask_token_id), seed, rate

    def prepare(self, batch, rows):
        ids = batch.inputs["input_ids"]
        ok = batch.inputs["attention_mask"].bool().cpu()
        if batch.special is not None:
            ok &= ~batch.special
        draws = torch.stack([torch.rand(ids.shape[1], generator=torch.Generator().manual_seed(self.seed * 1_000_003 + int(r)))
                             for r in rows])
        draws = torch.where(ok, draws, torch.full_like(draws, 2.0))
        chosen = (draws < self.rate) & ok
        first = draws.argmin(1)  # every sentence with a maskable token masks at least one
        chosen[torch.arange(len(rows)), first] |= ok[torch.arange(len(rows)), first]
        inputs = dict(batch.inputs)
        inputs["input_ids"] = torch.where(chosen.to(ids.device), torch.full_like(ids, self.mask_token_id), ids)
        return inputs, {"ids": ids, "masked": chosen}

    def loss(self, output, targets):
        m = targets["masked"].to(output.logits.device)
        ce = F.cross_entropy(output.logits.float().transpose(1, 2), targets["ids"].to(m.device), reduction="none")
        return (ce * m).sum(1) / m.sum(1).clamp(min=1)


class _Classification(Objective):
    name, unit, kind, has_accuracy = "classification cross-entropy", "nats", "classification", True

    def prepare(self, batch, rows):
        return dict(batch.inputs), {"labels": batch.inputs["labels"]}

    def loss(self, output, targets):
        return F.cross_entropy(output.logits.float(), targets["labels"].to(output.logits.device), reduction="none")

    def accuracy(self, output, targets):
        return (output.logits.argmax(-1) == targets["labels"].to(output.logits.device)).float()


class _Embedding(Objective):
    name, unit, kind, needs_reference = "1 - cosine similarity of the pooled final hidden state", "1 - cos", "embedding", True
    grad_scale = math.sqrt(math.pi / 2)

    def __init__(self, pooling: str = "mean", seed: int = 0) -> None:
        self.pooling, self.seed = pooling, seed

    def prepare(self, batch, rows):
        return dict(batch.inputs), {"valid": batch.inputs["attention_mask"].bool()}

    def pooled(self, output: ModelOutput, valid: torch.Tensor) -> torch.Tensor:
        h = getattr(output, "last_hidden_state", None)
        if h is None:
            h = getattr(output, "encoder_last_hidden_state", None)
        if h is None:
            raise CaptureError("the model output has no last_hidden_state to compare; pass objective=...")
        v = valid.to(h.device)[..., None].to(h.dtype)
        if self.pooling == "cls":
            return h[:, 0]
        if self.pooling == "max":
            return h.masked_fill(v == 0, torch.finfo(h.dtype).min).amax(1)
        return (h * v).sum(1) / v.sum(1).clamp(min=1)

    def set_reference(self, output, targets):
        return {**targets, "ref": self.pooled(output, targets["valid"]).detach()}

    def loss(self, output, targets):
        e = self.pooled(output, targets["valid"])
        return (1 - F.cosine_similarity(e.float(), targets["ref"].to(e.device).float(), dim=-1)).clamp_min(0)

    def grad_values(self, output, targets, rows):
        e = F.normalize(self.pooled(output, targets["valid"]).float(), dim=-1)
        u = torch.stack([torch.randn(e.shape[-1], generator=torch.Generator().manual_seed(self.seed * 7919 + int(r)))
                         for r in rows]).to(e.device)
        return (u * e).sum(-1)


class _Custom(Objective):
    name, unit, kind = "custom objective", "", "custom"

    def __init__(self, fn: ObjectiveFn) -> None:
        self.fn = fn
        self.name = getattr(fn, "__name__", "custom objective")

    def prepare(self, batch, rows):
        return dict(batch.inputs), dict(batch.inputs)

    def loss(self, output, targets):
        inputs = {k: v for k, v in targets.items() if k != "labels"}
        b = Batch(inputs=inputs)
        out = self.fn(output, b)
        if not torch.is_tensor(out) or out.dim() != 1 or out.shape[0] != b.size:
            raise InputError(f"the objective must return one value per sentence ([{b.size}]), got "
                             f"{tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}")
        return out.float()


def _pooling_of(inspector: AttentionInspector) -> str:
    """The sentence-transformers pooling of the model's directory (``1_Pooling/config.json``), else ``mean``."""
    path = Path(str(getattr(inspector.config, "_name_or_path", "") or ""))
    cfg = path / "1_Pooling" / "config.json"
    if cfg.is_file():
        try:
            pool = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "mean"
        if pool.get("pooling_mode_cls_token"):
            return "cls"
        if pool.get("pooling_mode_max_tokens"):
            return "max"
    return "mean"


def default_objective(inspector: AttentionInspector, *, labels: bool = False, seed: int = 0) -> Objective:
    """The objective :func:`head_importance` uses for ``inspector``'s model (see the module docstring).

    ``labels``: the data has a label column (needed for sequence classification). Raises
    :class:`InputError` for a classification model without labels.
    """
    model = inspector.model
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        if not labels:
            raise InputError("a sequence-classification model needs labels: pass --label-column (label_column=...)")
        return _Classification()
    if inspector.is_encoder_decoder and hasattr(model, "lm_head"):
        return _Seq2SeqLM()
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return _CausalLM()
    if name.endswith("ForMaskedLM"):
        mask = getattr(inspector.tokenizer, "mask_token_id", None) if inspector.tokenizer is not None else None
        if mask is None:
            raise InputError("a masked-LM model needs a tokenizer with a mask token")
        return _MaskedLM(mask, seed)
    return _Embedding(_pooling_of(inspector), seed)


def _objective(inspector: AttentionInspector, objective: Objective | ObjectiveFn | None, labels: bool, seed: int) -> Objective:
    if objective is None:
        return default_objective(inspector, labels=labels, seed=seed)
    if isinstance(objective, Objective):
        return objective
    if callable(objective):
        return _Custom(objective)
    raise InputError(f"objective must be None, an Objective or a callable (output, batch) -> [batch], not {type(objective).__name__}")


# =========================================================================== data
@dataclass
class _Data:
    """The rows to score: a dataset with its text column(s) and optional labels, or a tensor of token ids."""

    ds: "Dataset | None"
    ids: torch.Tensor | None
    columns: tuple[str, ...]
    label_column: str | None
    info: dict[str, object]

    @property
    def rows(self) -> int:
        return int(self.ids.shape[0]) if self.ids is not None else int(self.ds.num_rows)  # type: ignore[union-attr]


def _load(data: DatasetSource | torch.Tensor, column: str | Sequence[str], label_column: str | None,
          config: str | None, split: str | None, limit: int | None) -> _Data:
    if torch.is_tensor(data):
        ids = data.long()
        if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] < 2:
            raise InputError("token ids must be a [sentences, tokens] tensor with at least 2 tokens per sentence")
        if limit is not None:
            ids = ids[: int(limit)]
        return _Data(None, ids, ("input_ids",), None, {"source": "token ids", "num_rows": int(ids.shape[0]),
                                                       "tokens": int(ids.shape[1])})
    ds, info = load_dataset_texts(data, config=config, split=split, column=column, limit=limit)
    if label_column is not None and label_column not in ds.column_names:
        raise InputError(f"label column {label_column!r} not found; available columns: {', '.join(ds.column_names)}")
    return _Data(ds, None, info.columns, label_column, {**info.to_dict(), "label_column": label_column})


def _labels(inspector: AttentionInspector, values: list[object]) -> torch.Tensor:
    label2id = getattr(inspector.config, "label2id", None) or {}
    n = getattr(inspector.config, "num_labels", None)
    out = []
    for v in values:
        if isinstance(v, str) and v in label2id:
            v = label2id[v]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or (n is not None and not 0 <= int(v) < n):
            raise InputError(f"label {v!r} is not a class index of this model (0..{(n or 1) - 1}) nor one of its label names")
        out.append(int(v))
    return torch.tensor(out, dtype=torch.long)


def _shard_batches(inspector: AttentionInspector, data: _Data, start: int, stop: int, batch_size: int,
                   max_length: int | None, skipped: dict[str, int] | None = None) -> Iterator[tuple[Batch, list[int]]]:
    """Length-sorted batches of rows ``start:stop`` (labels in ``inputs["labels"]`` when the data has them);
    ``skipped`` receives the counts of rows left out (empty or non-string texts)."""
    if data.ids is not None:
        for b0 in range(start, stop, batch_size):
            rows = list(range(b0, min(stop, b0 + batch_size)))
            yield Batch(inputs={"input_ids": data.ids[rows]}), rows
        return
    assert data.ds is not None
    texts, pairs, skips, kept = clean_rows_indexed(data.ds, start, stop, data.columns)
    if skipped is not None:
        skipped.update(skips)
    if not texts:
        return
    labels = _labels(inspector, data.ds[start:stop][data.label_column]) if data.label_column else None
    if labels is not None:
        labels = labels[torch.tensor([r - start for r in kept], dtype=torch.long)]
    tok_args = {"text": texts} if pairs is None else {"text": texts, "text_pair": pairs}
    lengths = torch.tensor([len(x) for x in inspector.tokenizer(**tok_args)["input_ids"]])
    order = torch.sort(lengths, stable=True).indices
    for b0 in range(0, len(texts), batch_size):
        sel = order[b0:b0 + batch_size].tolist()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            batch = inspector.encode([texts[i] for i in sel], None if pairs is None else [pairs[i] for i in sel],
                                     max_length=max_length, truncation=True)
        if labels is not None:
            batch.inputs["labels"] = labels[sel]
        yield batch, [kept[i] for i in sel]


# =========================================================================== forward passes
def _copies(copies_tokens: int | None, batch: int, tokens: int, device: torch.device) -> int:
    """Batch copies per pass: ``copies_tokens // (batch x tokens)``; by default 1 on the CPU (larger batches
    are slower there per sentence) and up to 16384 tokens per pass on accelerators."""
    if copies_tokens is None:
        copies_tokens = 0 if device.type == "cpu" else 16384
    return max(1, copies_tokens // max(1, batch * tokens))


def _model_inputs(inputs: dict[str, torch.Tensor], device: torch.device, model: torch.nn.Module) -> dict[str, object]:
    out: dict[str, object] = {k: v.to(device) for k, v in inputs.items() if k != "labels"}
    if getattr(model.config, "use_cache", None) is not None:
        out["use_cache"] = False
    return out


def _repeat(x: object, g: int, b: int) -> object:
    """``x`` with every tensor whose first dimension is the batch repeated ``g`` times (copy-major)."""
    if g == 1:
        return x
    if torch.is_tensor(x):
        return x.repeat(g, *([1] * (x.dim() - 1))) if x.dim() and x.shape[0] == b else x
    if isinstance(x, tuple):
        return type(x)(_repeat(v, g, b) for v in x) if not hasattr(x, "_fields") else type(x)(*(_repeat(v, g, b) for v in x))
    if isinstance(x, list):
        return [_repeat(v, g, b) for v in x]
    if isinstance(x, dict):
        return type(x)({k: _repeat(v, g, b) for k, v in x.items()})
    return x


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
                out = _repeat(self.outputs[name], copies, batch)
                self.modules[name].forward = (lambda *a, _o=out, **k: _o)  # type: ignore[method-assign]
            yield
        finally:
            for name in below:
                self.modules[name].__dict__.pop("forward", None)


class _StatsProbe(SentenceStatsProbe):
    """The dataset engine's statistics probe that also remembers the sites (and, for gradients, returns a
    differentiable output computed by torch's fused attention)."""

    def __init__(self, *args: object, differentiable: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sites: dict[UnitKey, Site] = {}
        self.outputs: dict[UnitKey, torch.Tensor] = {}
        self.differentiable = differentiable
        self.fast = OutputProbe()

    def attend(self, site, module, query, key, value, mask, scaling, **kwargs):  # type: ignore[override]
        self.sites[(site.stack, site.layer)] = site
        if not self.differentiable:
            output, weights = super().attend(site, module, query, key, value, mask, scaling, **kwargs)
            self.outputs[(site.stack, site.layer)] = output
            return output, weights
        simple = (site.stack in self.stacks and kwargs.get("softcap") is None and query.dtype == torch.float32
                  and key.shape[-3] == query.shape[-3] and (mask is None or mask.dtype == torch.float32))
        if simple:  # one differentiable computation gives the output and the weights for the statistics
            scores = torch.matmul(query, key.transpose(-1, -2)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
            weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            self._reduce(site, weights.detach(), bool(getattr(module, "is_causal", False)))
            return torch.matmul(weights, value), None
        with torch.no_grad():
            super().attend(site, module, query.detach(), key.detach(), value.detach(), mask, scaling, **kwargs)
        return self.fast.attend(site, module, query, key, value, mask, scaling, **kwargs)


@contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """Within the block no parameter requires grad (autograd records only the gates' paths); restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class _ReplayProbe(OutputProbe):
    """Returns the intact pass's output of the ablated layer (repeated for the batch copies) instead of
    recomputing it: the heads' outputs there are unchanged until the edit removes one."""

    def __init__(self, unit: UnitKey, output: torch.Tensor | None, copies: int) -> None:
        super().__init__()
        self.unit, self.output, self.copies = unit, output, copies

    def attend(self, site, module, query, key, value, mask, scaling, **kwargs):  # type: ignore[override]
        if self.output is not None and (site.stack, site.layer) == self.unit and query.shape[0] == self.output.shape[0] * self.copies:
            return _repeat(self.output, self.copies, self.output.shape[0]), None
        return super().attend(site, module, query, key, value, mask, scaling, **kwargs)


def _check_calls(state: object, model: torch.nn.Module) -> None:
    if getattr(state, "calls", 0) == 0:
        raise CaptureError(f"{type(model).__name__} does not dispatch through transformers' attention interface, "
                           "so its heads cannot be ablated")


# =========================================================================== units and statistics
def _units(inspector: AttentionInspector) -> list[tuple[UnitKey, int]]:
    """Every attention layer ``((stack, layer), heads)`` in execution order (encoder before decoder, self before cross)."""
    out = []
    dims = inspector.dims()
    stacks = [s for s in ("self", "encoder", "decoder", "cross") if s in dims]
    for stack in stacks:
        n_layers, n_heads = dims[stack]
        out += [((stack, layer), n_heads) for layer in range(n_layers)]
    if "cross" in dims:  # decoder layer l runs self then cross attention before layer l + 1
        dec = [u for u in out if u[0][0] in ("decoder", "cross")]
        dec.sort(key=lambda u: (u[0][1], u[0][0] == "cross"))
        out = [u for u in out if u[0][0] not in ("decoder", "cross")] + dec
    return out


_METRICS_BASE = ("importance", "objective")
_METRICS_ACC = ("accuracy_change", "accuracy")


def _metric_names(objective: Objective, method: str) -> tuple[str, ...]:
    return _METRICS_BASE + (_METRICS_ACC if objective.has_accuracy and method == "ablation" else ())


# =========================================================================== the engine
def head_importance(
    inspector: AttentionInspector,
    data: DatasetSource | torch.Tensor = None,
    *,
    method: str = "ablation",
    how: str = "zero",
    objective: Objective | ObjectiveFn | None = None,
    column: str | Sequence[str] = "text",
    label_column: str | None = None,
    config: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
    shard_size: int = 2048,
    cache_layers: bool = True,
    copies_tokens: int | None = None,
    ablated: HeadSpec = (),
    means: dict[UnitKey, torch.Tensor] | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Score every head of ``inspector``'s model on ``data``; returns one row per head (the ``head_importance`` table).

    ``data`` is anything :func:`~hf_attn_inspect.runs.sources.load_dataset_texts` reads (a list of texts,
    a file, a Hub name, None for the shipped sample; ``column``/``label_column``/``config``/``split``/
    ``limit`` as there) or a ``[sentences, tokens]`` tensor of token ids (synthetic inputs, no padding).
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
    ``head_importance.csv`` is written. ``df.attrs`` holds ``objective``, ``unit``, ``method``, ``how``,
    ``counts`` and ``run``.
    """
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if how not in ABLATIONS:
        raise InputError(f"unknown ablation {how!r}; choose one of {', '.join(ABLATIONS)}")
    if batch_size < 1 or shard_size < 1:
        raise InputError("batch size and shard size must be at least 1")
    src = _load(data, column, label_column, config, split, limit)
    obj = _objective(inspector, objective, src.label_column is not None, seed)
    fixed = resolve_heads(inspector, ablated) if ablated else []
    units = _units(inspector)
    limit_len = max_length or inspector.max_length
    params = {
        "model": inspector.name, "data": src.info, "method": method, "how": how, "objective": obj.name,
        "batch_size": batch_size, "max_length": limit_len, "shard_size": shard_size, "seed": seed,
        "ablated": [f"{s}.{l}.{h}" for s, l, h in fixed], "cache_layers": cache_layers,
        "dtype": str(next(inspector.model.parameters()).dtype).replace("torch.", ""), "device": str(inspector.device),
    }
    if how == "mean" and means is None:
        means = _dataset_means(inspector, src, batch_size, limit_len, progress)
    if how == "zero":
        means = None
    fixed_edit = _fixed_edit(inspector, fixed, means)
    names = _metric_names(obj, method)
    n_units, h_max = len(units), max(h for _, h in units)

    def compute(start: int, stop: int, bar: Progress | None) -> ShardStats:
        stats = ShardStats.empty(n_units, h_max, names, _class_names())
        truncated, skipped = 0, {}
        for batch, rows in _shard_batches(inspector, src, start, stop, batch_size, limit_len, skipped):
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

    run_ = run_sharded(src.rows, shard_size, compute, out_dir=out, params=params, outputs=IMPORTANCE_OUTPUTS,
                       resume=resume, overwrite=overwrite, progress=progress, desc=f"importance ({method})",
                       column=src.columns[0])
    df = _importance_frame(run_.total, units, obj, method, how)
    run = {"status": "finished", "parameters": params, "versions": package_versions(), "counts": run_.counts,
           "shards_total": run_.shards_total, "shards_resumed": run_.shards_resumed,
           "elapsed_s": round(run_.elapsed, 3), "objective": obj.name, "unit": obj.unit,
           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    df.attrs.update(objective=obj.name, unit=obj.unit, method=method, how=how, counts=run_.counts, run=run,
                    model=inspector.name)
    if out is not None:
        write_importance_tables(out, df)
        write_json(run, Path(out) / "run.json")
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
    model = inspector.model
    b = batch.size
    h_max = max(h for _, h in units)
    inputs, targets = obj.prepare(batch, rows)
    m = batch.masks("self")
    probe = _StatsProbe(valid=m.valid, special=m.special, punctuation=m.punctuation,
                        differentiable=method == "gradient")
    edits: list[OutputEdit] = [fixed] if fixed is not None else []
    was_training = model.training
    model.eval()
    try:
        if method == "gradient":
            values = _gradient_batch(inspector, inputs, targets, rows, obj, units, probe, edits)
        else:
            values = _ablation_batch(inspector, inputs, targets, obj, units, probe, edits, means, cache_layers, copies_tokens)
    finally:
        model.train(was_training)
    stats = probe.per_sentence() if probe.values else None  # [B, L, H, M] of the main stack
    classes = torch.full((b, len(units), h_max), len(PATTERN_CLASSES), dtype=torch.long)
    if stats is not None:
        per = {k: stats[..., i] for i, k in enumerate(probe.metric_names)}
        _, cls = classify_sentence_heads(per)
        main = [i for i, ((s, _), _) in enumerate(units) if s in ("self", "encoder")]
        classes[:, main, : cls.shape[2]] = cls
    return values, classes


def _gradient_batch(inspector, inputs, targets, rows, obj, units, probe, edits) -> torch.Tensor:  # noqa: ANN001
    model = inspector.model
    b = next(iter(inputs.values())).shape[0]
    h_max = max(h for _, h in units)
    gates = {u: torch.ones(b, h, device=inspector.device, requires_grad=True) for u, h in units}
    with torch.enable_grad(), _frozen(model):
        with capture(model, probe, edits=[*edits, HeadScale(gates)]) as state:
            output = model(**_model_inputs(inputs, inspector.device, model))
        _check_calls(state, model)
        if obj.needs_reference:
            with torch.no_grad():
                targets = obj.set_reference(output, targets)
        base = obj.loss(output, targets).detach().float().cpu()
        g = obj.grad_values(output, targets, torch.tensor(rows))
        grads = torch.autograd.grad(g.sum(), [gates[u] for u, _ in units], allow_unused=True)
    values = torch.zeros(b, len(units), h_max, 2)
    for i, ((u, h), gr) in enumerate(zip(units, grads)):
        if gr is not None:
            values[:, i, :h, 0] = gr.detach().abs().float().cpu() * obj.grad_scale
    values[..., 1] = base[:, None, None]
    return values


def _ablation_batch(inspector, inputs, targets, obj, units, probe, edits, means, cache_layers, copies_tokens) -> torch.Tensor:  # noqa: ANN001
    model = inspector.model
    b = next(iter(inputs.values())).shape[0]
    t = next(iter(inputs.values())).shape[1]
    h_max = max(h for _, h in units)
    acc = obj.has_accuracy
    values = torch.zeros(b, len(units), h_max, 4 if acc else 2)
    model_in = _model_inputs(inputs, inspector.device, model)
    with torch.no_grad():
        cache = None
        with ExitStack() as stack:
            state = stack.enter_context(capture(model, probe, edits=edits))
            if cache_layers:
                cache = _LayerCache(model, _sites_of(inspector))
                if cache.ok:
                    stack.enter_context(cache.record())
                else:
                    cache = None
            output = model(**model_in)
        _check_calls(state, model)
        if cache is not None and not cache.ok:
            cache = None
        if obj.needs_reference:
            targets = obj.set_reference(output, targets)
        base = obj.loss(output, targets).float().cpu()
        base_acc = obj.accuracy(output, targets) if acc else None
        del output
        per_pass = _copies(copies_tokens, b, t, inspector.device)
        for i, (unit, h) in enumerate(units):
            for h0 in range(0, h, per_pass):
                heads = list(range(h0, min(h, h0 + per_pass)))
                g = len(heads)
                scale = torch.ones(g, h)
                scale[torch.arange(g), torch.tensor(heads)] = 0.0
                fill = {unit: means[unit]} if means is not None and unit in means else {}
                edit = HeadScale({unit: scale}, fill)
                rep_in = {k: _repeat(v, g, b) for k, v in model_in.items()}
                rep_targets = {k: _repeat(v, g, b) for k, v in targets.items()}
                with ExitStack() as stack:
                    if cache is not None:
                        stack.enter_context(cache.replay_below(unit, g, b))
                    replay = _ReplayProbe(unit, probe.outputs.get(unit) if cache is not None else None, g)
                    stack.enter_context(capture(model, replay, edits=[*edits, edit]))
                    output = model(**rep_in)
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
    probe = OutputProbe()
    ids = torch.zeros(1, 2, dtype=torch.long, device=inspector.device)
    inputs: dict[str, object] = {"input_ids": ids}
    if inspector.is_encoder_decoder:
        inputs["decoder_input_ids"] = ids
    with torch.no_grad(), capture(model, probe):
        model(**inputs, **({"use_cache": False} if getattr(model.config, "use_cache", None) is not None else {}))
    _SITES[model] = dict(probe.sites)
    return probe.sites


_SITES: "weakref.WeakKeyDictionary[torch.nn.Module, dict[UnitKey, Site]]" = weakref.WeakKeyDictionary()


# =========================================================================== tables
def _importance_frame(total: ShardStats, units: list[tuple[UnitKey, int]], obj: Objective, method: str, how: str) -> pd.DataFrame:
    n = max(total.n, 1)
    mean = total.sums / n
    var = np.clip((total.sumsq - n * np.square(mean)) / max(n - 1, 1), 0.0, None)
    se = np.sqrt(var / n)
    names = list(total.metric_names)
    rows = []
    for i, ((stack, layer), h) in enumerate(units):
        for head in range(h):
            counts = total.class_counts[i, head]
            pattern = total.class_names[int(counts.argmax())] if counts.sum() else ""
            row = {"stack": stack, "layer": layer, "head": head,
                   "importance": mean[i, head, 0], "stderr": se[i, head, 0], "pattern": pattern,
                   "objective": mean[i, head, 1], "n_sentences": total.n}
            if "accuracy_change" in names:
                row["accuracy_change"] = mean[i, head, 2]
                row["accuracy"] = mean[i, head, 3]
            rows.append(row)
    df = pd.DataFrame(rows)
    df.insert(5, "rank", df["importance"].rank(ascending=False, method="first").astype(int))
    return df


def write_importance_tables(out_dir: str | os.PathLike, importance: pd.DataFrame | None = None,
                            curve: pd.DataFrame | None = None) -> list[Path]:
    """Write ``head_importance.csv`` and/or ``pruning_curve.csv`` (9 significant digits) into ``out_dir``
    atomically; returns the written paths."""
    out = Path(out_dir)
    written = []
    if importance is not None:
        written.append(atomic_write(out / "head_importance.csv",
                                    lambda fh: importance.to_csv(fh, index=False, float_format="%.9g")))
    if curve is not None:
        written.append(atomic_write(out / "pruning_curve.csv", lambda fh: curve.to_csv(fh, index=False, float_format="%.9g")))
    return written


# =========================================================================== means for mean ablation
def _dataset_means(inspector: AttentionInspector, src: _Data, batch_size: int, max_length: int,
                   progress: bool) -> dict[UnitKey, torch.Tensor]:
    """Each head's mean output over every real token of the data (one forward pass per batch)."""
    units = _units(inspector)
    sums: dict[UnitKey, torch.Tensor] = {}
    counts: dict[UnitKey, int] = {}

    def compute(start: int, stop: int, bar: Progress | None) -> ShardStats:
        stats = ShardStats.empty(1, 1, ("sentences",), ("",))
        for batch, rows in _shard_batches(inspector, src, start, stop, batch_size, max_length):
            probe = MeanOutputProbe(query_masks(batch))
            inspector.run(batch, probe)
            for k, v in probe.sums.items():
                sums[k] = sums.get(k, 0) + v
                counts[k] = counts.get(k, 0) + probe.counts[k]
            stats.add_values(torch.zeros(len(rows), 1, 1, 1), torch.zeros(len(rows), 1, 1, dtype=torch.long))
            if bar is not None:
                bar.update(len(rows))
        stats.rows = stop - start
        return stats

    run_sharded(src.rows, max(src.rows, 1), compute, progress=progress, desc="mean head outputs", column=src.columns[0])
    missing = [u for u, _ in units if u not in sums]
    if missing:
        raise CaptureError(f"no attention output was seen for layer {missing[0][1]} ({missing[0][0]})")
    return {k: (v / max(counts[k], 1)).float() for k, v in sums.items()}


# =========================================================================== sets of heads removed together
def _group_batch(inspector: AttentionInspector, batch: Batch, rows: list[int], obj: Objective,
                 groups: list[list[HeadKey]], means: dict[UnitKey, torch.Tensor] | None,
                 copies_tokens: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``([groups, B] objective, [groups, B] accuracy or None)`` with each group's heads removed together."""
    model = inspector.model
    dims = inspector.dims()
    b, t = batch.size, batch.inputs["attention_mask"].shape[1]
    inputs, targets = obj.prepare(batch, rows)
    model_in = _model_inputs(inputs, inspector.device, model)
    if obj.needs_reference:
        with torch.no_grad(), capture(model, OutputProbe()) as state:
            ref = model(**model_in)
        _check_calls(state, model)
        targets = obj.set_reference(ref, targets)
    per_pass = _copies(copies_tokens, b, t, inspector.device)
    losses, accs = [], []
    was_training = model.training
    model.eval()
    try:
        for g0 in range(0, len(groups), per_pass):
            chunk = groups[g0:g0 + per_pass]
            g = len(chunk)
            scale: dict[UnitKey, torch.Tensor] = {}
            for gi, heads in enumerate(chunk):
                for stack, layer, head in heads:
                    scale.setdefault((stack, layer), torch.ones(g, dims[stack][1]))[gi, head] = 0.0
            fill = {k: means[k] for k in scale} if means is not None else {}
            rep_targets = {k: _repeat(v, g, b) for k, v in targets.items()}
            with torch.no_grad(), capture(model, OutputProbe(), edits=[HeadScale(scale, fill)]) as state:
                output = model(**{k: _repeat(v, g, b) for k, v in model_in.items()})
            _check_calls(state, model)
            losses.append(obj.loss(output, rep_targets).float().cpu().view(g, b))
            if obj.has_accuracy:
                accs.append(obj.accuracy(output, rep_targets).float().cpu().view(g, b))
    finally:
        model.train(was_training)
    return torch.cat(losses), (torch.cat(accs) if accs else None)


def _groups_over_data(
    inspector: AttentionInspector, src: _Data, obj: Objective, groups: list[list[HeadKey]],
    means: dict[UnitKey, torch.Tensor] | None, batch_size: int, max_length: int, copies_tokens: int, progress: bool,
    desc: str,
) -> tuple[ShardStats, tuple[str, ...]]:
    names = ("objective", "change", "accuracy") if obj.has_accuracy else ("objective", "change")

    def compute(start: int, stop: int, bar: Progress | None) -> ShardStats:
        stats, skipped = ShardStats.empty(len(groups), 1, names, ("",)), {}
        for batch, rows in _shard_batches(inspector, src, start, stop, batch_size, max_length, skipped):
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
    data: DatasetSource | torch.Tensor = None,
    heads: HeadSpec = (),
    *,
    how: str = "zero",
    objective: Objective | ObjectiveFn | None = None,
    column: str | Sequence[str] = "text",
    label_column: str | None = None,
    config: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
    means: dict[UnitKey, torch.Tensor] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, object]:
    """The objective before and after removing ``heads`` together, over ``data`` (as :func:`head_importance`).

    Returns ``before`` and ``after`` (mean objective over sentences, in ``unit``), ``change`` (after minus
    before, the mean of per-sentence differences) with ``stderr``, ``n_sentences``, ``heads`` (the removed
    heads as ``stack.layer.head``), ``objective``, ``unit`` and, with labels, ``accuracy_before``/``accuracy_after``.
    """
    if how not in ABLATIONS:
        raise InputError(f"unknown ablation {how!r}; choose one of {', '.join(ABLATIONS)}")
    keys = resolve_heads(inspector, heads)
    if not keys:
        raise InputError("no head given to ablate; pass heads like '3.5,0.1'")
    src = _load(data, column, label_column, config, split, limit)
    obj = _objective(inspector, objective, src.label_column is not None, seed)
    limit_len = max_length or inspector.max_length
    if how == "mean" and means is None:
        means = _dataset_means(inspector, src, batch_size, limit_len, progress)
    total, names = _groups_over_data(inspector, src, obj, [[], keys], means if how == "mean" else None, batch_size,
                                     limit_len, None, progress, "ablation")
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


# =========================================================================== pruning curve
def _order(importance: pd.DataFrame) -> list[HeadKey]:
    """Heads from least to most important (ties: stack, layer, head order)."""
    df = importance.copy()
    if "stack" not in df.columns:
        df["stack"] = "self"
    df = df.sort_values(["importance", "stack", "layer", "head"], kind="stable")
    return [(str(s), int(l), int(h)) for s, l, h in zip(df["stack"], df["layer"], df["head"])]


def pruning_curve(
    inspector: AttentionInspector,
    data: DatasetSource | torch.Tensor = None,
    importance: pd.DataFrame | None = None,
    *,
    step: float = 0.1,
    how: str = "zero",
    reestimate: bool = False,
    method: str = "ablation",
    objective: Objective | ObjectiveFn | None = None,
    column: str | Sequence[str] = "text",
    label_column: str | None = None,
    config: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
    means: dict[UnitKey, torch.Tensor] | None = None,
    copies_tokens: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Remove heads in increasing order of importance, ``step`` (a fraction of all heads) at a time, and
    measure the objective after each step (Michel et al. 2019's pruning curves).

    ``importance`` is a :func:`head_importance` table (computed here with ``method`` when None). Rows:
    ``step`` (0 = intact model), ``fraction`` (share of heads removed), ``heads_removed``, ``objective``
    (mean over sentences, in the objective's unit), ``stderr`` (standard error of the change against the
    intact model), ``accuracy`` with labels, and ``removed`` (the heads removed at that step, ``L.H``
    or ``stack.L.H``). Without ``reestimate`` every step is measured in one pass over the data (the step
    sets as copies of each batch); with it, importance is recomputed (``method``) after each step with the
    removed heads ablated, and the next step removes the least important of the remaining heads.
    """
    if not 0 < step <= 1:
        raise InputError(f"step must be a fraction in (0, 1], got {step}")
    if how not in ABLATIONS:
        raise InputError(f"unknown ablation {how!r}; choose one of {', '.join(ABLATIONS)}")
    src = _load(data, column, label_column, config, split, limit)
    obj = _objective(inspector, objective, src.label_column is not None, seed)
    limit_len = max_length or inspector.max_length
    common = dict(objective=obj, column=column, label_column=label_column, config=config, split=split, limit=limit,
                  batch_size=batch_size, max_length=max_length, seed=seed, copies_tokens=copies_tokens)
    if how == "mean" and means is None:
        means = _dataset_means(inspector, src, batch_size, limit_len, progress)
    use_means = means if how == "mean" else None
    if importance is None:
        importance = head_importance(inspector, data, method=method, how=how, means=use_means, **common)
    order = _order(importance)
    total_heads = len(order)
    counts = sorted({min(total_heads, int(round(k * step * total_heads))) for k in range(int(math.ceil(1 / step)) + 1)})
    if counts[-1] != total_heads:
        counts.append(total_heads)
    if not reestimate:
        groups = [order[:k] for k in counts]
    else:
        groups, removed = [[]], []
        for k in counts[1:]:
            if k < total_heads and removed:
                imp = head_importance(inspector, data, method=method, how=how, means=use_means, ablated=removed, **common)
                keep = {(s, l, h) for s, l, h in removed}
                rest = [hk for hk in _order(imp) if hk not in keep]
            else:
                rest = [hk for hk in order if hk not in set(removed)]
            removed = removed + rest[: k - len(removed)]
            groups.append(list(removed))
    total, names = _groups_over_data(inspector, src, obj, groups, use_means, batch_size, limit_len, copies_tokens,
                                     progress, "pruning curve")
    n = max(total.n, 1)
    rows = []
    prev: list[HeadKey] = []
    main = next(iter(inspector.dims()))
    for i, heads in enumerate(groups):
        change = total.sums[i, 0, 1] / n
        var = max((total.sumsq[i, 0, 1] - n * change ** 2) / max(n - 1, 1), 0.0)
        new = [hk for hk in heads if hk not in set(prev)]
        row = {"step": i, "fraction": len(heads) / total_heads, "heads_removed": len(heads),
               "objective": total.sums[i, 0, 0] / n, "stderr": math.sqrt(var / n)}
        if "accuracy" in names:
            row["accuracy"] = total.sums[i, 0, 2] / n
        row["removed"] = " ".join(f"{l}.{h}" if s == main else f"{s}.{l}.{h}" for s, l, h in new)
        rows.append(row)
        prev = heads
    df = pd.DataFrame(rows)
    df.attrs.update(objective=obj.name, unit=obj.unit, how=how, reestimate=reestimate, method=method)
    return df
