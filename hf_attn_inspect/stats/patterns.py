"""Attention pattern classes: the rule that names a head ``previous``, ``column``, ``uniform``...

One rule, :func:`pattern_index`, with its thresholds in :class:`PatternThresholds` (Clark et al. 2019),
applied to metric values of any shape: per head averaged over sentences by :func:`classify_heads` (and
:func:`head_table`, the table ``hf-attn-inspect inspect --all-heads`` prints), per (sentence, layer, head)
by :func:`classify_sentence_heads` in the dataset engine. The classes are :data:`PATTERN_CLASSES`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..capture.result import AttentionResult
from ..core.errors import InputError
from ..core.stacks import stack_aliases
from .metrics import HEAD_METRICS, column_share, entropy_ratio
from .tables import HeadData, head_frame, head_weights

__all__ = [
    "PatternThresholds",
    "PATTERN_CLASSES",
    "pattern_index",
    "classify_sentence_heads",
    "classify_heads",
    "name_patterns",
    "head_table",
    "describe_pattern",
]


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


#: The pattern classes, in the order of the indices :func:`pattern_index` returns.
PATTERN_CLASSES = ("previous", "next", "diagonal", "column", "uniform", "broad", "sparse", "mixed")
_RULE_INPUTS = ("previous_token", "next_token", "diagonal", "column_share", "entropy", "max_entropy", "max_weight")


def pattern_index(
    values: Mapping[str, torch.Tensor | np.ndarray], thresholds: PatternThresholds | None = None
) -> torch.Tensor:
    """Index into :data:`PATTERN_CLASSES` of each head, from its metric values (tensors of one shape).

    ``values`` needs ``previous_token``, ``next_token``, ``diagonal``, ``column_share`` (the largest mean
    column weight ``max_j mean_i a_ij``; ``special_tokens`` stands in when absent), ``entropy``,
    ``max_entropy`` and ``max_weight``; any shape works (per sentence ``[B, L, H]`` in the dataset
    engine, averaged per head in :func:`classify_heads`). The rule: among previous/next/diagonal/column,
    the one whose share is furthest above its threshold (share / threshold >= 1; first in that order on
    ties); otherwise ``uniform`` when entropy >= ``uniform`` x max entropy, ``broad`` when >= ``broad`` x,
    ``sparse`` when the mean row maximum >= ``sparse``, else ``mixed``. One-token rows (max entropy 0)
    count as entropy ratio 1 (:func:`~hf_attn_inspect.stats.metrics.entropy_ratio`).
    """
    th = thresholds or PatternThresholds()
    v = {k: x.float() if torch.is_tensor(x) else torch.tensor(np.asarray(x, dtype=np.float32)) for k, x in values.items()}
    column = v.get("column_share", v.get("special_tokens"))
    scores = torch.stack([v["previous_token"] / th.previous, v["next_token"] / th.next,
                          v["diagonal"] / th.diagonal, column / th.column], -1)
    best_score, best = scores.max(-1)
    ratio = entropy_ratio(v["entropy"], v["max_entropy"])
    idx = PATTERN_CLASSES.index
    fallback = torch.where(
        ratio >= th.uniform, idx("uniform"),
        torch.where(ratio >= th.broad, idx("broad"), torch.where(v["max_weight"] >= th.sparse, idx("sparse"), idx("mixed"))),
    )
    return torch.where(best_score >= 1.0, best, fallback).long()


def classify_sentence_heads(
    values: Mapping[str, torch.Tensor], thresholds: Mapping[str, float] | None = None
) -> tuple[tuple[str, ...], torch.Tensor]:
    """Pattern class of every (sentence, layer, head) from its per-sentence metrics.

    ``values`` maps metric names to tensors of one shape (e.g. ``[batch, layers, heads]``); the rule and
    its inputs are :func:`pattern_index` (Clark et al. 2019 thresholds, :class:`PatternThresholds`;
    override fields with ``thresholds``, a ``{field: value}`` mapping). Returns ``(class names, index
    tensor)`` of that shape; the dataset engine counts, per head, the share of sentences in each class.
    """
    th = PatternThresholds(**(thresholds or {}))
    return PATTERN_CLASSES, pattern_index(values, th)


def classify_heads(
    data: HeadData,
    valid: torch.Tensor | None = None,
    *,
    thresholds: PatternThresholds | None = None,
    which: str = "self",
    causal: bool | None = None,
    **overrides: float,
) -> pd.DataFrame:
    """Name each head's pattern: the chapter's table (diagonal, column, previous, next, uniform, sparse) plus
    ``broad`` and ``mixed``.

    Returns :func:`~hf_attn_inspect.stats.tables.head_metrics`' table (one row per layer and head, metrics
    averaged over sentences) with ``column_share`` (mean over sentences of the largest mean column weight
    ``max_j mean_i a_ij``, :func:`~hf_attn_inspect.stats.metrics.column_share`), ``column_target`` (the key
    receiving it, named by its special token, e.g. ``[SEP]``, or ``pos j``; the most frequent name over
    sentences), ``entropy_ratio`` (mean over sentences of ``entropy / max_entropy``; one-token sentences
    count as 1) and ``pattern``, one of :data:`PATTERN_CLASSES`: the positional/column class whose share
    is furthest above its threshold (share / threshold), else ``uniform``, ``broad`` or ``sparse`` by
    ``entropy_ratio``/``max_weight``, else ``mixed``. ``class`` is ``pattern`` with the column's target
    appended (``column [SEP]``). Thresholds are :class:`PatternThresholds` (pass one, or override fields by
    keyword: ``previous=0.4``).
    """
    th = thresholds or PatternThresholds()
    if overrides:
        unknown = set(overrides) - set(PatternThresholds.__dataclass_fields__)
        if unknown:
            raise InputError(f"unknown threshold(s) {sorted(unknown)}; choose from {list(PatternThresholds.__dataclass_fields__)}")
        th = replace(th, **overrides)
    prep = head_weights(data, valid, which=which, causal=causal, sparsity_threshold=0.3)
    m = prep.metrics
    share, key = column_share(prep.weights, prep.valid)
    ratio = entropy_ratio(m["entropy"], m["max_entropy"])
    values = {k: v.detach().cpu().numpy() for k, v in m.items()}
    values["column_share"] = share.cpu().numpy()
    values["entropy_ratio"] = ratio.cpu().numpy()
    names = [*HEAD_METRICS, "entropy_ratio"]
    df = head_frame(values, names, prep.layer_ids, prep.head_ids, per_sentence=False)
    # the column's name: the most frequent over sentences, computed in pandas (no loop over heads)
    key_np = key.cpu().numpy()  # [B, L, H]
    if prep.key_names is not None:
        rows = np.arange(key_np.shape[0])[:, None, None]
        target = prep.key_names[rows, key_np]
    else:
        target = np.char.add("pos ", key_np.astype(str)).astype(object)
    tgt = pd.DataFrame({"cell": np.tile(np.arange(key_np.shape[1] * key_np.shape[2]), key_np.shape[0]), "t": target.ravel()})
    df["column_target"] = tgt.groupby("cell")["t"].agg(lambda s: s.value_counts().index[0]).sort_index().to_numpy()
    return name_patterns(df, th)


def name_patterns(df: pd.DataFrame, thresholds: PatternThresholds | None = None) -> pd.DataFrame:
    """Add ``pattern`` (one of :data:`PATTERN_CLASSES`, :func:`pattern_index`'s rule) and ``class`` (``pattern``
    with the column's target appended, ``column [SEP]``) to a per-head table that has the rule's inputs
    (``previous_token``, ``next_token``, ``diagonal``, ``column_share``, ``entropy``, ``max_entropy``,
    ``max_weight``) and ``column_target``; returns the table. Used by :func:`classify_heads` and by the
    long-input capture, whose metrics come from statistics instead of stored weights."""
    th = thresholds or PatternThresholds()
    pattern = np.array(PATTERN_CLASSES)[pattern_index({k: df[k].to_numpy() for k in _RULE_INPUTS}, th).numpy()]
    df["pattern"] = pattern
    df["class"] = np.where(df["pattern"] == "column", "column " + df["column_target"].astype(str), df["pattern"])
    return df


def head_table(
    result: AttentionResult | Sequence[AttentionResult],
    *,
    which: str = "self",
    thresholds: PatternThresholds | None = None,
    importance: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Every head's metrics and its pattern class: :func:`classify_heads` of one result or a list of them
    (the table ``hf-attn-inspect inspect --all-heads`` prints; format it with
    :func:`~hf_attn_inspect.stats.tables.format_head_table`). ``importance`` (a
    :func:`~hf_attn_inspect.runs.importance.head_importance` table) adds its ``importance`` and
    ``importance_rank`` columns for the same stack, matched by layer and head. Results of images add the mean
    attention distance of :func:`~hf_attn_inspect.stats.vision.distance_table` (``attention_distance_px``,
    ``attention_distance_patches``, ``to_class``...)."""
    df = classify_heads(result, thresholds=thresholds, which=which)
    images = [result] if isinstance(result, AttentionResult) else list(result)
    if images and all(isinstance(r, AttentionResult) and r.grid is not None for r in images):
        from .vision import distance_table

        df = df.merge(distance_table(images), on=["layer", "head"], how="left")
    if importance is not None:
        if not isinstance(importance, pd.DataFrame) or not {"layer", "head", "importance"} <= set(importance.columns):
            raise InputError("importance must be a head_importance table (columns layer, head, importance)")
        imp = importance
        if "stack" in imp.columns:
            imp = imp[imp["stack"].isin(stack_aliases(which))]
        cols = ["layer", "head", "importance"] + (["rank"] if "rank" in imp.columns else [])
        df = df.merge(imp[cols].rename(columns={"rank": "importance_rank"}), on=["layer", "head"], how="left")
    return df


def describe_pattern(row: Mapping[str, object], thresholds: PatternThresholds | None = None) -> str:
    """One sentence saying why a head got its class: ``row`` is one row of :func:`classify_heads` /
    :func:`head_table` (a ``pandas.Series`` or a dict with ``pattern``, ``column_target``, the rule's
    metrics and ``entropy_ratio``).

    The sentence names the deciding number and its threshold (:class:`PatternThresholds`), e.g.
    ``broad (entropy 0.86 of its maximum; broad from 0.78, uniform from 0.95)`` or
    ``column (0.62 of its attention on one key, [SEP]; threshold 0.6)``; shares are of each query row's
    attention, averaged over rows.
    """
    th = thresholds or PatternThresholds()
    cls = str(row["pattern"])
    ratio = float(row["entropy_ratio"])
    entropy = f"entropy {ratio:.2f} of its maximum"
    if cls in ("previous", "next", "diagonal"):
        key = {"previous": "previous_token", "next": "next_token", "diagonal": "diagonal"}[cls]
        where = {"previous": "the previous token", "next": "the next token", "diagonal": "the token itself"}[cls]
        return f"{cls} ({float(row[key]):.2f} of its attention on {where}; threshold {getattr(th, cls)})"
    if cls == "column":
        return (f"column ({float(row['column_share']):.2f} of its attention on one key, {row['column_target']}; "
                f"threshold {th.column})")
    if cls == "uniform":
        return f"uniform ({entropy}; uniform from {th.uniform}: close to averaging all tokens)"
    if cls == "broad":
        return f"broad ({entropy}; broad from {th.broad}, uniform from {th.uniform})"
    if cls == "sparse":
        return (f"sparse (mean row maximum {float(row['max_weight']):.2f}, threshold {th.sparse}, on keys that "
                f"change from row to row; {entropy})")
    shares = {"previous token": "previous_token", "next token": "next_token", "itself": "diagonal",
              "one key": "column_share"}
    name, key = max(shares.items(), key=lambda kv: float(row[kv[1]]))
    return (f"mixed (no rule applies: largest share {float(row[key]):.2f} on {name}, {entropy}, "
            f"mean row maximum {float(row['max_weight']):.2f})")
