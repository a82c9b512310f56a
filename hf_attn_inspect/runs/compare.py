"""Compare the attention of two checkpoints head by head: what did fine-tuning (or an edit) change?

Both models read the same inputs through the one capture path (:meth:`AttentionInspector.run` with a
:class:`~hf_attn_inspect.capture.interface.Probe`). Model A's weights of one padded batch are kept per layer; while
model B runs, each of its layers is reduced at once against A's same layer (Jensen-Shannon divergence of
every query row, and every metric of :func:`~hf_attn_inspect.stats.metrics.sentence_metrics` for both models)
and A's copy of that layer is dropped, so nothing larger than one batch of one model's weights is held.
Inputs go through the batch engine (:mod:`hf_attn_inspect.runs.dataset`): the same dataset loading, rows read
shard by shard, length-bucketed batches, statistics merged as sums (:class:`~hf_attn_inspect.runs.dataset.ShardStats`),
shards written atomically and a stopped run resumable.

Numbers per (layer, head), all sentences weighing the same:

- ``js_divergence``: ``JS(p, q) = 1/2 KL(p || m) + 1/2 KL(q || m)``, ``m = (p + q) / 2``, natural log (nats,
  between 0 and ``ln 2 = 0.693``), where ``p``/``q`` are A's/B's attention rows of one query; averaged over
  the sentence's real (non-padding) query rows, then over sentences (``js_divergence_std``: its standard
  deviation over sentences). Padding keys carry no weight in either model and do not count.
- ``delta_<metric>``: B's mean minus A's mean of each metric of :mod:`hf_attn_inspect.stats.metrics`;
  ``a_<metric>`` and ``b_<metric>`` are the two means.
- ``class_a`` / ``class_b``: each head's pattern class in A and in B (``classify_heads`` of the analysis
  module on the first :data:`CLASS_SAMPLE` texts), when the analysis module provides it; otherwise these
  columns are absent.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from .dataset import ShardStats, _clean_rows, _slice_inputs, _versions, _write_json, run_sharded
from ..capture.interface import Probe, Site
from ..core.errors import InputError
from ..views.figures import plot_attention_diff
from ..core.files import atomic_path
from ..core.tokens import punctuation_table
from ..capture.inspector import AttentionInspector, Batch
from ..stats.metrics import METRICS, sentence_metrics

__all__ = [
    "CLASS_SAMPLE",
    "compare_models",
    "js_divergence_rows",
    "plot_divergence_map",
    "plot_head_diffs",
    "describe_changes",
    "comparison_report",
]

#: Per-sentence values kept for every head: the divergence, then A's and B's metrics.
VALUE_NAMES = ("js_divergence",) + tuple(f"a_{k}" for k in METRICS) + tuple(f"b_{k}" for k in METRICS)
_ALL = ("compared",)  # ShardStats counts sentences per class; compare has one "class": compared

#: Number of texts (from the start of the input) on which the pattern classes are computed.
CLASS_SAMPLE = 16


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


class _KeepProbe(Probe):
    """Model A's probe: keeps each layer's weights of the compared stack (float32, on the model's device)."""

    def __init__(self, stack: str) -> None:
        self.stack = stack
        self.weights: dict[int, torch.Tensor] = {}

    def record(self, site: Site, weights: torch.Tensor) -> None:
        if site.stack == self.stack:
            self.weights[site.layer] = weights.detach().float()


class _ReduceProbe(Probe):
    """Model B's probe: reduces each layer against A's kept layer as soon as it is computed, then drops it.

    :meth:`per_sentence` returns ``[batch, layers, heads, len(VALUE_NAMES)]``.
    """

    def __init__(self, stack: str, reference: dict[int, torch.Tensor], valid: torch.Tensor, special: torch.Tensor,
                 punctuation: torch.Tensor, causal: bool) -> None:
        self.stack = stack
        self.reference = reference
        self.valid, self.special, self.punctuation = valid, special, punctuation
        self.causal = causal
        self.values: dict[int, torch.Tensor] = {}

    def record(self, site: Site, weights: torch.Tensor) -> None:
        if site.stack != self.stack:
            return
        wa = self.reference.pop(site.layer, None)
        if wa is None:
            raise InputError(f"model B has a layer {site.layer} that model A did not run; compare models of the same shape")
        wb = weights.detach().float().to(wa.device)
        dev = wa.device
        valid = self.valid.to(dev)
        rows = valid[:, None, :].float()
        js = (js_divergence_rows(wa, wb) * rows).sum(-1) / rows.sum(-1).clamp_min(1.0)  # [B, H]
        kw = {"special": self.special.to(dev), "punctuation": self.punctuation.to(dev), "causal": self.causal}
        ma = sentence_metrics(wa, valid, **kw)
        mb = sentence_metrics(wb, valid, **kw)
        self.values[site.layer] = torch.stack([js] + [ma[k] for k in METRICS] + [mb[k] for k in METRICS], -1).cpu()

    def per_sentence(self) -> torch.Tensor:
        if self.reference:
            missing = sorted(self.reference)
            raise InputError(f"model B ran no layer {missing[0]} that model A has; compare models of the same shape")
        return torch.stack([self.values[k] for k in sorted(self.values)], 1)


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


def _check_tokens(ea: Batch, eb: Batch, first_row: int | None) -> None:
    """Both tokenizers must split every text into the same tokens; name the first text and token that differ
    (its row number when ``first_row`` is known, i.e. no row before it in the shard was skipped)."""
    decoder = ea.decoder_encoding is not None
    for i in range(len(ea.texts)):
        pairs = [(ea.tokens(i), eb.tokens(i))] + ([(ea.tokens(i, True), eb.tokens(i, True))] if decoder else [])
        for ta, tb in pairs:
            if ta == tb:
                continue
            pos = next((j for j, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
            xa = repr(ta[pos]) if pos < len(ta) else "the end of the text"
            xb = repr(tb[pos]) if pos < len(tb) else "the end of the text"
            which = f"text {first_row + i + 1}" if first_row is not None else "the text"
            raise InputError(
                f"the tokenizers of A and B split {which} ({ea.texts[i][:40]!r}) differently at token {pos}: "
                f"A has {xa}, B has {xb}; compare models that share a tokenizer"
            )


# -------------------------------------------------------------------------------------------- engine
def _run_shard(ia: AttentionInspector, ib: AttentionInspector, ds: Any, start: int, stop: int, columns: tuple[str, ...],
               batch_size: int, limit_len: int, stack: str, dims: tuple[int, int], bar: Any) -> ShardStats:
    texts, pairs, skipped = _clean_rows(ds, start, stop, columns)
    stats = ShardStats.empty(dims[0], dims[1], VALUE_NAMES, _ALL)
    truncated = 0
    if texts:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # truncation is counted, not warned about per text
            ea = ia.encode(texts, pairs, max_length=limit_len, truncation=True)
            eb = ib.encode(texts, pairs, max_length=limit_len, truncation=True)
        _check_tokens(ea, eb, start if not sum(skipped.values()) else None)
        truncated = int(sum(ea.truncated))
        table = punctuation_table(ia.tokenizer)
        lengths = torch.tensor(ea.lengths)
        order = torch.sort(lengths, stable=True).indices  # length buckets, deterministic (as the batch engine)
        ids_all = ea.inputs["input_ids"]
        special_all = ea.encoding["special_tokens_mask"].bool()
        if stack == "decoder":
            ids_all = ea.inputs["decoder_input_ids"]
            special_all = ea.decoder_encoding["special_tokens_mask"].bool()
            lengths = torch.tensor(ea.decoder_lengths)
        for b0 in range(0, len(texts), batch_size):
            idx = order[b0 : b0 + batch_size]
            inputs_a = _slice_inputs(ea.inputs, idx)
            inputs_b = _slice_inputs(eb.inputs, idx)
            mask_key = "decoder_attention_mask" if stack == "decoder" else "attention_mask"
            valid = inputs_a[mask_key].bool()
            t = valid.shape[1]
            special = special_all[idx, :t] & valid
            punct = table[ids_all[idx, :t].clamp(0, len(table) - 1)] & valid
            chunk = [texts[i] for i in idx.tolist()]
            keep = _KeepProbe(stack)
            ia.run(Batch(inputs=inputs_a, encoding=None, lengths=lengths[idx].tolist(), texts=chunk, pairs=None, truncated=[]), keep)
            causal = stack in getattr(ia, "last_causal_stacks", set()) or stack == "decoder"
            reduce = _ReduceProbe(stack, keep.weights, valid, special, punct, causal)
            ib.run(Batch(inputs=inputs_b, encoding=None, lengths=lengths[idx].tolist(), texts=chunk, pairs=None, truncated=[]), reduce)
            values = reduce.per_sentence()
            stats.add_values(values, torch.zeros(values.shape[:3], dtype=torch.long))
            if bar is not None:
                bar.update(len(idx))
    stats.rows = stop - start
    stats.truncated = truncated
    stats.skipped = skipped
    if bar is not None:
        bar.update(stop - start - stats.n)
    return stats


def _frame(stats: ShardStats) -> pd.DataFrame:
    nl, nh, _ = stats.sums.shape
    n = max(stats.n, 1)
    mean = stats.sums / n
    var = np.clip(stats.sumsq / n - np.square(mean), 0.0, None)
    col = {name: i for i, name in enumerate(stats.metric_names)}
    layer, head = np.meshgrid(np.arange(nl), np.arange(nh), indexing="ij")
    frame: dict[str, Any] = {"layer": layer.ravel(), "head": head.ravel(), "js_divergence": mean[..., 0].ravel()}
    frame.update({f"delta_{k}": (mean[..., col[f"b_{k}"]] - mean[..., col[f"a_{k}"]]).ravel() for k in METRICS})
    frame["js_divergence_std"] = np.sqrt(var[..., 0]).ravel()
    frame["n_sentences"] = np.full(nl * nh, stats.n)
    frame.update({f"a_{k}": mean[..., col[f"a_{k}"]].ravel() for k in METRICS})
    frame.update({f"b_{k}": mean[..., col[f"b_{k}"]].ravel() for k in METRICS})
    df = pd.DataFrame(frame)
    return df.sort_values(["js_divergence", "layer", "head"], ascending=[False, True, True], kind="stable").reset_index(drop=True)


def _first_rows(ds: Any, columns: tuple[str, ...], n: int) -> tuple[list[str], list[str] | None]:
    """The first ``n`` usable texts (and pairs) of the dataset, skipping rows as the batch engine does."""
    texts: list[str] = []
    pairs: list[str] = []
    for start in range(0, ds.num_rows, 256):
        t, p, _ = _clean_rows(ds, start, min(ds.num_rows, start + 256), columns)
        texts += t
        pairs += p or []
        if len(texts) >= n:
            break
    return texts[:n], (pairs[:n] if len(columns) == 2 else None)


def _add_classes(df: pd.DataFrame, a: AttentionInspector, b: AttentionInspector, texts: list[str],
                 pairs: list[str] | None, stack: str, max_length: int | None) -> pd.DataFrame:
    """Add ``class_a``/``class_b``: the analysis module's ``classify_heads`` of each model on ``texts`` (the
    first :data:`CLASS_SAMPLE` texts; pattern classes are not additive over shards, so they come from one
    sample)."""
    from ..stats.analysis import classify_heads

    which = "decoder" if stack == "decoder" else "self"
    for side, inspector in (("a", a), ("b", b)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = inspector(texts, pairs, max_length=max_length, batch_size=len(texts))
        classes = classify_heads(results, which=which)
        merged = df[["layer", "head"]].merge(classes[["layer", "head", "class"]], on=["layer", "head"], how="left")
        df[f"class_{side}"] = merged["class"].to_numpy()
    return df


def compare_models(
    a: Any,
    b: Any,
    texts_or_dataset: Sequence[str] | Any = None,
    *,
    tokenizer: Any = None,
    column: str | Sequence[str] = "text",
    config: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    shard_size: int = 2048,
    stack: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    classes: bool = True,
    out: str | os.PathLike | None = None,
    top: int = 4,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Per-head difference between the attention of models A and B on the same inputs.

    ``a``/``b`` are Hub names, local checkpoint directories, :class:`AttentionInspector` objects or
    in-memory models (with ``tokenizer=`` or as ``(model, tokenizer)`` pairs; B defaults to A's
    tokenizer). ``texts_or_dataset`` is anything the batch engine reads: a list of texts, a
    ``datasets.Dataset``, a local file/folder or Hub name (with ``column``/``config``/``split``/``limit``;
    ``column="a,b"`` compares sentence pairs), or ``None`` for the sample shipped with the package.
    Empty or non-string rows are skipped and counted, long texts truncated to ``max_length`` (default:
    A's maximum) and counted (``df.attrs["counts"]``).

    Returns one row per (layer, head) sorted by ``js_divergence`` descending, with the columns of the
    module docstring; ``df.attrs`` holds ``counts``, ``model_a``, ``model_b``, ``stack``. Rows are read
    ``shard_size`` at a time and run in length-sorted batches of ``batch_size``.

    With ``out``, writes there (each file atomically): ``head_divergence.csv``, ``divergence_map.png``
    (layers x heads), ``head_diffs.png`` (A, B and B - A for the ``top`` most changed heads on the first
    text), ``report.md``, ``run.json`` and one shard of sums per ``shard_size`` rows as it finishes;
    ``resume=True`` continues a stopped run from its shards (same numbers as an uninterrupted run),
    ``overwrite=True`` replaces a finished one (refused otherwise). Raises :class:`InputError` when the
    models differ in layers/heads or their tokenizers split a text differently (naming text and token).
    ``classes=False`` skips the pattern classes.
    """
    from .sources import load_dataset_texts

    ia = _as_inspector(a, tokenizer, device, dtype, "A")
    ib = _as_inspector(b, tokenizer or ia.tokenizer, device, dtype, "B")
    which = _main_stack(ia, stack)
    dims = _check_shapes(ia, ib, which)
    if batch_size < 1 or shard_size < 1:
        raise InputError("batch size and shard size must be at least 1")
    ds, info = load_dataset_texts(texts_or_dataset, config=config, split=split, column=column, limit=limit)
    limit_len = max_length or min(ia.max_length, ib.max_length)
    n_rows = ds.num_rows
    params = {
        "kind": "compare",
        "model_a": ia.name,
        "model_b": ib.name,
        "dataset": info.to_dict(),
        "batch_size": batch_size,
        "max_length": limit_len,
        "shard_size": shard_size,
        "stack": which,
        "dtype": str(next(ia.model.parameters()).dtype).replace("torch.", ""),
    }
    out_dir = Path(out) if out is not None else None
    if out_dir is not None and overwrite:
        for name in _OUTPUTS:
            (out_dir / name).unlink(missing_ok=True)
    run_ = run_sharded(
        n_rows, shard_size,
        lambda start, stop, bar: _run_shard(ia, ib, ds, start, stop, info.columns, batch_size, limit_len, which, dims, bar),
        out_dir=out_dir, params=params, resume=resume, overwrite=overwrite, progress=progress, desc="compare",
        column=info.columns[0],
    )
    total, counts = run_.total, run_.counts
    df = _frame(total)
    first_texts, first_pairs = _first_rows(ds, info.columns, CLASS_SAMPLE)
    if classes:
        df = _add_classes(df, ia, ib, first_texts, first_pairs, which, limit_len)
    df.attrs.update({"counts": counts, "n_sentences": total.n, "model_a": ia.name, "model_b": ib.name, "stack": which})
    if out_dir is not None:
        figures = _write_outputs(df, ia, ib, first_texts[0], None if first_pairs is None else first_pairs[0], out_dir,
                                 top=top, which=which, max_length=limit_len)
        run = {"status": "finished", "parameters": params, "versions": _versions(), "counts": counts,
               "shards_total": run_.shards_total, "shards_resumed": run_.shards_resumed, "first_text": first_texts[0],
               "pattern_classes": "class_a" in df, "figures": figures,
               "elapsed_s": round(run_.elapsed, 3),
               "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_json(out_dir / "run.json", run)
    return df


_OUTPUTS = ("head_divergence.csv", "divergence_map.png", "head_diffs.png", "report.md")


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


def plot_head_diffs(result_a: Any, result_b: Any, heads: Sequence[tuple[int, int]], fig: Any = None, *,
                    which: str = "self") -> Any:
    """One row per (layer, head): A's and B's attention on one text and B - A (rows = queries, columns = keys).

    ``result_a``/``result_b`` are :class:`AttentionResult` objects of the same text holding those heads.
    The difference uses a diverging scale centred at 0 (red = more weight in B, blue = less), drawn by
    :func:`~hf_attn_inspect.views.figures.plot_attention_diff`. Returns the figure.
    """
    import matplotlib.pyplot as plt

    heads = list(heads)
    if fig is None:
        fig = plt.figure(figsize=(12, 3.6 * max(1, len(heads))))
    tokens = list(result_a.stack(which)[1])
    axes = fig.subplots(len(heads), 3, squeeze=False)
    n = len(tokens)
    for row, (layer, head) in enumerate(heads):
        wa = result_a.head(layer, head, which).numpy()
        wb = result_b.head(layer, head, which).numpy()
        for ax, mat, name in ((axes[row][0], wa, "A"), (axes[row][1], wb, "B")):
            image = ax.imshow(mat, cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"{name}  L{layer} H{head}")
            fig.colorbar(image, ax=ax, fraction=0.046)
        plot_attention_diff(result_b, result_a, layer=layer, head=head, which=which, names=("B", "A"),
                            ax=axes[row][2], annotate=False, title=f"B - A  L{layer} H{head}")
        for ax in axes[row][:2]:
            if n <= 40:
                ax.set_xticks(range(n), tokens, rotation=90, fontsize=7)
                ax.set_yticks(range(n), tokens, fontsize=7)
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


def _write_outputs(df: pd.DataFrame, ia: AttentionInspector, ib: AttentionInspector, text: str, pair: str | None,
                   out: Path, *, top: int, which: str, max_length: int | None) -> list[str]:
    """Write the CSV, the figures and ``report.md`` of a finished comparison into ``out``; returns the figures."""
    import matplotlib

    figures = []
    with matplotlib.rc_context({"backend": "Agg"}):
        import matplotlib.pyplot as plt

        ax = plot_divergence_map(df)
        with atomic_path(out / "divergence_map.png") as tmp:
            ax.figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        plt.close(ax.figure)
        figures.append("divergence_map.png")
        k = max(0, min(top, len(df)))
        if k:
            heads = [(int(r.layer), int(r.head)) for r in df.head(k).itertuples()]
            keep = {"layers": sorted({l for l, _ in heads}), "heads": sorted({h for _, h in heads}), "max_length": max_length}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ra = ia(text, pair, **keep)
                rb = ib(text, pair, **keep)
            fig = plot_head_diffs(ra, rb, heads, which="decoder" if which == "decoder" else "self")
            with atomic_path(out / "head_diffs.png") as tmp:
                fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
            plt.close(fig)
            figures.append("head_diffs.png")
    with atomic_path(out / "head_divergence.csv") as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(out / "report.md") as tmp:
        Path(tmp).write_text(comparison_report(df, top=max(top, 5), figures=figures), encoding="utf-8")
    return figures

