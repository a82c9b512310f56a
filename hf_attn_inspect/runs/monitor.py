"""Watch attention change during training: a probe batch measured every N steps, logged as JSON lines.

:class:`AttentionMonitor` runs a fixed batch of probe texts through the model being trained with the one
capture path (:meth:`AttentionInspector.run`: eval mode and no gradients for the call, the model's mode and
attention implementation restored afterwards) and reduces every layer at once to the per-head metrics of
:func:`~hf_attn_inspect.stats.metrics.sentence_metrics`, averaged over the probe texts (padding never counts).
Each :meth:`~AttentionMonitor.record` appends one JSON line to the log. :class:`AttentionStatsCallback`
does the same from a transformers ``Trainer`` every ``every_n_steps`` optimizer steps.

A log record (one JSON object per line) holds ``step``, ``layers``, ``heads``, ``metrics`` (``{metric:
[layers][heads]}``), ``entropy_ratio`` (entropy / max entropy, per head), ``collapsed`` and ``uniform``
(lists of ``[layer, head]``), ``warnings`` (strings) and, for the heads asked for with ``store_heads``,
``tokens`` and ``weights`` (``{"layer,head": [[...]]}``, the first probe text's attention, real tokens only).

- A head is *collapsed* when its mean row maximum is at least ``collapse_threshold`` (0.95, the chapter's
  ``debug_attention_collapse`` threshold): nearly every query puts all its weight on one key.
- A head is *uniform* when its entropy is at least ``uniform_threshold`` (0.95) of the maximum (``ln n``):
  indistinguishable from averaging, the chapter's "not learning relationships".

Warnings name the heads that entered either state since the previous record; at the first record only a
majority of heads in one state (the chapter's "more than 50 %") is reported. They go to the record and to
the ``hf_attn_inspect`` logger.

This module returns data; the figures of a log (trends over steps, animations of one head) are drawn by
:mod:`hf_attn_inspect.views.training`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, Union

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback, TrainingArguments
from transformers.trainer_callback import TrainerControl, TrainerState

from ..capture.inputs import KeyMasks
from ..capture.inspector import AttentionInspector
from ..capture.recorders import AttentionCall, Recorder
from ..core.errors import CaptureError, InputError, OutputError
from ..core.stacks import is_self_attention, main_stack_of, self_attention_stacks
from ..stats.metrics import METRICS, entropy_ratio, sentence_metrics

if TYPE_CHECKING:  # importing the Trainer pulls in its whole training stack; only its type is needed here
    from transformers import Trainer

__all__ = [
    "AttentionMonitor",
    "AttentionStatsCallback",
    "MonitorLog",
    "Record",
    "read_log",
]

logger = logging.getLogger("hf_attn_inspect")

#: Heads to keep the weights of: ``(layer, head)`` pairs, ``"all"`` or None.
HeadSpec = Union[Sequence[tuple[int, int]], str, None]
#: One log record (a JSON object; format in the module docstring).
Record = dict[str, Any]


class _StatsRecorder(Recorder):
    """Reduces each layer of one stack to per-head metrics (mean over probe texts) as the layer runs."""

    needs_weights = True

    def __init__(self, stack: str, masks: KeyMasks, store: set[tuple[int, int]] | str | None, first_len: int):
        self.stack = stack
        self.masks = masks
        self.store = store
        self.first_len = first_len
        self.metrics: dict[int, dict[str, torch.Tensor]] = {}
        self.ratio: dict[int, torch.Tensor] = {}
        self.weights: dict[tuple[int, int], torch.Tensor] = {}

    def record(self, call: AttentionCall) -> None:
        site = call.site
        if site.stack != self.stack:
            return
        w = call.weights.detach().float()
        valid = self.masks.valid.to(w.device)
        m = sentence_metrics(w, valid, special=self.masks.special, punctuation=self.masks.punctuation, causal=call.causal)
        self.metrics[site.layer] = {k: v.mean(0).cpu() for k, v in m.items()}
        self.ratio[site.layer] = entropy_ratio(m["entropy"], m["max_entropy"]).mean(0).cpu()
        if self.store is not None:
            n = self.first_len
            heads = range(w.shape[1]) if self.store == "all" else [h for (l, h) in self.store if l == site.layer]
            for h in heads:
                self.weights[(site.layer, h)] = w[0, h, :n, :n].cpu()


class AttentionMonitor:
    """Records per-head attention statistics of ``model`` on fixed ``probe_texts``; works in any training loop.

    ``record(step)`` runs the probe batch (eval mode, no gradients, mode restored), appends one record to
    :attr:`records` and, when ``log_path`` is given, one JSON line to that file; it returns the record
    (format in the module docstring). ``store_heads`` is a list of ``(layer, head)`` pairs or ``"all"``:
    their attention on the first probe text is kept in each record (for
    :func:`~hf_attn_inspect.views.training.animate_attention`). ``stack`` picks the attention of
    encoder-decoder models (default: encoder). Thresholds are shares in 0..1 (see the module docstring).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        probe_texts: Sequence[str] | str,
        *,
        log_path: str | os.PathLike | None = None,
        store_heads: HeadSpec = None,
        max_length: int = 128,
        stack: str | None = None,
        collapse_threshold: float = 0.95,
        uniform_threshold: float = 0.95,
    ) -> None:
        texts = [probe_texts] if isinstance(probe_texts, str) else list(probe_texts)
        if not texts:
            raise InputError("give at least one probe text")
        self.inspector = AttentionInspector(model, tokenizer)
        dims = self.inspector.dims()
        self.stack = stack or main_stack_of(dims)
        if self.stack not in dims or not is_self_attention(self.stack):
            raise InputError(f"cannot monitor stack '{self.stack}'; choose one of {', '.join(self_attention_stacks(dims))}")
        self.layers, self.heads = dims[self.stack]
        if store_heads is not None and store_heads != "all" and not isinstance(store_heads, str):
            try:
                store_heads = {(int(l), int(h)) for l, h in store_heads}
            except (TypeError, ValueError):
                raise InputError("store_heads must be a list of (layer, head) pairs or 'all'") from None
            for l, h in store_heads:
                if not (0 <= l < self.layers and 0 <= h < self.heads):
                    raise InputError(f"head ({l}, {h}) is out of range; the model has {self.layers} layers x {self.heads} heads")
        elif store_heads not in (None, "all"):
            raise InputError("store_heads must be a list of (layer, head) pairs or 'all'")
        self.store_heads = store_heads
        self.texts = texts
        self.batch = self.inspector.encode(texts, max_length=max_length)
        self.masks = self.batch.masks(self.stack)
        self.tokens = self.batch.tokens(0)
        self.collapse_threshold = collapse_threshold
        self.uniform_threshold = uniform_threshold
        self.log_path = Path(log_path) if log_path is not None else None
        self.records: list[Record] = []
        self._previous: dict[str, set[tuple[int, int]]] | None = None

    @property
    def model(self) -> PreTrainedModel:
        """The model being monitored."""
        return self.inspector.model

    def record(self, step: int, **extra: Any) -> Record:
        """Measure the probe batch now and log it under ``step`` (``extra`` keys, e.g. ``epoch``, are added).

        Returns the record (format in the module docstring): per-head metric means over the probe texts,
        the entropy ratio (0..1), the collapsed/uniform heads and the warnings of this step.
        """
        probe = _StatsRecorder(self.stack, self.masks, self.store_heads, len(self.tokens))
        self.inspector.run(self.batch, probe)
        missing = [l for l in range(self.layers) if l not in probe.metrics]
        if missing:
            raise CaptureError(f"layer {missing[0]} produced no attention during the probe run")
        metrics = {k: torch.stack([probe.metrics[l][k] for l in range(self.layers)]) for k in METRICS}  # [L, H]
        ratio = torch.stack([probe.ratio[l] for l in range(self.layers)])
        states = {
            "collapsed": _pairs(metrics["max_weight"] >= self.collapse_threshold),
            "uniform": _pairs(ratio >= self.uniform_threshold),
        }
        warnings_ = self._warnings(step, states)
        record: Record = {"step": int(step), **extra, "layers": self.layers, "heads": self.heads}
        record["metrics"] = {k: _rounded(v) for k, v in metrics.items()}
        record["entropy_ratio"] = _rounded(ratio)
        record.update({k: sorted([list(p) for p in v]) for k, v in states.items()})
        record["warnings"] = warnings_
        if self.store_heads is not None:
            record["tokens"] = list(self.tokens)
            record["weights"] = {f"{l},{h}": _rounded(w) for (l, h), w in sorted(probe.weights.items())}
        self.records.append(record)
        if self.log_path is not None:
            try:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.log_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")
            except OSError as exc:
                raise OutputError(f"cannot write the attention log {self.log_path}: {exc.strerror or exc}") from None
        return record

    def _warnings(self, step: int, states: dict[str, set[tuple[int, int]]]) -> list[str]:
        out = []
        total = self.layers * self.heads
        for name, heads in states.items():
            if self._previous is None:
                if len(heads) > total / 2:
                    out.append(f"step {step}: {len(heads)} of {total} heads are {name}")
            else:
                new = sorted(heads - self._previous[name])
                if new:
                    shown = ", ".join(f"L{l}H{h}" for l, h in new[:12]) + (" ..." if len(new) > 12 else "")
                    out.append(f"step {step}: {len(new)} head(s) became {name}: {shown}")
        self._previous = states
        for message in out:
            logger.warning(message)
        return out

    @staticmethod
    def summary(record: Record) -> dict[str, float]:
        """A few scalars of one record for training logs (TensorBoard, W&B): means over all heads of
        entropy (nats), max weight, first-token and special-token shares, and the collapsed/uniform counts."""
        m = record["metrics"]
        out = {f"attn/{k}": float(np.mean(m[k])) for k in ("entropy", "max_weight", "first_token", "special_tokens")}
        out["attn/collapsed_heads"] = float(len(record["collapsed"]))
        out["attn/uniform_heads"] = float(len(record["uniform"]))
        return out


