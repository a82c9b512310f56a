"""Compare the attention of two checkpoints head by head: what did fine-tuning (or an edit) change?

Both models read the same inputs through the one capture path (:meth:`AttentionInspector.run` with a
:class:`~hf_attn_inspect.capture.Probe`). Model A's weights of one padded batch are kept per layer; while
model B runs, each of its layers is reduced at once against A's same layer (Jensen-Shannon divergence of
every query row, and every metric of :func:`~hf_attn_inspect.metrics.sentence_metrics` for both models)
and A's copy of that layer is dropped, so nothing larger than one batch of one model's weights is held.

Numbers per (layer, head), all sentences weighing the same:

- ``js_divergence``: ``JS(p, q) = 1/2 KL(p || m) + 1/2 KL(q || m)``, ``m = (p + q) / 2``, natural log (nats,
  between 0 and ``ln 2 = 0.693``), where ``p``/``q`` are A's/B's attention rows of one query; averaged over
  the sentence's real (non-padding) query rows, then over sentences. Padding keys carry no weight in
  either model and do not count.
- ``delta_<metric>``: B's mean minus A's mean of each metric of :mod:`hf_attn_inspect.metrics`;
  ``a_<metric>`` and ``b_<metric>`` are the two means.
- ``class_a`` / ``class_b``: each head's pattern class in A and in B on the first texts, when the analysis module provides
  ``classify_heads`` (otherwise these columns are absent).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from .capture import Probe, Site
from .errors import InputError, OutputError
from .inspector import AttentionInspector, Batch
from .metrics import METRICS, punctuation_mask, sentence_metrics

__all__ = [
    "compare_models",
    "compare_to_dir",
    "js_divergence_rows",
    "plot_divergence_map",
    "plot_head_diffs",
    "describe_changes",
    "comparison_report",
]


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


class _Sums:
    """Running sums over sentences of per-sentence, per-head values (they merge exactly across shards)."""

    def __init__(self, layers: int, heads: int) -> None:
        self.n = 0
        self.js = torch.zeros(layers, heads, dtype=torch.float64)
        self.a = {k: torch.zeros(layers, heads, dtype=torch.float64) for k in METRICS}
        self.b = {k: torch.zeros(layers, heads, dtype=torch.float64) for k in METRICS}

    def to_dict(self) -> dict[str, np.ndarray]:
        out = {"n": np.array(self.n), "js": self.js.numpy()}
        out.update({f"a_{k}": v.numpy() for k, v in self.a.items()})
        out.update({f"b_{k}": v.numpy() for k, v in self.b.items()})
        return out

    def add_dict(self, d: dict[str, np.ndarray]) -> None:
        self.n += int(d["n"])
        self.js += torch.as_tensor(d["js"])
        for k in METRICS:
            self.a[k] += torch.as_tensor(d[f"a_{k}"])
            self.b[k] += torch.as_tensor(d[f"b_{k}"])


class _KeepProbe(Probe):
    """Model A's probe: keeps each layer's weights of the compared stack (float32, on the model's device)."""

    def __init__(self, stack: str) -> None:
        self.stack = stack
        self.weights: dict[int, torch.Tensor] = {}

    def record(self, site: Site, weights: torch.Tensor) -> None:
        if site.stack == self.stack:
            self.weights[site.layer] = weights.detach().float()


class _ReduceProbe(Probe):
    """Model B's probe: reduces each layer against A's kept layer as soon as it is computed, then drops it."""

    def __init__(self, stack: str, reference: dict[int, torch.Tensor], masks: dict[str, torch.Tensor], sums: _Sums) -> None:
        self.stack = stack
        self.reference = reference
        self.masks = masks
        self.sums = sums
        self.causal = False
        self.seen: set[int] = set()

    def record(self, site: Site, weights: torch.Tensor) -> None:
        if site.stack != self.stack:
            return
        wa = self.reference.pop(site.layer, None)
        if wa is None:
            raise InputError(f"model B has a layer {site.layer} that model A did not run; compare models of the same shape")
        wb = weights.detach().float().to(wa.device)
        valid = self.masks["valid"].to(wa.device)  # [B, T]
        js = js_divergence_rows(wa, wb)  # [B, H, T]
        rows = valid[:, None, :].float()
        per_sentence = (js * rows).sum(-1) / rows.sum(-1).clamp_min(1.0)  # [B, H]
        self.sums.js[site.layer] += per_sentence.sum(0).double().cpu()
        kw = {"special": self.masks["special"], "punctuation": self.masks["punctuation"], "causal": self.causal}
        ma = sentence_metrics(wa, valid, **kw)
        mb = sentence_metrics(wb, valid, **kw)
        for k in METRICS:
            self.sums.a[k][site.layer] += ma[k].sum(0).double().cpu()
            self.sums.b[k][site.layer] += mb[k].sum(0).double().cpu()
        self.seen.add(site.layer)


# ------------------------------------------------------------------------------------- model setup
def _as_inspector(x: Any, tokenizer: Any, device: str | None, dtype: str | None, what: str) -> AttentionInspector:
    if isinstance(x, AttentionInspector):
        return x
    if isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], torch.nn.Module):
        return AttentionInspector(x[0], x[1])
    if isinstance(x, torch.nn.Module):
        if tokenizer is None:
            raise InputError(f"model {what} is an in-memory model without a tokenizer; pass tokenizer=... or an AttentionInspector")
        return AttentionInspector(x, tokenizer)
    if x is None or isinstance(x, (str, os.PathLike)):
        return AttentionInspector.from_pretrained(x, device=device, dtype=dtype)
    raise InputError(f"model {what} must be a Hub name, a directory, an AttentionInspector or a model, not {type(x).__name__}")


