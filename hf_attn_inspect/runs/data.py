"""What an engine reads and how it cuts it into batches: one :class:`DataSpec` and one batch iterator.

The dataset engines (:func:`~hf_attn_inspect.runs.dataset.analyze_dataset`,
:func:`~hf_attn_inspect.runs.compare.compare_models`) take the same data options: where the texts come
from (``source``, ``config``, ``split``, ``streaming``), which columns hold them (``column``: one text
column or ``"text,pair"``; ``label_column``), how many rows (``limit``), and how they are cut (``batch_size``,
``max_length``, ``shard_size``). A :class:`DataSpec` holds them once; the engines' old keywords stay as
shortcuts that build one (:meth:`DataSpec.build`).

Inside a shard, :func:`sorted_batches` is the one length-sorted batch loop: texts are sorted by their
token length (stable, so equal lengths keep dataset order) and encoded ``batch_size`` at a time, each
batch padded only to its own longest text, so memory depends on the batch and not on the shard.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Iterator, Sequence, TypedDict, Union

from ..core.errors import InputError
from .sources import DatasetInfo, DatasetSource, StreamRows, load_dataset_texts, parse_columns

if TYPE_CHECKING:  # datasets is imported by load_dataset_texts, torch by the batch loop; only types are needed here
    from datasets import Dataset, IterableDataset

    from ..capture.inputs import Batch
    from ..capture.inspector import AttentionInspector

__all__ = ["DataOptions", "DataSpec", "LoadedData", "encode_rows", "sorted_batches"]

#: What an engine reads rows from: a :class:`datasets.Dataset`, or a stream read forward by row range.
Rows = Union["Dataset", StreamRows]


class DataOptions(TypedDict, total=False):
    """The data keywords an engine takes as shortcuts for a :class:`DataSpec` (``**shortcuts:
    Unpack[DataOptions]``): the spec's fields besides ``source``, same meaning and defaults."""

    column: str | Sequence[str]
    label_column: str | None
    config: str | None
    split: str | None
    limit: int | None
    streaming: bool
    batch_size: int | None
    max_length: int | None
    shard_size: int


@dataclass(frozen=True)
class DataSpec:
    """The data an engine reads and how it cuts it into shards and batches.

    ``source`` is anything :func:`~hf_attn_inspect.runs.sources.load_dataset_texts` reads (a
    ``datasets.Dataset``, a list of texts or ``(text, pair)`` tuples, a local file or folder, a Hub name,
    None for the shipped sample), with ``config``/``split``; ``column`` is the text column or two columns
    ``"text,pair"`` (a sentence pair), ``label_column`` a column of labels (engines that use them);
    ``limit`` keeps the first rows, ``streaming`` reads the source as a stream. Rows are read
    ``shard_size`` at a time and run ``batch_size`` at a time (None: the engine's default), texts cut
    to ``max_length`` tokens (None: the model's maximum).
    """

    source: DatasetSource = None
    column: str | Sequence[str] = "text"
    label_column: str | None = None
    config: str | None = None
    split: str | None = None
    limit: int | None = None
    streaming: bool = False
    batch_size: int | None = None
    max_length: int | None = None
    shard_size: int = 2048

    @classmethod
    def build(cls, source: "DataSpec | DatasetSource" = None, *, data: "DataSpec | None" = None,
              default_batch_size: int, **shortcuts: object) -> "DataSpec":
        """The spec an engine runs: ``data`` (or ``source`` when it is a :class:`DataSpec`), else one built
        from ``source`` and the engine's data keywords ``shortcuts`` (field names of this class), with
        ``default_batch_size`` when it gives none (:meth:`sized`).

        With a :class:`DataSpec`, every shortcut must still be at its default (the options are given once);
        a shortcut that is not, or a ``source`` besides ``data``, raises :class:`InputError` naming it; a
        keyword that is no field raises :class:`TypeError`, as an unknown keyword argument does.
        """
        defaults = {f.name: f.default for f in fields(cls) if f.name != "source"}
        unknown = [k for k in shortcuts if k not in defaults]
        if unknown:
            raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
        if data is not None:
            if source is not None:
                raise InputError("give the data once: as data= or as the dataset argument, not both")
            source = data
        if not isinstance(source, DataSpec):
            return cls(source=source, **shortcuts).sized(default_batch_size)  # type: ignore[arg-type]
        given = [k for k, v in shortcuts.items() if not _same(v, defaults[k])]
        if given:
            raise InputError(f"give the data options once: in the DataSpec or as keywords, not both ({', '.join(given)})")
        return source.sized(default_batch_size)

    @property
    def columns(self) -> tuple[str, ...]:
        """The text column, or the two columns of a sentence pair."""
        return parse_columns(self.column)

    def sized(self, batch_size: int) -> "DataSpec":
        """This spec with ``batch_size`` filled in when it is None (the engine's default), sizes checked."""
        spec = self if self.batch_size is not None else replace(self, batch_size=batch_size)
        if spec.batch_size < 1 or spec.shard_size < 1:
            raise InputError("batch size and shard size must be at least 1")
        return spec

    def load(self) -> "LoadedData":
        """Load the source and check its text column(s) (:func:`~hf_attn_inspect.runs.sources.load_dataset_texts`)
        and its ``label_column`` (:class:`InputError` naming the columns there are)."""
        ds, info = load_dataset_texts(self.source, config=self.config, split=self.split, column=self.column,
                                      limit=self.limit, streaming=self.streaming)
        names = getattr(ds, "column_names", None)
        if self.label_column is not None and names is not None and self.label_column not in names:
            raise InputError(f"label column {self.label_column!r} not found; available columns: {', '.join(names)}")
        return LoadedData(ds, info)