def _pairs(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(l), int(h)) for l, h in mask.nonzero().tolist()}


def _rounded(t: torch.Tensor, digits: int = 6) -> list:
    return np.round(t.detach().cpu().double().numpy(), digits).tolist()


class AttentionStatsCallback(TrainerCallback):
    """A transformers ``TrainerCallback`` that records attention statistics every ``every_n_steps`` steps.

    At steps ``0`` (before training, when ``record_initial``) and every multiple of ``every_n_steps`` it
    runs :class:`AttentionMonitor` on ``probe_texts`` with the model being trained (no gradients, its
    mode restored) and appends one record to ``<output_dir>/<log_file>`` (JSONL, format in the module
    docstring; a run that starts at step 0 starts a fresh file). :meth:`AttentionMonitor.summary`
    scalars go into ``trainer.state.log_history``; to also send them to the Trainer's reporting
    integrations (TensorBoard, W&B), attach the callback with :meth:`attach` (then they are logged with
    ``trainer.log``). Collapsed/uniform heads are warned about in the record and the ``hf_attn_inspect``
    logger. ``tokenizer`` defaults to the Trainer's ``processing_class``.
    """

    def __init__(
        self,
        probe_texts: Sequence[str] | str,
        *,
        every_n_steps: int = 50,
        tokenizer: PreTrainedTokenizerBase | None = None,
        log_file: str = "attention_stats.jsonl",
        store_heads: HeadSpec = None,
        record_initial: bool = True,
        max_length: int = 128,
        collapse_threshold: float = 0.95,
        uniform_threshold: float = 0.95,
    ) -> None:
        if every_n_steps < 1:
            raise InputError(f"every_n_steps must be at least 1, got {every_n_steps}")
        self.probe_texts = probe_texts
        self.every_n_steps = every_n_steps
        self.tokenizer = tokenizer
        self.log_file = log_file
        self.store_heads = store_heads
        self.record_initial = record_initial
        self.options = {"max_length": max_length, "collapse_threshold": collapse_threshold, "uniform_threshold": uniform_threshold}
        self.monitor: AttentionMonitor | None = None
        self.log_path: Path | None = None
        self.trainer: Trainer | None = None

    def attach(self, trainer: Trainer) -> AttentionStatsCallback:
        """Add this callback to ``trainer`` and log summaries through ``trainer.log`` (reaches TensorBoard/W&B)."""
        self.trainer = trainer
        trainer.add_callback(self)
        return self

    @property
    def records(self) -> list[Record]:
        """The records logged so far (empty before training starts)."""
        return [] if self.monitor is None else self.monitor.records

    def _monitor(self, args: TrainingArguments, model: PreTrainedModel | None,
                 tokenizer: PreTrainedTokenizerBase | None) -> AttentionMonitor:
        if self.monitor is None or self.monitor.model is not model:
            tok = self.tokenizer or tokenizer
            if model is None:
                raise InputError("AttentionStatsCallback got no model from the Trainer")
            if tok is None:
                raise InputError("AttentionStatsCallback needs a tokenizer: pass tokenizer=... or give the Trainer a processing_class")
            path = Path(self.log_file)
            if not path.is_absolute():
                path = Path(args.output_dir) / path
            self.log_path = path
            self.monitor = AttentionMonitor(model, tok, self.probe_texts, log_path=path, store_heads=self.store_heads, **self.options)
        return self.monitor

    def _record(self, args: TrainingArguments, state: TrainerState, model: PreTrainedModel | None,
                tokenizer: PreTrainedTokenizerBase | None) -> None:
        monitor = self._monitor(args, model, tokenizer)
        extra = {} if state.epoch is None else {"epoch": float(state.epoch)}
        record = monitor.record(state.global_step, **extra)
        summary = AttentionMonitor.summary(record)
        if self.trainer is not None and state.global_step > 0:
            self.trainer.log(dict(summary))
        else:
            state.log_history.append({**summary, "step": state.global_step})

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: PreTrainedModel | None = None, processing_class: PreTrainedTokenizerBase | None = None,
                       **kwargs: Any) -> TrainerControl:
        """Open the monitor (a fresh log for a run starting at step 0) and record step 0 when ``record_initial``."""
        monitor = self._monitor(args, model, processing_class)
        if state.global_step == 0 and monitor.log_path is not None and monitor.log_path.exists() and not monitor.records:
            try:
                monitor.log_path.unlink()
            except OSError as exc:
                raise OutputError(f"cannot replace the attention log {monitor.log_path}: {exc.strerror or exc}") from None
        if self.record_initial and state.global_step == 0:
            self._record(args, state, model, processing_class)
        return control

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: PreTrainedModel | None = None, processing_class: PreTrainedTokenizerBase | None = None,
                    **kwargs: Any) -> TrainerControl:
        """Record the probe batch at every multiple of ``every_n_steps``."""
        if state.global_step % self.every_n_steps == 0:
            self._record(args, state, model, processing_class)
        return control