def _main_stack(inspector: AttentionInspector, stack: str | None) -> str:
    dims = inspector.dims()
    if stack is None:
        return "encoder" if "encoder" in dims else "self"
    if stack not in dims or stack == "cross":
        choices = ", ".join(s for s in dims if s != "cross")
        raise InputError(f"cannot compare stack '{stack}'; this model has: {choices}")
    return stack


def _check_shapes(a: AttentionInspector, b: AttentionInspector, stack: str) -> tuple[int, int]:
    da, db = a.dims(), b.dims()
    if da.get(stack) != db.get(stack) or set(da) != set(db):
        fa = ", ".join(f"{s}: {l} layers x {h} heads" for s, (l, h) in da.items())
        fb = ", ".join(f"{s}: {l} layers x {h} heads" for s, (l, h) in db.items())
        raise InputError(f"model A ({fa}) and model B ({fb}) differ in shape; only models with the same layers and heads can be compared")
    return da[stack]


def _check_tokens(ba: Batch, bb: Batch, index: Sequence[int]) -> None:
    for i in range(len(ba.texts)):
        ta, tb = ba.tokens(i), bb.tokens(i)
        if ta == tb:
            continue
        pos = next((j for j, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
        xa = repr(ta[pos]) if pos < len(ta) else "the end of the text"
        xb = repr(tb[pos]) if pos < len(tb) else "the end of the text"
        raise InputError(
            f"the tokenizers of A and B split text {index[i] + 1} differently at token {pos}: A has {xa}, "
            f"B has {xb} ({ba.texts[i][:40]!r}); compare models that share a tokenizer"
        )


# ------------------------------------------------------------------------------------------- inputs
def _texts(texts_or_dataset: Any, column: str, config: str | None, split: str | None,
           limit: int | None) -> tuple[list[str], list[str] | None, int]:
    """``(texts, pairs or None, skipped rows)`` from a list of texts or a dataset (see :func:`compare_models`)."""
    if isinstance(texts_or_dataset, (list, tuple)) and all(isinstance(t, str) for t in texts_or_dataset):
        texts = list(texts_or_dataset)
        if not texts:
            raise InputError("no text given")
        for i, t in enumerate(texts):
            if not t.strip():
                raise InputError(f"text {i + 1} of {len(texts)} is empty or blank")
        return (texts[:limit] if limit else texts), None, 0
    from .datasets_io import load_dataset_texts

    ds, info = load_dataset_texts(texts_or_dataset, config=config, split=split, column=column, limit=limit)
    cols = [ds[c] for c in info.columns]
    texts: list[str] = []
    pairs: list[str] = []
    skipped = 0
    for row in zip(*cols):  # empty or non-string rows are skipped and counted, as in the batch engine
        if not all(isinstance(x, str) and x.strip() for x in row):
            skipped += 1
            continue
        texts.append(row[0])
        if info.is_pair:
            pairs.append(row[1])
    if not texts:
        raise InputError(f"dataset {info.source!r} has no non-empty text in column(s) {', '.join(info.columns)}")
    return texts, (pairs if info.is_pair else None), skipped


def _buckets(inspector: AttentionInspector, texts: list[str], pairs: list[str] | None, batch_size: int,
             max_length: int | None) -> list[list[int]]:
    """Indices of the texts grouped into length buckets (sorted by token count, stable, deterministic)."""
    try:
        from .batch import length_buckets
    except ImportError:  # until the batch engine lands: sort by token count here
        args = (texts,) if pairs is None else (texts, pairs)
        lengths = [len(ids) for ids in inspector.tokenizer(*args)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return length_buckets(inspector.tokenizer, texts, batch_size, max_length=max_length or inspector.max_length)


# -------------------------------------------------------------------------------------------- compare
def _compare_batch(a: AttentionInspector, b: AttentionInspector, texts: list[str], pairs: list[str] | None,
                   index: Sequence[int], stack: str, sums: _Sums, max_length: int | None) -> None:
    ba = a.encode(texts, pairs, max_length=max_length)
    bb = b.encode(texts, pairs, max_length=max_length)
    _check_tokens(ba, bb, index)
    keep = _KeepProbe(stack)
    a.run(ba, keep)
    causal = stack in getattr(a, "last_causal_stacks", set()) or stack == "decoder"
    punct = torch.zeros_like(ba.valid)
    for i in range(len(texts)):
        toks = ba.tokens(i)
        punct[i, : len(toks)] = punctuation_mask(toks)
    masks = {"valid": ba.valid, "special": ba.special_mask, "punctuation": punct}
    reduce = _ReduceProbe(stack, keep.weights, masks, sums)
    reduce.causal = causal
    b.run(bb, reduce)
    if keep.weights:
        missing = sorted(keep.weights)
        raise InputError(f"model B ran no layer {missing[0]} that model A has; compare models of the same shape")
    sums.n += len(texts)


def _frame(sums: _Sums, layers: int, heads: int) -> pd.DataFrame:
    n = max(sums.n, 1)
    l, h = np.meshgrid(np.arange(layers), np.arange(heads), indexing="ij")
    frame: dict[str, Any] = {"layer": l.ravel(), "head": h.ravel(), "js_divergence": (sums.js / n).numpy().ravel()}
    a = {k: (sums.a[k] / n).numpy().ravel() for k in METRICS}
    b = {k: (sums.b[k] / n).numpy().ravel() for k in METRICS}
    frame.update({f"delta_{k}": b[k] - a[k] for k in METRICS})
    frame.update({f"a_{k}": a[k] for k in METRICS})
    frame.update({f"b_{k}": b[k] for k in METRICS})
    df = pd.DataFrame(frame)
    return df.sort_values(["js_divergence", "layer", "head"], ascending=[False, True, True], kind="stable").reset_index(drop=True)


CLASS_SAMPLE = 16


def _add_classes(df: pd.DataFrame, a: AttentionInspector, b: AttentionInspector, texts: list[str],
                 pairs: list[str] | None, stack: str, max_length: int | None) -> pd.DataFrame:
    """Add ``class_a``/``class_b``: the analysis module's ``classify_heads`` of each model on the first
    :data:`CLASS_SAMPLE` texts (pattern classes are not additive over shards, so they come from one sample).
    Without ``classify_heads`` (older analysis module) the frame is returned unchanged."""
    try:
        from .analysis import classify_heads
    except ImportError:
        return df
    sample = texts[:CLASS_SAMPLE]
    which = "decoder" if stack == "decoder" else "self"
    for side, inspector in (("a", a), ("b", b)):
        sample_pairs = None if pairs is None else pairs[:CLASS_SAMPLE]
        results = inspector(sample, sample_pairs, max_length=max_length, batch_size=len(sample))
        classes = classify_heads(results, which=which)
        col = "class" if "class" in classes else "pattern"
        merged = df[["layer", "head"]].merge(classes[["layer", "head", col]], on=["layer", "head"], how="left")
        df[f"class_{side}"] = merged[col].to_numpy()
    return df


def compare_models(
    a: Any,
    b: Any,
    texts_or_dataset: Sequence[str] | Any = None,
    *,
    tokenizer: Any = None,
    column: str = "text",
    config: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    stack: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    progress: bool = False,
    shard_dir: str | os.PathLike | None = None,
    classes: bool = True,
) -> pd.DataFrame:
    """Per-head difference between the attention of models A and B on the same inputs.

    ``a``/``b`` are Hub names, local checkpoint directories, :class:`AttentionInspector` objects or
    in-memory models (with ``tokenizer=`` or as ``(model, tokenizer)`` pairs; B defaults to A's
    tokenizer). ``texts_or_dataset`` is a list of texts, a ``datasets.Dataset``, a dataset path or Hub
    name (read with ``column``/``config``/``split``/``limit`` like the ``batch`` command; ``column="a,b"``
    compares sentence pairs; empty rows are skipped and counted in ``df.attrs["skipped"]``), or ``None``
    for the dataset shipped with the package. Returns one row per (layer, head) sorted by
    ``js_divergence`` descending, with the columns of the module docstring; ``df.attrs`` holds
    ``n_sentences``, ``skipped``, ``model_a``, ``model_b``, ``stack``. Texts run in length buckets of
    ``batch_size``. With ``shard_dir``, each bucket's sums are written there atomically and buckets
    already written by the same run are reused (a stopped run resumes where it stopped, exactly).
    Raises :class:`InputError` when the models differ in layers/heads or their tokenizers split a text
    differently (naming the text and token). ``classes=False`` skips the pattern classes.
    """
    ia = _as_inspector(a, tokenizer, device, dtype, "A")
    ib = _as_inspector(b, tokenizer or ia.tokenizer, device, dtype, "B")
    texts, pairs, skipped = _texts(texts_or_dataset, column, config, split, limit)
    return _compare(ia, ib, texts, pairs, skipped=skipped, batch_size=batch_size, max_length=max_length, stack=stack,
                    progress=progress, shard_dir=shard_dir, classes=classes)


def _fingerprint(ia: AttentionInspector, ib: AttentionInspector, texts: list[str], pairs: list[str] | None,
                 batch_size: int, max_length: int | None, stack: str) -> str:
    digest = hashlib.sha256()
    for part in (ia.name, ib.name, str(batch_size), str(max_length), stack, str(len(texts))):
        digest.update(part.encode() + b"\0")
    for t in texts + (pairs or []):
        digest.update(t.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


def _compare(ia: AttentionInspector, ib: AttentionInspector, texts: list[str], pairs: list[str] | None, *,
             skipped: int = 0, batch_size: int = 16, max_length: int | None = None, stack: str | None = None,
             progress: bool = False, shard_dir: str | os.PathLike | None = None, classes: bool = True) -> pd.DataFrame:
    which = _main_stack(ia, stack)
    layers, heads = _check_shapes(ia, ib, which)
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    buckets = _buckets(ia, texts, pairs, batch_size, max_length)
    sums = _Sums(layers, heads)
    shards = Path(shard_dir) if shard_dir is not None else None
    if shards is not None:
        shards.mkdir(parents=True, exist_ok=True)
        stamp = _fingerprint(ia, ib, texts, pairs, batch_size, max_length, which)
        manifest = shards / "manifest.json"
        if manifest.exists():
            if json.loads(manifest.read_text()).get("fingerprint") != stamp:
                raise OutputError(f"{shards} holds shards of a different comparison; pass --overwrite or choose another --out")
        else:
            with _atomic(manifest) as tmp:
                Path(tmp).write_text(json.dumps({"fingerprint": stamp, "buckets": len(buckets)}))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(texts), unit="sent", desc="compare")
    for number, bucket in enumerate(buckets):
        shard = shards / f"shard-{number:05d}.npz" if shards is not None else None
        if shard is not None and shard.exists():
            with np.load(shard) as data:
                sums.add_dict(dict(data))
        else:
            part = _Sums(layers, heads) if shard is not None else sums
            chunk_pairs = None if pairs is None else [pairs[i] for i in bucket]
            _compare_batch(ia, ib, [texts[i] for i in bucket], chunk_pairs, bucket, which, part, max_length)
            if shard is not None:
                with _atomic(shard) as tmp:
                    with open(tmp, "wb") as fh:
                        np.savez(fh, **part.to_dict())
                sums.add_dict(part.to_dict())
        if bar is not None:
            bar.update(len(bucket))
    if bar is not None:
        bar.close()
    df = _frame(sums, layers, heads)
    if classes:
        df = _add_classes(df, ia, ib, texts, pairs, which, max_length)
    df.attrs.update({"n_sentences": sums.n, "skipped": skipped, "model_a": ia.name, "model_b": ib.name, "stack": which})
    return df


# -------------------------------------------------------------------------------------------- figures
def plot_divergence_map(df: pd.DataFrame, ax: Any = None, *, value: str = "js_divergence", cmap: str = "magma") -> Any:
    """Heatmap of ``value`` (default the JS divergence, nats) with layers as rows and heads as columns.

    ``df`` is the frame of :func:`compare_models`. Returns the axes (a new figure when ``ax`` is None).
    """
    import matplotlib.pyplot as plt

    grid = df.pivot(index="layer", columns="head", values=value).sort_index().sort_index(axis=1)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.45 * grid.shape[1] + 2), max(3.0, 0.4 * grid.shape[0] + 1.5)))
    image = ax.imshow(grid.to_numpy(), cmap=cmap, aspect="auto", vmin=0.0)
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [str(r) for r in grid.index])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("Jensen-Shannon divergence A vs B (nats)" if value == "js_divergence" else value)
    ax.figure.colorbar(image, ax=ax)
    return ax


