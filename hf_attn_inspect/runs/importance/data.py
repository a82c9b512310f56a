"""The rows head importance scores (a dataset with optional labels, or token ids) and their batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Mapping

import numpy as np
import torch

from ...capture.inputs import Batch
from ...capture.inspector import AttentionInspector
from ...core.errors import InputError
from ..data import DataSpec, sorted_batches
from ..sharded import clean_rows_indexed
from ..sources import DatasetSource
from .objectives import Objective, ObjectiveFn, resolve_objective

if TYPE_CHECKING:
    from datasets import Dataset

#: Sentences per batch of the importance engines when neither ``batch_size`` nor the :class:`DataSpec` says.
BATCH_SIZE = 32


@dataclass
class ImportanceData:
    """The rows to score (``spec``, loaded): a dataset with its text column(s) and optional labels, or a tensor
    of token ids."""

    spec: DataSpec
    ds: "Dataset | None"
    ids: torch.Tensor | None
    columns: tuple[str, ...]
    label_column: str | None
    info: dict[str, object]

    @property
    def rows(self) -> int:
        return int(self.ids.shape[0]) if self.ids is not None else int(self.ds.num_rows)  # type: ignore[union-attr]


def load_importance_data(spec: DataSpec) -> ImportanceData:
    """Load ``spec`` (its ``source`` may also be a ``[sentences, tokens]`` tensor of token ids); streams are refused
    (the importance engines read labels and row counts by row index)."""
    data = spec.source
    if torch.is_tensor(data):
        ids = data.long()
        if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] < 2:
            raise InputError("token ids must be a [sentences, tokens] tensor with at least 2 tokens per sentence")
        if spec.limit is not None:
            ids = ids[: int(spec.limit)]
        return ImportanceData(spec, None, ids, ("input_ids",), None, {"source": "token ids", "num_rows": int(ids.shape[0]),
                                                             "tokens": int(ids.shape[1])})
    if spec.streaming:
        raise InputError("head importance reads a dataset, not a stream; leave streaming off")
    loaded = spec.load()
    info = loaded.info
    return ImportanceData(spec, loaded.ds, None, info.columns, spec.label_column,
                 {**info.to_dict(), "label_column": spec.label_column})


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


def shard_batches(inspector: AttentionInspector, data: ImportanceData, start: int, stop: int,
                   skipped: dict[str, int] | None = None) -> Iterator[tuple[Batch, list[int]]]:
    """Batches of rows ``start:stop`` (:func:`~hf_attn_inspect.runs.data.sorted_batches` of the spec's batch size
    and maximum length; labels in ``inputs["labels"]`` when the data has them) with their dataset row indices;
    ``skipped`` receives the counts of rows left out (empty or non-string texts)."""
    batch_size = data.spec.batch_size
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
    for sel, batch in sorted_batches(inspector, texts, pairs, batch_size=batch_size, max_length=data.spec.max_length):
        if labels is not None:
            batch.inputs["labels"] = labels[sel]
        yield batch, [kept[i] for i in sel]


def load_scored_data(
    inspector: AttentionInspector,
    data: "DataSpec | DatasetSource | torch.Tensor",
    shortcuts: Mapping[str, object],
    objective: Objective | ObjectiveFn | None,
    seed: int,
) -> tuple[ImportanceData, Objective]:
    """The rows an importance engine scores and the objective it scores them with: ``data`` is a
    :class:`~hf_attn_inspect.runs.data.DataSpec`, or its source with the shortcut keywords ``shortcuts``
    (:meth:`DataSpec.build <hf_attn_inspect.runs.data.DataSpec.build>`, batch size :data:`BATCH_SIZE` by
    default), loaded by :func:`load_importance_data` (its spec is ``data.spec``); the objective follows the model
    and whether the spec names a label column (:func:`~hf_attn_inspect.runs.importance.objectives.resolve_objective`,
    ``seed`` for the masked-LM masking)."""
    src = load_importance_data(DataSpec.build(data, default_batch_size=BATCH_SIZE, **shortcuts))
    return src, resolve_objective(inspector, objective, src.label_column is not None, seed)
