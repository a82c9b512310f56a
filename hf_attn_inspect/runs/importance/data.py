"""The rows head importance scores (a dataset with optional labels, or token ids) and their batches."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch

from ...capture.inputs import Batch
from ...capture.inspector import AttentionInspector
from ...core.errors import InputError
from ..sharded import clean_rows_indexed
from ..sources import DatasetSource, load_dataset_texts

if TYPE_CHECKING:
    from datasets import Dataset


@dataclass
class _Data:
    """The rows to score: a dataset with its text column(s) and optional labels, or a tensor of token ids."""

    ds: "Dataset | None"
    ids: torch.Tensor | None
    columns: tuple[str, ...]
    label_column: str | None
    info: dict[str, object]

    @property
    def rows(self) -> int:
        return int(self.ids.shape[0]) if self.ids is not None else int(self.ds.num_rows)  # type: ignore[union-attr]


def _load(data: DatasetSource | torch.Tensor, column: str | Sequence[str], label_column: str | None,
          config: str | None, split: str | None, limit: int | None) -> _Data:
    if torch.is_tensor(data):
        ids = data.long()
        if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] < 2:
            raise InputError("token ids must be a [sentences, tokens] tensor with at least 2 tokens per sentence")
        if limit is not None:
            ids = ids[: int(limit)]
        return _Data(None, ids, ("input_ids",), None, {"source": "token ids", "num_rows": int(ids.shape[0]),
                                                       "tokens": int(ids.shape[1])})
    ds, info = load_dataset_texts(data, config=config, split=split, column=column, limit=limit)
    if label_column is not None and label_column not in ds.column_names:
        raise InputError(f"label column {label_column!r} not found; available columns: {', '.join(ds.column_names)}")
    return _Data(ds, None, info.columns, label_column, {**info.to_dict(), "label_column": label_column})


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


def _shard_batches(inspector: AttentionInspector, data: _Data, start: int, stop: int, batch_size: int,
                   max_length: int | None, skipped: dict[str, int] | None = None) -> Iterator[tuple[Batch, list[int]]]:
    """Length-sorted batches of rows ``start:stop`` (labels in ``inputs["labels"]`` when the data has them);
    ``skipped`` receives the counts of rows left out (empty or non-string texts)."""
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
    tok_args = {"text": texts} if pairs is None else {"text": texts, "text_pair": pairs}
    lengths = torch.tensor([len(x) for x in inspector.tokenizer(**tok_args)["input_ids"]])
    order = torch.sort(lengths, stable=True).indices
    for b0 in range(0, len(texts), batch_size):
        sel = order[b0:b0 + batch_size].tolist()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            batch = inspector.encode([texts[i] for i in sel], None if pairs is None else [pairs[i] for i in sel],
                                     max_length=max_length, truncation=True)
        if labels is not None:
            batch.inputs["labels"] = labels[sel]
        yield batch, [kept[i] for i in sel]