def _diff_plotter():
    try:
        from .figures import plot_attention_diff  # the shared diff heatmap, when available
    except ImportError:
        return None
    return plot_attention_diff


def plot_head_diffs(result_a: Any, result_b: Any, heads: Sequence[tuple[int, int]], fig: Any = None, *,
                    which: str = "self") -> Any:
    """One panel per (layer, head): B's minus A's attention on one text (rows = queries, columns = keys).

    ``result_a``/``result_b`` are :class:`AttentionResult` objects of the same text holding those heads.
    Each panel shows A, B and B - A side by side (red = more weight in B, blue = less); returns the figure.
    """
    import matplotlib.pyplot as plt

    heads = list(heads)
    if fig is None:
        fig = plt.figure(figsize=(12, 3.6 * max(1, len(heads))))
    tokens = list(result_a.stack(which)[1])
    axes = fig.subplots(len(heads), 3, squeeze=False)
    shared = _diff_plotter()
    for row, (layer, head) in enumerate(heads):
        wa = result_a.head(layer, head, which).numpy()
        wb = result_b.head(layer, head, which).numpy()
        if shared is not None:
            try:
                shared(wa, wb, tokens=tokens, axes=axes[row])
                continue
            except TypeError:
                pass
        diff = wb - wa
        limit = float(np.abs(diff).max()) or 1.0
        panels = ((wa, f"A  L{layer} H{head}", "viridis", 0.0, 1.0), (wb, f"B  L{layer} H{head}", "viridis", 0.0, 1.0),
                  (diff, "B - A", "RdBu_r", -limit, limit))
        for ax, (mat, title, cmap, lo, hi) in zip(axes[row], panels):
            image = ax.imshow(mat, cmap=cmap, vmin=lo, vmax=hi)
            ax.set_title(title)
            n = len(tokens)
            if n <= 40:
                ax.set_xticks(range(n), tokens, rotation=90, fontsize=7)
                ax.set_yticks(range(n), tokens, fontsize=7)
            fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------- report
