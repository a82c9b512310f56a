"""Per-head metrics as tables, and the chapter's single-head pattern analysis.

:func:`head_metrics` turns one result, a list of results (padded into one batch) or a weights tensor
into a :class:`pandas.DataFrame` with one row per (layer, head); the definitions live in
:mod:`hf_attn_inspect.stats.metrics`. :func:`analyze_attention_pattern` and :func:`print_attention_analysis`
keep the chapter's keys and meaning for a single ``[T, T]`` head.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Any, Sequence, TextIO

import numpy as np
import pandas as pd
import torch

from ..capture.interface import Probe, Site
from ..core.errors import CaptureError, InputError
from ..core.tokens import punctuation_mask
from .metrics import METRICS, sentence_metrics
from ..capture.result import AttentionResult

__all__ = [
    "head_metrics",
    "batch_results",
    "PatternThresholds",
    "PATTERN_CLASSES",
    "pattern_index",
    "classify_heads",
    "head_table",
    "format_head_table",
    "detect_heads",
    "repeated_random_tokens",
    "DETECTOR_KINDS",
    "pattern_mask",
    "analyze_attention_pattern",
    "format_attention_analysis",
    "print_attention_analysis",
]


def batch_results(results: Sequence[AttentionResult], which: str = "self") -> dict[str, Any]:
    """Pad results of different lengths into one batch: ``weights [B, L, H, T, T]`` and ``[B, T]`` masks.

    Returns a dict with ``weights``, ``valid``, ``special``, ``punctuation``, ``causal``, ``layer_ids``
    and ``head_ids``; every result must have the same layers and heads.
    """
    if not results:
        raise InputError("no results given")
    first = results[0]
    for r in results[1:]:
        if r.layer_ids != first.layer_ids or r.head_ids != first.head_ids:
            raise InputError("results cover different layers or heads; capture them with the same layers/heads")
    mats = [r.stack(which)[0] for r in results]
    toks = [r.stack(which)[1] for r in results]
    t = max(m.shape[-1] for m in mats)
    b = len(results)
    weights = torch.zeros(b, first.num_layers, first.num_heads, t, t)
    valid = torch.zeros(b, t, dtype=torch.bool)
    special = torch.zeros(b, t, dtype=torch.bool)
    punct = torch.zeros(b, t, dtype=torch.bool)
    for i, (r, m, tk) in enumerate(zip(results, mats, toks)):
        n = m.shape[-1]
        weights[i, :, :, :n, :n] = m
        valid[i, :n] = True
        mask = r.special_tokens_mask if which in ("self", "encoder") else r.decoder_special_tokens_mask
        special[i, :n] = torch.tensor(mask or [False] * n, dtype=torch.bool)
        punct[i, :n] = punctuation_mask(tk)
    causal = first.is_causal if which in ("self", "encoder") else which == "decoder"
    return {
        "weights": weights,
        "valid": valid,
        "special": special,
        "punctuation": punct,
        "causal": causal,
        "layer_ids": first.layer_ids,
        "head_ids": first.head_ids,
    }


def _prepare(
    data: AttentionResult | Sequence[AttentionResult] | torch.Tensor | np.ndarray,
    valid: torch.Tensor | None,
    which: str,
    causal: bool | None,
    sparsity_threshold: float,
) -> dict[str, Any]:
    """Weights ``[B, L, H, T, T]``, masks, metrics ``{name: [B, L, H]}`` and key names ``[B, T]`` (or None)."""
    names = None
    if isinstance(data, AttentionResult):
        data = [data]
    if isinstance(data, (list, tuple)):
        batch = batch_results(data, which)
        weights, valid = batch["weights"], batch["valid"]
        m = sentence_metrics(
            weights,
            valid,
            special=batch["special"],
            punctuation=batch["punctuation"],
            causal=batch["causal"] if causal is None else causal,
            sparsity_threshold=sparsity_threshold,
        )
        layer_ids, head_ids = batch["layer_ids"], batch["head_ids"]
        names = _key_names(data, which, weights.shape[-1])
    else:
        weights = torch.as_tensor(data).float()
        while weights.dim() < 5:
            weights = weights.unsqueeze(0)
        if weights.dim() != 5:
            raise InputError(f"weights must be at most [batch, layers, heads, T, T], got {tuple(weights.shape)}")
        if valid is None:
            valid = torch.ones(weights.shape[0], weights.shape[-1], dtype=torch.bool)
        valid = torch.as_tensor(valid).bool().reshape(weights.shape[0], weights.shape[-1])
        m = sentence_metrics(weights, valid, causal=bool(causal), sparsity_threshold=sparsity_threshold)
        layer_ids, head_ids = list(range(weights.shape[1])), list(range(weights.shape[2]))
    return {"weights": weights, "valid": valid, "metrics": m, "layer_ids": layer_ids, "head_ids": head_ids, "names": names}


def _key_names(results: Sequence[AttentionResult], which: str, t: int) -> np.ndarray:
    """``[B, T]`` object array naming each key position: special tokens by their text, others ``pos j``."""
    key_which = "self" if which in ("self", "encoder") else "decoder"
    out = np.empty((len(results), t), dtype=object)
    out[:] = ""
    for b, r in enumerate(results):
        _, _, keys = r.stack(key_which)
        special = r.special_tokens_mask if key_which == "self" else r.decoder_special_tokens_mask
        special = special or [False] * len(keys)
        out[b, : len(keys)] = [k if s else f"pos {j}" for j, (k, s) in enumerate(zip(keys, special))]
    return out


def _frame(values: dict[str, np.ndarray], names: Sequence[str], layer_ids, head_ids, per_sentence: bool) -> pd.DataFrame:
    b = next(iter(values.values())).shape[0]
    if per_sentence:
        s, l, h = np.meshgrid(np.arange(b), layer_ids, head_ids, indexing="ij")
        frame = {"sentence": s.ravel(), "layer": l.ravel(), "head": h.ravel()}
        frame.update({k: values[k].ravel() for k in names})
    else:
        l, h = np.meshgrid(layer_ids, head_ids, indexing="ij")
        frame = {"layer": l.ravel(), "head": h.ravel()}
        frame.update({k: values[k].mean(0).ravel() for k in names})
    return pd.DataFrame(frame)


def head_metrics(
    data: AttentionResult | Sequence[AttentionResult] | torch.Tensor | np.ndarray,
    valid: torch.Tensor | None = None,
    *,
    which: str = "self",
    causal: bool | None = None,
    sparsity_threshold: float = 0.3,
    per_sentence: bool = False,
) -> pd.DataFrame:
    """One row per (layer, head) with every metric of :mod:`hf_attn_inspect.stats.metrics`, 0-indexed ``layer``, ``head``.

    ``data`` is a result, a list of results (each sentence weighs the same in the mean), or weights
    ``[..., layers, heads, T, T]`` / ``[heads, T, T]`` / ``[T, T]`` with an optional boolean ``valid``
    ``[batch, T]`` mask (padding rows and columns never count). ``which`` picks ``self``/``decoder``
    attention of encoder-decoder results. With ``per_sentence=True`` the rows are per (sentence, layer,
    head) with a ``sentence`` column. Computed for all sentences, layers and heads at once.
    """
    prep = _prepare(data, valid, which, causal, sparsity_threshold)
    values = {k: v.detach().cpu().numpy() for k, v in prep["metrics"].items()}  # each [b, L, H]
    return _frame(values, METRICS, prep["layer_ids"], prep["head_ids"], per_sentence)


# ------------------------------------------------------------------------------------------ pattern classes
@dataclass(frozen=True)
class PatternThresholds:
    """Thresholds of :func:`classify_heads`; every value is a share of attention in ``[0, 1]``.

    Defaults and why:

    - ``previous``/``next``/``diagonal`` = 0.5: Clark et al. (2019, "What does BERT look at?") call a
      head positional when it puts more than half of its attention on the previous/next token (averaged
      over tokens); the same bar is used for the token itself.
    - ``column`` = 0.6: Clark et al. count a head as attending to a special token when more than ~0.6 of
      its attention lands on [SEP]/[CLS]/punctuation; we apply it to whichever single key position
      receives the most attention (averaged over query rows).
    - ``broad`` = 0.78: Clark et al.'s broad heads have mean entropy above ~3.8 nats on 128-token inputs,
      i.e. 3.8 / ln(128) = 0.78 of the maximum entropy; we use the ratio ``entropy / max_entropy`` so the
      bar scales with sentence length.
    - ``uniform`` = 0.95: a head whose entropy is within 5% of the maximum is indistinguishable from
      1/n averaging (the chapter's "uniform": not learning relationships).
    - ``sparse`` = 0.6: the mean row maximum ("confidence"): most of each row's weight on one key that
      differs from row to row (focused attention, no positional or column rule).
    """

    previous: float = 0.5
    next: float = 0.5
    diagonal: float = 0.5
    column: float = 0.6
    broad: float = 0.78
    uniform: float = 0.95
    sparse: float = 0.6


PATTERN_CLASSES = ("previous", "next", "diagonal", "column", "uniform", "broad", "sparse", "mixed")
_RULE_INPUTS = ("previous_token", "next_token", "diagonal", "column_share", "entropy", "max_entropy", "max_weight")


def pattern_index(values: dict[str, torch.Tensor], thresholds: PatternThresholds | None = None) -> torch.Tensor:
    """Index into :data:`PATTERN_CLASSES` of each head, from its metric values (tensors of one shape).

    ``values`` needs ``previous_token``, ``next_token``, ``diagonal``, ``column_share`` (the largest mean
    column weight ``max_j mean_i a_ij``; ``special_tokens`` stands in when absent), ``entropy``,
    ``max_entropy`` and ``max_weight``; any shape works (per sentence ``[B, L, H]`` in the dataset
    engine, averaged per head in :func:`classify_heads`). The rule: among previous/next/diagonal/column,
    the one whose share is furthest above its threshold (share / threshold >= 1; first in that order on
    ties); otherwise ``uniform`` when entropy >= ``uniform`` x max entropy, ``broad`` when >= ``broad`` x,
    ``sparse`` when the mean row maximum >= ``sparse``, else ``mixed``. One-token rows (max entropy 0)
    count as entropy ratio 1.
    """
    th = thresholds or PatternThresholds()
    v = {k: x.float() if torch.is_tensor(x) else torch.tensor(np.asarray(x, dtype=np.float32)) for k, x in values.items()}
    column = v.get("column_share", v.get("special_tokens"))
    scores = torch.stack([v["previous_token"] / th.previous, v["next_token"] / th.next,
                          v["diagonal"] / th.diagonal, column / th.column], -1)
    best_score, best = scores.max(-1)
    max_ent = v["max_entropy"]
    ratio = torch.where(max_ent > 0, v["entropy"] / max_ent.clamp_min(1e-12), torch.ones_like(max_ent))
    idx = PATTERN_CLASSES.index
    fallback = torch.where(
        ratio >= th.uniform, idx("uniform"),
        torch.where(ratio >= th.broad, idx("broad"), torch.where(v["max_weight"] >= th.sparse, idx("sparse"), idx("mixed"))),
    )
    return torch.where(best_score >= 1.0, best, fallback).long()


def _column_focus(weights: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sentence and head: the largest mean column weight ``max_j mean_i a_ij`` and its key ``j``."""
    v = valid.float().to(weights.device)
    b, t = v.shape
    vq = v.reshape(b, 1, 1, t, 1)
    vk = v.reshape(b, 1, 1, 1, t)
    n = v.sum(-1).clamp_min(1.0).reshape(b, 1, 1, 1)
    col = (weights.float() * vq * vk).sum(-2) / n  # [B, L, H, T]
    share, key = col.max(-1)
    return share, key


def classify_heads(
    data: AttentionResult | Sequence[AttentionResult] | torch.Tensor | np.ndarray,
    valid: torch.Tensor | None = None,
    *,
    thresholds: PatternThresholds | None = None,
    which: str = "self",
    causal: bool | None = None,
    **overrides: float,
) -> pd.DataFrame:
    """Name each head's pattern: the chapter's table (diagonal, column, previous, next, uniform, sparse) plus
    ``broad`` and ``mixed``.

    Returns :func:`head_metrics`' table (one row per layer and head, metrics averaged over sentences)
    with ``column_share`` (mean over sentences of the largest mean column weight ``max_j mean_i a_ij``),
    ``column_target`` (the key receiving it, named by its special token, e.g. ``[SEP]``, or ``pos j``;
    the most frequent name over sentences), ``entropy_ratio`` (mean over sentences of ``entropy /
    max_entropy``; one-token sentences count as 1) and ``pattern``, one of :data:`PATTERN_CLASSES`:
    the positional/column class whose share is furthest above its threshold (share / threshold), else
    ``uniform``, ``broad`` or ``sparse`` by ``entropy_ratio``/``max_weight``, else ``mixed``. ``class``
    is ``pattern`` with the column's target appended (``column [SEP]``). Thresholds are
    :class:`PatternThresholds` (pass one, or override fields by keyword: ``previous=0.4``).
    """
    th = thresholds or PatternThresholds()
    if overrides:
        unknown = set(overrides) - set(PatternThresholds.__dataclass_fields__)
        if unknown:
            raise InputError(f"unknown threshold(s) {sorted(unknown)}; choose from {list(PatternThresholds.__dataclass_fields__)}")
        th = replace(th, **overrides)
    prep = _prepare(data, valid, which, causal, 0.3)
    m = prep["metrics"]
    share, key = _column_focus(prep["weights"], prep["valid"])
    ratio = torch.where(m["max_entropy"] > 0, m["entropy"] / m["max_entropy"].clamp_min(1e-12), torch.ones_like(m["entropy"]))
    values = {k: v.detach().cpu().numpy() for k, v in m.items()}
    values["column_share"] = share.cpu().numpy()
    values["entropy_ratio"] = ratio.cpu().numpy()
    names = list(METRICS) + ["column_share", "entropy_ratio"]
    df = _frame(values, names, prep["layer_ids"], prep["head_ids"], per_sentence=False)
    # the column's name: the most frequent over sentences, computed in pandas (no loop over heads)
    key_np = key.cpu().numpy()  # [B, L, H]
    if prep["names"] is not None:
        rows = np.arange(key_np.shape[0])[:, None, None]
        target = prep["names"][rows, key_np]
    else:
        target = np.char.add("pos ", key_np.astype(str)).astype(object)
    tgt = pd.DataFrame({"cell": np.tile(np.arange(key_np.shape[1] * key_np.shape[2]), key_np.shape[0]), "t": target.ravel()})
    df["column_target"] = tgt.groupby("cell")["t"].agg(lambda s: s.value_counts().index[0]).sort_index().to_numpy()
    pattern = np.array(PATTERN_CLASSES)[pattern_index({k: df[k].to_numpy() for k in _RULE_INPUTS}, th).numpy()]
    df["pattern"] = pattern
    df["class"] = np.where(df["pattern"] == "column", "column " + df["column_target"].astype(str), df["pattern"])
    return df


def head_table(
    result: AttentionResult | Sequence[AttentionResult],
    *,
    which: str = "self",
    thresholds: PatternThresholds | None = None,
) -> pd.DataFrame:
    """Every head's metrics and its pattern class: :func:`classify_heads` of one result or a list of them
    (the table ``hf-attn-inspect inspect --all-heads`` prints)."""
    return classify_heads(result, thresholds=thresholds, which=which)


_TABLE_COLUMNS = (
    "layer", "head", "class", "entropy", "max_entropy", "diagonal", "previous_token", "next_token",
    "first_token", "special_tokens", "punctuation", "max_weight", "column_share", "mean_distance",
)
_TABLE_HEADERS = {
    "max_entropy": "max_ent", "previous_token": "prev", "next_token": "next", "first_token": "first",
    "special_tokens": "special", "punctuation": "punct", "max_weight": "max_w", "column_share": "column",
    "mean_distance": "distance", "diagonal": "diag",
}


def format_head_table(df: pd.DataFrame, *, columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """A fixed-width text table of :func:`head_table` (one line per head; shares and nats with ``digits``
    decimals). ``columns`` picks the columns (default: class and the main metrics that are present)."""
    cols = [c for c in (columns or _TABLE_COLUMNS) if c in df.columns]
    if not cols:
        raise InputError("none of the requested columns is in the table")
    view = df[cols].rename(columns=_TABLE_HEADERS)
    floats = {c: (lambda x, d=digits: f"{x:.{d}f}") for c in view.columns if pd.api.types.is_float_dtype(view[c])}
    return view.to_string(index=False, formatters=floats, justify="right")


def analyze_attention_pattern(attention_weights: torch.Tensor | np.ndarray, threshold: float = 0.3) -> dict[str, Any]:
    """The chapter's analysis of one head's ``[T, T]`` weights, with the chapter's keys and meaning.

    ``diagonal_mean`` (mean ``a_ii``), ``first_token_mean`` (mean ``a_i0``), ``previous_token_mean``
    (mean ``a_i,i-1``), ``weight_std`` (std of all weights), ``sparsity`` (share of weights
    ``<= threshold``), ``mean_entropy``/``max_entropy`` (nats), and the booleans
    ``is_diagonal_dominant``, ``attends_to_first``, ``is_previous_dominant`` (mean above ``threshold``)
    and ``is_uniform`` (``weight_std < 0.1``). Computed by the same code as :func:`head_metrics`.
    """
    w = torch.as_tensor(np.asarray(attention_weights) if isinstance(attention_weights, np.ndarray) else attention_weights)
    if w.dim() != 2 or w.shape[0] != w.shape[1]:
        raise InputError(f"expected one head's [T, T] weights, got shape {tuple(w.shape)}")
    m = {k: float(v.reshape(-1)[0]) for k, v in sentence_metrics(w[None], sparsity_threshold=threshold).items()}
    return {
        "diagonal_mean": m["diagonal"],
        "is_diagonal_dominant": m["diagonal"] > threshold,
        "first_token_mean": m["first_token"],
        "attends_to_first": m["first_token"] > threshold,
        "previous_token_mean": m["previous_token"],
        "is_previous_dominant": m["previous_token"] > threshold,
        "weight_std": m["weight_std"],
        "is_uniform": m["weight_std"] < 0.1,
        "sparsity": m["sparsity"],
        "mean_entropy": m["entropy"],
        "max_entropy": m["max_entropy"],
    }


def format_attention_analysis(analysis: dict[str, Any], title: str = "ATTENTION PATTERN ANALYSIS") -> str:
    """The chapter's report of :func:`analyze_attention_pattern` as text."""
    yes = lambda flag: "yes" if flag else "no"  # noqa: E731
    a = analysis
    lines = [
        "=" * 50,
        title,
        "=" * 50,
        "Diagonal (self) attention:",
        f"  mean diagonal weight: {a['diagonal_mean']:.3f}   dominant: {yes(a['is_diagonal_dominant'])}",
        "First token attention:",
        f"  mean attention to first: {a['first_token_mean']:.3f}   attends to first: {yes(a['attends_to_first'])}",
        "Previous token attention:",
        f"  mean previous attention: {a['previous_token_mean']:.3f}   dominant: {yes(a['is_previous_dominant'])}",
        "Distribution:",
        f"  weight std: {a['weight_std']:.3f}   uniform: {yes(a['is_uniform'])}",
        f"  sparsity: {a['sparsity']:.1%}",
        f"  mean entropy: {a['mean_entropy']:.3f} / {a['max_entropy']:.3f} nats",
        "=" * 50,
    ]
    return "\n".join(lines)


def print_attention_analysis(analysis: dict[str, Any], file: TextIO | None = None) -> None:
    """Print :func:`format_attention_analysis` (the chapter's function; only called when asked)."""
    print(format_attention_analysis(analysis), file=file or sys.stdout)


# ---------------------------------------------------------------------------------------------- detectors
DETECTOR_KINDS = ("previous_token", "duplicate_token", "induction")


def repeated_random_tokens(
    vocab: Sequence[int] | int,
    *,
    seq_len: int = 20,
    repeats: int = 2,
    num_sequences: int = 16,
    seed: int = 0,
    bos: int | None = None,
) -> torch.Tensor:
    """``[num_sequences, (1 if bos) + seq_len * repeats]`` token ids: a random block repeated ``repeats`` times.

    Each block draws ``seq_len`` distinct ids from ``vocab`` (a list of ids, or ``range(vocab)``) with a
    :class:`torch.Generator` seeded by ``seed``, so a token occurs exactly once per block. ``bos``, when
    given, is prepended at position 0.
    """
    ids = torch.as_tensor(list(range(vocab)) if isinstance(vocab, int) else list(vocab), dtype=torch.long)
    if seq_len > ids.numel():
        raise InputError(f"seq_len {seq_len} is larger than the {ids.numel()} usable token ids")
    if seq_len < 2 or repeats < 2 or num_sequences < 1:
        raise InputError("need seq_len >= 2, repeats >= 2 and at least one sequence")
    gen = torch.Generator().manual_seed(seed)
    blocks = torch.stack([ids[torch.randperm(ids.numel(), generator=gen)[:seq_len]] for _ in range(num_sequences)])
    seqs = blocks.repeat(1, repeats)
    if bos is not None:
        seqs = torch.cat([torch.full((num_sequences, 1), int(bos), dtype=torch.long), seqs], 1)
    return seqs


def pattern_mask(tokens: torch.Tensor, kind: str, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keys [B, T, T], rows [B, T])`` for a detector: which keys ``j`` of query ``i`` form the pattern, and
    which query rows are scored (those with at least one pattern key, at positions ``>= start``).

    ``previous_token``: ``j = i - 1`` (rows ``i >= start + 1``, so a BOS at ``start - 1`` is never the
    previous token); ``duplicate_token``: ``j < i`` with ``token[j] == token[i]``; ``induction``:
    ``start + 1 <= j <= i`` with ``token[j-1] == token[i]`` (the token after an earlier copy of the
    current token).
    """
    if kind not in DETECTOR_KINDS:
        raise InputError(f"unknown detector '{kind}'; choose one of {', '.join(DETECTOR_KINDS)}")
    b, t = tokens.shape
    i = torch.arange(t)[:, None]
    j = torch.arange(t)[None, :]
    pos_ok = (torch.arange(t) >= start)[None, :]
    if kind == "previous_token":
        keys = ((j == i - 1) & (j >= start)).expand(b, t, t)
    elif kind == "duplicate_token":
        same = tokens[:, :, None] == tokens[:, None, :]
        keys = same & (j < i) & (j >= start)
    else:
        prev = torch.cat([torch.full((b, 1), -1, dtype=tokens.dtype), tokens[:, :-1]], 1)  # token[j-1]
        same = tokens[:, :, None] == prev[:, None, :]
        keys = same & (j <= i) & (j >= start + 1)
    rows = keys.any(-1) & pos_ok
    return keys, rows


class _DetectorProbe(Probe):
    """Accumulates, per layer and head, the attention share on the pattern keys over the scored rows."""

    def __init__(self, keys: torch.Tensor, rows: torch.Tensor, stack: str) -> None:
        self.keys = keys.float()
        self.rows = rows.float()
        self.stack = stack
        self.scores: dict[int, torch.Tensor] = {}

    def record(self, site: Site, weights: torch.Tensor) -> None:
        if site.stack != self.stack:
            return
        keys = self.keys.to(weights.device)
        rows = self.rows.to(weights.device)
        share = (weights.float() * keys[:, None]).sum(-1)  # [B, H, T]
        self.scores[site.layer] = ((share * rows[:, None]).sum((0, 2)) / rows.sum().clamp_min(1.0)).cpu()


def detect_heads(
    inspector: Any,
    kind: str,
    *,
    seq_len: int = 20,
    num_sequences: int = 16,
    seed: int = 0,
    tokens: torch.Tensor | None = None,
    bos: int | None | str = "auto",
) -> pd.DataFrame:
    """Score every head as a previous-token, duplicate-token or induction head: DataFrame ``layer, head, score``.

    ``score`` is the share of each scored query's attention that falls on the pattern's keys (see
    :func:`pattern_mask`), averaged over the scored rows of all sequences: 1 means every scored query
    puts all its weight on the pattern, and a head spreading its weight evenly over ``i + 1`` causal keys
    scores about ``1 / (i + 1)``. Inputs are ``num_sequences`` blocks of ``seq_len`` distinct random
    token ids repeated twice (:func:`repeated_random_tokens`, seeded by ``seed``), drawn from the
    model's vocabulary without the tokenizer's special tokens, or your own ``tokens [B, T]``. BOS
    handling: with ``bos="auto"`` the tokenizer's BOS (else CLS, else the config's ``bos_token_id``) is
    prepended at position 0 because decoders are trained with it and park attention there; it is never
    a scored query nor a pattern key (so weight parked on BOS lowers the score). ``bos=None`` prepends
    nothing. Encoder-decoder models are scored on their decoder self-attention.
    """
    if kind not in DETECTOR_KINDS:
        raise InputError(f"unknown detector '{kind}'; choose one of {', '.join(DETECTOR_KINDS)}")
    from ..capture.inspector import Batch

    model = inspector.model
    tok = getattr(inspector, "tokenizer", None)
    if bos == "auto":
        bos = None
        for source, attr in ((tok, "bos_token_id"), (tok, "cls_token_id"), (model.config, "bos_token_id")):
            value = getattr(source, attr, None) if source is not None else None
            if isinstance(value, int):
                bos = value
                break
    if tokens is None:
        size = model.get_input_embeddings().num_embeddings
        if tok is not None:
            size = min(size, len(tok))
        special = set(getattr(tok, "all_special_ids", []) or []) | ({bos} if bos is not None else set())
        vocab = [i for i in range(size) if i not in special]
        tokens = repeated_random_tokens(vocab, seq_len=seq_len, num_sequences=num_sequences, seed=seed, bos=bos)
        start = 0 if bos is None else 1
    else:
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        if tokens.dim() != 2:
            raise InputError(f"tokens must be [sequences, length], got {tuple(tokens.shape)}")
        start = 1 if bos is not None and bool((tokens[:, 0] == bos).all()) else 0
    keys, rows = pattern_mask(tokens, kind, start)
    enc_dec = bool(getattr(model.config, "is_encoder_decoder", False))
    inputs = {"input_ids": tokens, "attention_mask": torch.ones_like(tokens)}
    if enc_dec:
        inputs["decoder_input_ids"] = tokens
        inputs["decoder_attention_mask"] = torch.ones_like(tokens)
    lengths = [tokens.shape[1]] * tokens.shape[0]
    batch = Batch(inputs=inputs, encoding=None, lengths=lengths, texts=[], pairs=None, truncated=[False] * len(lengths))
    probe = _DetectorProbe(keys, rows, "decoder" if enc_dec else "self")
    inspector.run(batch, probe)
    if not probe.scores:
        raise CaptureError(f"no attention was captured from {type(model).__name__}")
    layers = sorted(probe.scores)
    scores = torch.stack([probe.scores[l] for l in layers]).numpy()  # [L, H]
    l, h = np.meshgrid(layers, np.arange(scores.shape[1]), indexing="ij")
    return pd.DataFrame({"layer": l.ravel(), "head": h.ravel(), "score": scores.ravel()})
