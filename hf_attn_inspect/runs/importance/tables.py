"""The ``head_importance`` table of an importance run, and the CSV files of the tables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ...capture.ablation import UnitKey
from ...core.files import atomic_write
from ..sharded import ShardStats

if TYPE_CHECKING:
    from .objectives import Objective

__all__ = ["write_importance_tables"]


def importance_frame(total: ShardStats, units: list[tuple[UnitKey, int]], obj: Objective, method: str, how: str) -> pd.DataFrame:
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