_WORDS = {
    "entropy": "entropy (nats)",
    "diagonal": "self (diagonal) share",
    "previous_token": "previous-token share",
    "next_token": "next-token share",
    "first_token": "first-token share",
    "special_tokens": "special-token share",
    "punctuation": "punctuation share",
    "max_weight": "max weight",
    "weight_std": "weight std",
    "sparsity": "sparsity",
    "mean_distance": "mean distance (tokens)",
}


def describe_changes(row: pd.Series, df: pd.DataFrame, n: int = 3) -> list[str]:
    """The ``n`` metrics of one head that changed most, in words (``"first-token share 0.12 -> 0.71"``).

    A change counts relative to the spread of that metric over all heads of A (so entropies and shares
    compare fairly); ``max_entropy`` is left out (it depends only on the input lengths).
    """
    scored = []
    for k in _WORDS:
        spread = float(df[f"a_{k}"].std()) or 1.0
        scored.append((abs(float(row[f"delta_{k}"])) / (spread + 1e-12), k))
    scored.sort(reverse=True)
    out = []
    for _, k in scored[:n]:
        out.append(f"{_WORDS[k]} {row[f'a_{k}']:.3f} -> {row[f'b_{k}']:.3f}")
    return out


def comparison_report(df: pd.DataFrame, *, top: int = 5, figures: Sequence[str] = ()) -> str:
    """``report.md`` text: the inputs, the heads that changed most and how, per-layer means, figures."""
    n = df.attrs.get("n_sentences", "?")
    lines = [
        "# Attention comparison",
        "",
        f"- model A: `{df.attrs.get('model_a', 'A')}`",
        f"- model B: `{df.attrs.get('model_b', 'B')}`",
        f"- sentences: {n}; stack: {df.attrs.get('stack', 'self')}",
        "- divergence: Jensen-Shannon divergence between A's and B's attention rows, natural log "
        "(0 = identical, ln 2 = 0.693 = disjoint), averaged over real query rows and sentences.",
        "",
        f"## Heads that changed most (top {min(top, len(df))})",
        "",
    ]
    changed = df[df["js_divergence"] >= 1e-6]
    if changed.empty:
        lines.append("No head changed: every head's divergence is below 1e-6 nats.")
    for rank, (_, row) in enumerate(changed.head(top).iterrows(), 1):
        how = "; ".join(describe_changes(row, df))
        cls = ""
        if "class_a" in df and "class_b" in df:
            cls = f" [{row['class_a']} -> {row['class_b']}]" if row["class_a"] != row["class_b"] else f" [{row['class_a']}]"
        lines.append(f"{rank}. layer {int(row['layer'])} head {int(row['head'])}: JS {row['js_divergence']:.4f}{cls}; {how}")
    per_layer = df.groupby("layer")["js_divergence"].mean().sort_index()
    lines += ["", "## Mean divergence per layer", "", "| layer | mean JS (nats) |", "|---|---|"]
    lines += [f"| {int(layer)} | {value:.4f} |" for layer, value in per_layer.items()]
    quiet = int((df["js_divergence"] < 1e-6).sum())
    lines += ["", f"{quiet} of {len(df)} heads are unchanged (JS < 1e-6)."]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({Path(f).name})" for f in figures]
    return "\n".join(lines) + "\n"


