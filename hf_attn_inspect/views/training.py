"""Figures of a training run: metric trends over steps and animations of one head's attention.

Both read what :class:`~hf_attn_inspect.runs.monitor.AttentionMonitor` recorded (a JSONL log, its
records, the monitor or the Trainer callback; see :func:`~hf_attn_inspect.runs.monitor.read_log`).
:func:`animate_attention` also takes a list of checkpoints, which it runs on one text with the capture
layer. :func:`plot_training_trends` is axes-level (it never shows or prints); :func:`animate_attention`
writes its GIF (and MP4) atomically.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from ..capture.inspector import ModelSource, resolve_inspector
from ..core.errors import InputError, OutputError
from ..core.files import atomic_path
from ..runs.monitor import MonitorLog, Record, read_log
from ..stats.metrics import METRICS

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["plot_training_trends", "animate_attention"]

Frames = tuple[list[np.ndarray], list[str], list[str]]


# --------------------------------------------------------------------------------------------- trends
def plot_training_trends(
    log: MonitorLog,
    metric: str = "entropy",
    heads: Sequence[tuple[int, int]] | str | None = None,
    *,
    ax: Axes | None = None,
) -> Axes:
    """``metric`` over training steps: one line per head in ``heads`` (``(layer, head)`` pairs, or ``"all"``),
    or with ``heads=None`` one line per layer (the mean over its heads).

    ``log`` is anything :func:`~hf_attn_inspect.runs.monitor.read_log` accepts; ``metric`` is one of
    :data:`~hf_attn_inspect.stats.metrics.METRICS` or ``entropy_ratio``. Values are the per-head means over the
    probe texts stored in each record (entropies in nats, shares and weights in 0..1). Returns the axes.
    """
    import matplotlib.pyplot as plt

    records = read_log(log)
    if not records:
        raise InputError("the attention log has no records")
    if metric != "entropy_ratio" and metric not in METRICS:
        raise InputError(f"unknown metric '{metric}'; choose one of {', '.join(METRICS)}, entropy_ratio")
    try:
        steps = np.array([r["step"] for r in records])
        values = np.array([r["entropy_ratio"] if metric == "entropy_ratio" else r["metrics"][metric] for r in records])
    except (KeyError, TypeError):
        raise InputError(f"the attention log's records do not hold '{metric}' per head; is it a monitor log?") from None
    if values.ndim != 3:
        raise InputError(f"the attention log's '{metric}' values are not [layers][heads] tables in every record")
    layers, nheads = values.shape[1:]  # values: [steps, layers, heads]
    if heads is None:
        pairs = None
    elif heads == "all":
        pairs = [(l, h) for l in range(layers) for h in range(nheads)]
    else:
        try:
            pairs = [(int(l), int(h)) for l, h in heads]
        except (TypeError, ValueError):
            raise InputError("heads must be a list of (layer, head) pairs, 'all' or None") from None
        for l, h in pairs:
            if not (0 <= l < layers and 0 <= h < nheads):
                raise InputError(f"head ({l}, {h}) is out of range; the log has {layers} layers x {nheads} heads")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    if pairs is None:
        for l in range(layers):
            ax.plot(steps, values[:, l, :].mean(-1), marker="o", ms=3, label=f"layer {l}")
    else:
        for l, h in pairs:
            ax.plot(steps, values[:, l, h], marker="o", ms=3, label=f"L{l} H{h}")
    ax.set_xlabel("training step")
    ax.set_ylabel(metric.replace("_", " ") + (" (nats)" if metric in ("entropy", "max_entropy") else ""))
    ax.set_title(f"{metric.replace('_', ' ')} during training" + (" (mean per layer)" if heads is None else ""))
    if len(ax.lines) <= 16:
        ax.legend(fontsize=7, ncol=2 if len(ax.lines) > 8 else 1)
    return ax


# ------------------------------------------------------------------------------------------ animation
def _frames_from_log(records: list[Record], layer: int, head: int) -> Frames:
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


def _frames_from_checkpoints(checkpoints: Sequence[ModelSource], layer: int, head: int, text: str | None,
                             tokenizer: PreTrainedTokenizerBase | None) -> Frames:
    if text is None:
        raise InputError("animating checkpoints needs the probe text: pass text=...")
    mats, labels, tokens = [], [], []
    for i, ckpt in enumerate(checkpoints):
        inspector = resolve_inspector(ckpt, tokenizer, what=f"checkpoint {i + 1}")
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
    log_or_checkpoints: MonitorLog | Sequence[ModelSource],
    layer: int,
    head: int,
    path: str | os.PathLike,
    *,
    text: str | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    fps: float = 2.0,
    mp4: bool | None = None,
    size: tuple[float, float] = (5.0, 5.0),
    dpi: int = 80,
) -> list[Path]:
    """Animate one head's attention on the probe text across training steps or checkpoints.

    ``log_or_checkpoints`` is a monitor log (anything :func:`~hf_attn_inspect.runs.monitor.read_log`
    accepts; its records must hold this head's weights, see ``store_heads``) or a list of checkpoints
    (directories, Hub names, :class:`~hf_attn_inspect.AttentionInspector` objects or models with
    ``tokenizer``), each run on ``text``. Every frame is the ``[query, key]`` heatmap of attention weights
    (colour scale fixed 0..1, rows sum to 1) titled with its step or checkpoint. Writes a GIF at ``path``
    (suffix ``.gif`` added when missing) and, when ``mp4`` is True or None and ffmpeg is on the PATH, an
    MP4 beside it (``mp4=True`` without ffmpeg raises :class:`OutputError`). Files are written
    atomically; returns the paths written.
    """
    import matplotlib

    from PIL import Image

    if not fps > 0:
        raise InputError(f"fps must be positive, got {fps}")
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
