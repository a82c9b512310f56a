"""Pruning curves (Michel et al. 2019): heads removed in increasing order of importance, the objective after each step."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pandas as pd
import torch

from ...capture.ablation import ABLATIONS, HeadKey, UnitKey
from ...capture.inspector import AttentionInspector
from ...core.errors import InputError
from ..data import DataOptions, DataSpec
from ..sources import DatasetSource
from .ablation import dataset_means, groups_over_data
from .data import load_scored_data
from .engine import head_importance
from .objectives import Objective, ObjectiveFn

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["pruning_curve"]


def _order(importance: pd.DataFrame) -> list[HeadKey]:
    """Heads from least to most important (ties: stack, layer, head order)."""
    df = importance.copy()
    if "stack" not in df.columns:
        df["stack"] = "self"
    df = df.sort_values(["importance", "stack", "layer", "head"], kind="stable")
    return [(str(s), int(l), int(h)) for s, l, h in zip(df["stack"], df["layer"], df["head"])]


def pruning_curve(
    inspector: AttentionInspector,
    data: DataSpec | DatasetSource | torch.Tensor = None,
    importance: pd.DataFrame | None = None,
    *,
    step: float = 0.1,
    how: str = "zero",
    reestimate: bool = False,
    method: str = "ablation",
    objective: Objective | ObjectiveFn | None = None,
    means: dict[UnitKey, torch.Tensor] | None = None,
    copies_tokens: int | None = None,
    seed: int = 0,
    progress: bool = False,
    **shortcuts: Unpack[DataOptions],
) -> pd.DataFrame:
    """Remove heads in increasing order of importance, ``step`` (a fraction of all heads) at a time, and
    measure the objective after each step (Michel et al. 2019's pruning curves), over ``data`` (a
    :class:`~hf_attn_inspect.runs.data.DataSpec` or its source with the shortcut keywords, as
    :func:`head_importance`; the steps run in one pass over the rows, ``shard_size`` only applies to the
    importance computed here).

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
    src, obj = load_scored_data(inspector, data, shortcuts, objective, seed)
    spec = src.spec
    common = dict(objective=obj, seed=seed, copies_tokens=copies_tokens)
    if how == "mean" and means is None:
        means = dataset_means(inspector, src, progress)
    use_means = means if how == "mean" else None
    if importance is None:
        importance = head_importance(inspector, spec, method=method, how=how, means=use_means, **common)
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
                imp = head_importance(inspector, spec, method=method, how=how, means=use_means, ablated=removed, **common)
                keep = {(s, l, h) for s, l, h in removed}
                rest = [hk for hk in _order(imp) if hk not in keep]
            else:
                rest = [hk for hk in order if hk not in set(removed)]
            removed = removed + rest[: k - len(removed)]
            groups.append(list(removed))
    total, names = groups_over_data(inspector, src, obj, groups, use_means, copies_tokens, progress, "pruning curve")
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