@contextmanager
def _atomic(path: Path) -> Iterator[str]:
    """A temporary path next to ``path``, renamed onto it on success (removed on failure)."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


_OUTPUTS = ("head_divergence.csv", "report.md")


def compare_to_dir(
    a: Any,
    b: Any,
    texts_or_dataset: Sequence[str] | Any = None,
    out: str | os.PathLike = "compare_out",
    *,
    top: int = 4,
    overwrite: bool = False,
    resume: bool = False,
    tokenizer: Any = None,
    column: str = "text",
    config: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    stack: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    progress: bool = False,
    classes: bool = True,
) -> pd.DataFrame:
    """Run :func:`compare_models` (same arguments) and write its outputs to ``out``; returns the frame.

    Writes ``head_divergence.csv`` (sorted by ``js_divergence`` descending), ``divergence_map.png``
    (layers x heads), ``head_diffs.png`` (A, B and B - A of the ``top`` most changed heads on the first
    text), ``report.md`` and ``run.json``, each atomically (a file is complete or absent). Per-bucket sums
    go to ``out/shards`` as they finish; ``resume=True`` continues a stopped run from there. A directory
    that already holds a finished comparison is refused unless ``overwrite`` (or ``resume``).
    """
    import matplotlib

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory; choose another --out")
    if (out / "head_divergence.csv").exists() and not (overwrite or resume):
        raise OutputError(f"{out} already holds a comparison; pass --overwrite to replace it or choose another --out")
    shard_dir = out / "shards"
    if shard_dir.exists() and not resume:
        for f in list(shard_dir.glob("shard-*.npz")) + [shard_dir / "manifest.json"]:
            f.unlink(missing_ok=True)
    ia = _as_inspector(a, tokenizer, device, dtype, "A")
    ib = _as_inspector(b, tokenizer or ia.tokenizer, device, dtype, "B")
    texts, pairs, skipped = _texts(texts_or_dataset, column, config, split, limit)
    df = _compare(ia, ib, texts, pairs, skipped=skipped, batch_size=batch_size, max_length=max_length, stack=stack,
                  progress=progress, shard_dir=shard_dir, classes=classes)
    which = df.attrs["stack"]
    figures = []
    with matplotlib.rc_context({"backend": "Agg"}):
        import matplotlib.pyplot as plt

        ax = plot_divergence_map(df)
        with _atomic(out / "divergence_map.png") as tmp:
            ax.figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        plt.close(ax.figure)
        figures.append("divergence_map.png")
        k = max(0, min(top, len(df)))
        if k:
            heads = [(int(r.layer), int(r.head)) for r in df.head(k).itertuples()]
            keep = {"layers": sorted({l for l, _ in heads}), "heads": sorted({h for _, h in heads}), "max_length": max_length}
            pair = None if pairs is None else pairs[0]
            ra = ia(texts[0], pair, **keep)
            rb = ib(texts[0], pair, **keep)
            fig = plot_head_diffs(ra, rb, heads, which="decoder" if which == "decoder" else "self")
            with _atomic(out / "head_diffs.png") as tmp:
                fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
            plt.close(fig)
            figures.append("head_diffs.png")
    with _atomic(out / "head_divergence.csv") as tmp:
        df.to_csv(tmp, index=False)
    with _atomic(out / "report.md") as tmp:
        Path(tmp).write_text(comparison_report(df, top=max(top, 5), figures=figures), encoding="utf-8")
    run = {
        "model_a": ia.name,
        "model_b": ib.name,
        "n_sentences": df.attrs["n_sentences"],
        "skipped_rows": skipped,
        "stack": which,
        "first_text": texts[0],
        "dataset": texts_or_dataset if isinstance(texts_or_dataset, (str, type(None))) else type(texts_or_dataset).__name__,
        "parameters": {"column": column, "config": config, "split": split, "limit": limit, "batch_size": batch_size,
                       "max_length": max_length, "top": top, "device": str(ia.device), "dtype": str(dtype or "float32")},
        "pattern_classes": "class_a" in df,
        "versions": _versions(),
    }
    with _atomic(out / "run.json") as tmp:
        Path(tmp).write_text(json.dumps(run, indent=2, default=str), encoding="utf-8")
    return df


def _versions() -> dict[str, str]:
    import transformers

    from . import __version__

    return {"hf_attn_inspect": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