# --------------------------------------------------------------------------------------------- reading
#: Anything :func:`read_log` accepts.
MonitorLog = Union[str, os.PathLike, Sequence[Record], AttentionMonitor, AttentionStatsCallback]


def read_log(log: MonitorLog) -> list[Record]:
    """The records of a monitor log: a JSONL path, a list of records, an :class:`AttentionMonitor` or an
    :class:`AttentionStatsCallback` (record format in the module docstring). A torn last line (a run
    killed while writing) is ignored; a missing file or any other line that is not JSON raises
    :class:`InputError`."""
    if isinstance(log, AttentionMonitor):
        return list(log.records)
    if isinstance(log, AttentionStatsCallback):
        return list(log.records)
    if isinstance(log, (str, os.PathLike)):
        path = Path(log)
        if not path.is_file():
            raise InputError(f"attention log {path} does not exist")
        records = []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise InputError(f"attention log {path} is not UTF-8 JSON lines") from None
        except OSError as exc:
            raise InputError(f"cannot read the attention log {path}: {exc.strerror or exc}") from None
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    break
                raise InputError(f"line {i + 1} of {path} is not a JSON record") from None
        return records
    if isinstance(log, (list, tuple)) and all(isinstance(r, dict) for r in log):
        return list(log)
    raise InputError(f"expected an attention log (JSONL path, records, monitor or callback), not {type(log).__name__}")