def _same(a: object, b: object) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - e.g. array-like values: never equal to a default
        return False


@dataclass
class LoadedData:
    """A loaded :class:`DataSpec`: the dataset (or stream) ``ds`` and what was loaded (``info``)."""

    ds: "Dataset | IterableDataset"
    info: DatasetInfo

    @property
    def num_rows(self) -> int | None:
        """Rows to read, None for a stream (not counted in advance)."""
        return None if self.info.streaming else int(self.ds.num_rows)

    def rows(self) -> Rows:
        """A fresh row reader: the dataset itself, or a new :class:`StreamRows` of a stream (read from its start)."""
        return StreamRows(self.ds, self.info.columns) if self.info.streaming else self.ds


def encode_rows(
    inspector: AttentionInspector,
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    rows: Sequence[int],
    max_length: int | None,
) -> Batch:
    """The texts ``rows`` (indices into ``texts``/``pairs``) as one batch of ``inspector``, truncated to
    ``max_length`` without a warning per text (the engines count truncation: ``batch.truncated``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return inspector.encode([texts[i] for i in rows], None if pairs is None else [pairs[i] for i in rows],
                                max_length=max_length, truncation=True)


def sorted_batches(
    inspector: AttentionInspector,
    texts: Sequence[str],
    pairs: Sequence[str] | None = None,
    *,
    batch_size: int,
    max_length: int | None = None,
    kept_length: bool = False,
) -> Iterator[tuple[list[int], Batch]]:
    """Yield ``(rows, batch)``: ``texts`` (and ``pairs``) in length-sorted batches of at most ``batch_size``.

    ``rows`` are the indices into ``texts`` of the batch's sentences, in batch order; ``batch`` is their
    :func:`encode_rows` (right-padded to the batch's longest text, truncated to ``max_length``, default the
    model's maximum). Texts are sorted stably (equal lengths keep their order) by their full token length,
    pair included, or with ``kept_length`` by the encoder input's length after truncation (encoder-decoder
    models: the text alone; the order the comparison engine has always used, kept so its files stay the
    same). Only token ids are computed for the whole list; each batch is encoded on its own, so memory
    depends on the batch, not on the number of texts.
    """
    if not texts:
        return
    limit = max_length or inspector.max_length
    second = None if pairs is None or (kept_length and inspector.is_encoder_decoder) else list(pairs)
    ids = inspector.tokenizer(text=list(texts), text_pair=second)["input_ids"]
    import torch  # not at module level: the commands build a DataSpec before any model is needed

    lengths = torch.tensor([min(len(x), limit) if kept_length else len(x) for x in ids])
    order = torch.sort(lengths, stable=True).indices.tolist()
    for b0 in range(0, len(texts), batch_size):
        rows = order[b0 : b0 + batch_size]
        yield rows, encode_rows(inspector, texts, pairs, rows, limit)
