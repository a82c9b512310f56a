"""Watch attention change during training: a probe batch measured every N steps, trends and animations.

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
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..capture.interface import Probe, Site
from ..core.errors import InputError, OutputError
from ..capture.inspector import AttentionInspector
from ..core.tokens import punctuation_mask
from ..stats.metrics import METRICS, sentence_metrics

__all__ = [
    "AttentionMonitor",
    "AttentionStatsCallback",
    "read_log",
    "plot_training_trends",
    "animate_attention",
]

logger = logging.getLogger("hf_attn_inspect")

HeadSpec = Sequence[tuple[int, int]] | str | None


class _StatsProbe(Probe):
    """Reduces each layer of one stack to per-head metrics (mean over probe texts) as the layer runs."""

    def __init__(self, stack: str, masks: dict[str, torch.Tensor], store: set[tuple[int, int]] | str | None, first_len: int):
        self.stack = stack
        self.masks = masks
        self.store = store
        self.first_len = first_len
        self.metrics: dict[int, dict[str, torch.Tensor]] = {}
        self.ratio: dict[int, torch.Tensor] = {}
        self.weights: dict[tuple[int, int], torch.Tensor] = {}
        self._causal = False

    def attend(self, site: Site, module: torch.nn.Module, *args: Any, **kwargs: Any):
        self._causal = bool(getattr(module, "is_causal", False))
        return super().attend(site, module, *args, **kwargs)

    def record(self, site: Site, weights: torch.Tensor) -> None:
        if site.stack != self.stack:
            return
        w = weights.detach().float()
        valid = self.masks["valid"].to(w.device)
        m = sentence_metrics(w, valid, special=self.masks["special"], punctuation=self.masks["punctuation"], causal=self._causal)
        ratio = torch.where(m["max_entropy"] > 0, m["entropy"] / m["max_entropy"].clamp_min(1e-12), torch.ones_like(m["entropy"]))
        self.metrics[site.layer] = {k: v.mean(0).cpu() for k, v in m.items()}
        self.ratio[site.layer] = ratio.mean(0).cpu()
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
    their attention on the first probe text is kept in each record (for :func:`animate_attention`).
    ``stack`` picks the attention of encoder-decoder models (default: encoder).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
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
        self.stack = stack or ("encoder" if "encoder" in dims else "self")
        if self.stack not in dims or self.stack == "cross":
            raise InputError(f"cannot monitor stack '{self.stack}'; choose one of {', '.join(s for s in dims if s != 'cross')}")
        self.layers, self.heads = dims[self.stack]
        if store_heads is not None and store_heads != "all":
            store_heads = {(int(l), int(h)) for l, h in store_heads}
            for l, h in store_heads:
                if not (0 <= l < self.layers and 0 <= h < self.heads):
                    raise InputError(f"head ({l}, {h}) is out of range; the model has {self.layers} layers x {self.heads} heads")
        elif store_heads not in (None, "all"):
            raise InputError("store_heads must be a list of (layer, head) pairs or 'all'")
        self.store_heads = store_heads
        self.texts = texts
        self.batch = self.inspector.encode(texts, max_length=max_length)
        valid = self.batch.valid
        punct = torch.zeros_like(valid)
        for i in range(len(texts)):
            toks = self.batch.tokens(i)
            punct[i, : len(toks)] = punctuation_mask(toks)
        self.masks = {"valid": valid, "special": self.batch.special_mask, "punctuation": punct}
        self.tokens = self.batch.tokens(0)
        self.collapse_threshold = collapse_threshold
        self.uniform_threshold = uniform_threshold
        self.log_path = Path(log_path) if log_path is not None else None
        self.records: list[dict[str, Any]] = []
        self._previous: dict[str, set[tuple[int, int]]] | None = None

    @property
    def model(self) -> torch.nn.Module:
        return self.inspector.model

    def record(self, step: int, **extra: Any) -> dict[str, Any]:
        """Measure the probe batch now and log it under ``step`` (``extra`` keys, e.g. ``epoch``, are added)."""
        probe = _StatsProbe(self.stack, self.masks, self.store_heads, len(self.tokens))
        self.inspector.run(self.batch, probe)
        missing = [l for l in range(self.layers) if l not in probe.metrics]
        if missing:
            raise InputError(f"layer {missing[0]} produced no attention during the probe run")
        metrics = {k: torch.stack([probe.metrics[l][k] for l in range(self.layers)]) for k in METRICS}  # [L, H]
        ratio = torch.stack([probe.ratio[l] for l in range(self.layers)])
        states = {
            "collapsed": _pairs(metrics["max_weight"] >= self.collapse_threshold),
            "uniform": _pairs(ratio >= self.uniform_threshold),
        }
        warnings_ = self._warnings(step, states)
        record: dict[str, Any] = {"step": int(step), **extra, "layers": self.layers, "heads": self.heads}
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
    def summary(record: dict[str, Any]) -> dict[str, float]:
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


try:  # the callback needs transformers' TrainerCallback (always installed with transformers)
    from transformers import TrainerCallback as _TrainerCallback
except ImportError:  # pragma: no cover
    _TrainerCallback = object  # type: ignore[misc,assignment]


class AttentionStatsCallback(_TrainerCallback):
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
        tokenizer: Any = None,
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
        self.trainer: Any = None

    def attach(self, trainer: Any) -> "AttentionStatsCallback":
        """Add this callback to ``trainer`` and log summaries through ``trainer.log`` (reaches TensorBoard/W&B)."""
        self.trainer = trainer
        trainer.add_callback(self)
        return self

    @property
    def records(self) -> list[dict[str, Any]]:
        return [] if self.monitor is None else self.monitor.records

    def _monitor(self, args: Any, model: Any, tokenizer: Any) -> AttentionMonitor:
        if self.monitor is None or self.monitor.model is not model:
            tok = self.tokenizer or tokenizer
            if tok is None:
                raise InputError("AttentionStatsCallback needs a tokenizer: pass tokenizer=... or give the Trainer a processing_class")
            path = Path(self.log_file)
            if not path.is_absolute():
                path = Path(args.output_dir) / path
            self.log_path = path
            self.monitor = AttentionMonitor(model, tok, self.probe_texts, log_path=path, store_heads=self.store_heads, **self.options)
        return self.monitor

    def _record(self, args: Any, state: Any, model: Any, tokenizer: Any) -> None:
        monitor = self._monitor(args, model, tokenizer)
        extra = {} if state.epoch is None else {"epoch": float(state.epoch)}
        record = monitor.record(state.global_step, **extra)
        summary = AttentionMonitor.summary(record)
        if self.trainer is not None and state.global_step > 0:
            self.trainer.log(dict(summary))
        else:
            state.log_history.append({**summary, "step": state.global_step})

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, processing_class: Any = None, **kwargs: Any):
        monitor = self._monitor(args, model, processing_class)
        if state.global_step == 0 and monitor.log_path is not None and monitor.log_path.exists() and not monitor.records:
            monitor.log_path.unlink()
        if self.record_initial and state.global_step == 0:
            self._record(args, state, model, processing_class)
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, processing_class: Any = None, **kwargs: Any):
        if state.global_step % self.every_n_steps == 0:
            self._record(args, state, model, processing_class)
        return control


# --------------------------------------------------------------------------------------------- reading
def read_log(log: Any) -> list[dict[str, Any]]:
    """The records of a monitor log: a JSONL path, a list of records, an :class:`AttentionMonitor` or an
    :class:`AttentionStatsCallback`. A torn last line (a run killed while writing) is ignored."""
    if isinstance(log, AttentionMonitor):
        return list(log.records)
    if isinstance(log, AttentionStatsCallback):
        return list(log.records)
    if isinstance(log, (str, os.PathLike)):
        path = Path(log)
        if not path.is_file():
            raise InputError(f"attention log {path} does not exist")
        records = []
        lines = path.read_text(encoding="utf-8").splitlines()
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


# --------------------------------------------------------------------------------------------- trends
def plot_training_trends(
    log: Any,
    metric: str = "entropy",
    heads: Sequence[tuple[int, int]] | str | None = None,
    *,
    ax: Any = None,
) -> Any:
    """``metric`` over training steps: one line per head in ``heads`` (``(layer, head)`` pairs, or ``"all"``),
    or with ``heads=None`` one line per layer (the mean over its heads).

    ``log`` is anything :func:`read_log` accepts; ``metric`` is one of
    :data:`~hf_attn_inspect.stats.metrics.METRICS` or ``entropy_ratio``. Values are the per-head means over the
    probe texts stored in each record. Returns the axes.
    """
    import matplotlib.pyplot as plt

    records = read_log(log)
    if not records:
        raise InputError("the attention log has no records")
    if metric != "entropy_ratio" and metric not in METRICS:
        raise InputError(f"unknown metric '{metric}'; choose one of {', '.join(METRICS)}, entropy_ratio")
    steps = np.array([r["step"] for r in records])
    values = np.array([r["entropy_ratio"] if metric == "entropy_ratio" else r["metrics"][metric] for r in records])  # [S, L, H]
    layers, nheads = values.shape[1:]
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    if heads is None:
        for l in range(layers):
            ax.plot(steps, values[:, l, :].mean(-1), marker="o", ms=3, label=f"layer {l}")
    else:
        pairs = [(l, h) for l in range(layers) for h in range(nheads)] if heads == "all" else [(int(l), int(h)) for l, h in heads]
        for l, h in pairs:
            if not (0 <= l < layers and 0 <= h < nheads):
                raise InputError(f"head ({l}, {h}) is out of range; the log has {layers} layers x {nheads} heads")
            ax.plot(steps, values[:, l, h], marker="o", ms=3, label=f"L{l} H{h}")
    ax.set_xlabel("training step")
    ax.set_ylabel(metric.replace("_", " ") + (" (nats)" if metric in ("entropy", "max_entropy") else ""))
    ax.set_title(f"{metric.replace('_', ' ')} during training" + (" (mean per layer)" if heads is None else ""))
    if len(ax.lines) <= 16:
        ax.legend(fontsize=7, ncol=2 if len(ax.lines) > 8 else 1)
    return ax


# ------------------------------------------------------------------------------------------ animation
def _frames_from_log(records: list[dict[str, Any]], layer: int, head: int) -> tuple[list[np.ndarray], list[str], list[str]]:
    key = f"{layer},{head}"
    chosen = [r for r in records if key in (r.get("weights") or {})]
    if not chosen:
        raise InputError(
            f"the attention log holds no weights for layer {layer} head {head}; record them with "
            f"store_heads=[({layer}, {head})] (or 'all')"
        )
    mats = [np.asarray(r["weights"][key], dtype=np.float32) for r in chosen]
    labels = [f"step {r['step']}" for r in chosen]
    return mats, labels, list(chosen[0].get("tokens") or [])


def _frames_from_checkpoints(checkpoints: Sequence[Any], layer: int, head: int, text: str | None,
                             tokenizer: Any) -> tuple[list[np.ndarray], list[str], list[str]]:
    from .compare import _as_inspector

    if text is None:
        raise InputError("animating checkpoints needs the probe text: pass text=...")
    mats, labels, tokens = [], [], []
    for i, ckpt in enumerate(checkpoints):
        inspector = _as_inspector(ckpt, tokenizer, None, None, f"{i + 1}")
        result = inspector(text, layers=[layer], heads=[head])
        mats.append(result.head(layer, head).numpy())
        tokens = result.display_tokens
        name = Path(str(ckpt)).name if isinstance(ckpt, (str, os.PathLike)) else f"checkpoint {i + 1}"
        labels.append(name)
    shapes = {m.shape for m in mats}
    if len(shapes) != 1:
        raise InputError("the checkpoints tokenize the text differently; animate checkpoints that share a tokenizer")
    return mats, labels, tokens


def animate_attention(
    log_or_checkpoints: Any,
    layer: int,
    head: int,
    path: str | os.PathLike,
    *,
    text: str | None = None,
    tokenizer: Any = None,
    fps: float = 2.0,
    mp4: bool | None = None,
    size: tuple[float, float] = (5.0, 5.0),
    dpi: int = 80,
) -> list[Path]:
    """Animate one head's attention on the probe text across training steps or checkpoints.

    ``log_or_checkpoints`` is a monitor log (anything :func:`read_log` accepts; its records must hold this
    head's weights, see ``store_heads``) or a list of checkpoints (directories, Hub names,
    :class:`AttentionInspector` objects or models with ``tokenizer``), each run on ``text``. Every frame is
    the ``[query, key]`` heatmap (colour scale fixed 0..1) titled with its step or checkpoint. Writes a GIF
    at ``path`` (suffix ``.gif`` added when missing) and, when ``mp4`` is True or None and ffmpeg is on the
    PATH, an MP4 beside it (``mp4=True`` without ffmpeg raises :class:`OutputError`). Files are written
    atomically; returns the paths written.
    """
    import matplotlib

    from PIL import Image

    from ..core.files import atomic_path

    if isinstance(log_or_checkpoints, (list, tuple)) and log_or_checkpoints and not isinstance(log_or_checkpoints[0], dict):
        mats, labels, tokens = _frames_from_checkpoints(log_or_checkpoints, layer, head, text, tokenizer)
    else:
        mats, labels, tokens = _frames_from_log(read_log(log_or_checkpoints), layer, head)
    ffmpeg = shutil.which("ffmpeg")
    if mp4 and not ffmpeg:
        raise OutputError("writing an MP4 needs ffmpeg on the PATH; install it or pass mp4=False (the GIF is written either way)")
    gif = Path(path)
    if gif.suffix.lower() != ".gif":
        gif = gif.with_suffix(gif.suffix + ".gif") if gif.suffix.lower() != ".mp4" else gif.with_suffix(".gif")
    n = mats[0].shape[-1]
    with matplotlib.rc_context({"backend": "Agg"}):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=size, dpi=dpi)
        image = ax.imshow(mats[0], cmap="viridis", vmin=0.0, vmax=1.0)
        fig.colorbar(image, ax=ax, fraction=0.046)
        if tokens and len(tokens) == n and n <= 40:
            ax.set_xticks(range(n), tokens, rotation=90, fontsize=7)
            ax.set_yticks(range(n), tokens, fontsize=7)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        title = ax.set_title("")
        fig.tight_layout()
        frames: list[Image.Image] = []
        for mat, label in zip(mats, labels):
            image.set_data(mat)
            title.set_text(f"layer {layer} head {head} - {label}")
            fig.canvas.draw()
            frames.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()))
        written = []
        with atomic_path(gif) as tmp:
            frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
        written.append(gif)
        if ffmpeg and mp4 is not False:
            from matplotlib.animation import FFMpegWriter

            target = gif.with_suffix(".mp4")
            with atomic_path(target) as tmp:
                writer = FFMpegWriter(fps=fps)
                with writer.saving(fig, tmp + ".mp4", dpi):
                    for mat, label in zip(mats, labels):
                        image.set_data(mat)
                        title.set_text(f"layer {layer} head {head} - {label}")
                        writer.grab_frame()
                os.replace(tmp + ".mp4", tmp)
            written.append(target)
        plt.close(fig)
    return written
