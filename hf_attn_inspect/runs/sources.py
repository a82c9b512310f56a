"""Load the texts to analyse: a Hub dataset, a local file or folder, or the sample shipped with the package.

Everything goes through the `datasets` library, so a Hub name, a CSV / JSON / JSONL / Parquet / text file
and a folder of such files all come back as one :class:`datasets.Dataset` (all columns kept, so a
``label`` column stays available for fine-tuning demos). :func:`load_dataset_texts` also checks the
text column(s) (``"text"`` or a pair ``"premise,hypothesis"``) and returns a small :class:`DatasetInfo`
describing what was loaded, for ``run.json`` files. With ``streaming=True`` it returns a
:class:`datasets.IterableDataset` instead (rows read as they are needed, nothing downloaded or converted
first), which :class:`StreamRows` reads forward in row ranges for the sharded run loop.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterator, Sequence, Union

from ..core.errors import InputError
from ..core.paths import check_utf8

if TYPE_CHECKING:  # datasets is imported on first load (it is slow to import)
    from datasets import Dataset, DatasetDict, IterableDataset

__all__ = [
    "DatasetInfo",
    "DatasetSource",
    "SAMPLE_NAME",
    "StreamRows",
    "load_dataset_texts",
    "parse_columns",
    "sample_dataset_path",
    "sample_documents",
    "sample_sentences",
]

SAMPLE_NAME = "sample"

#: What :func:`load_dataset_texts` reads: None (the shipped sample), a local file or folder, a Hub name,
#: a ``datasets.Dataset`` / ``DatasetDict``, or a list of texts (or of ``(text, pair)`` tuples).
DatasetSource = Union["Dataset", "DatasetDict", str, os.PathLike, Sequence[Union[str, "tuple[str, str]", None]], None]

# File suffix -> `datasets` packaged builder.
_BUILDERS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
    ".text": "text",
}


def sample_dataset_path() -> str:
    """Path of the sample shipped with the package: ``data/sentences.csv``.

    336 hand-written English sentences (3 to 54 words; questions, numbers, quotes, punctuation) with
    columns ``text`` and ``label`` (1 = positive, 0 = negative sentiment, exactly balanced).
    """
    return str(Path(__file__).resolve().parent.parent / "data" / "sentences.csv")


def sample_sentences(n: int | None = None, seed: int = 0) -> list[str]:
    """``n`` English sentences built from the shipped sample, deterministic for a given ``seed``.

    The first 336 are the sample's sentences in file order; beyond that, each further text joins two or
    three (alternately) sample sentences picked with a seeded generator, so any number of varied texts
    (benchmarks, tests, notebooks) can be made offline. ``n=None`` returns the sample's 336 sentences.
    """
    import csv
    import random

    with open(sample_dataset_path(), newline="", encoding="utf-8") as fh:
        base = [row["text"] for row in csv.DictReader(fh)]
    if n is None:
        return list(base)
    out = list(base[:n])
    rng = random.Random(seed)
    while len(out) < n:
        out.append(" ".join(rng.sample(base, 2 + len(out) % 2)))
    return out


def sample_documents(tokenizer: Any, lengths: Sequence[int]) -> list[str]:
    """Paragraph- and document-length texts built offline from :func:`sample_sentences`: one per entry of
    ``lengths``, each made of consecutive sample sentences joined until ``tokenizer`` gives it at least
    that many tokens (special tokens included), so cutting at ``max_length=length`` gives full texts.
    Deterministic; for benchmarks and tests at document length.
    """
    base = sample_sentences(2000)
    out: list[str] = []
    i = 0
    for target in lengths:
        cur: list[str] = []
        while len(tokenizer(" ".join(cur))["input_ids"]) < target:
            cur.append(base[i % len(base)])
            i += 1
        out.append(" ".join(cur))
    return out


@dataclass
class DatasetInfo:
    """What :func:`load_dataset_texts` loaded: where from, which split and columns, how many rows."""

    source: str  # "sample", a local path, a Hub name, or "in-memory"
    kind: str  # "sample", "csv", "json", "parquet", "text", "folder", "hub", "in-memory"
    columns: tuple[str, ...]  # the text column, or the two columns of a pair
    num_rows: int | None  # rows after --limit (None: a stream, not counted in advance)
    total_rows: int | None  # rows before --limit (None: a stream)
    available_columns: list[str] = field(default_factory=list)
    config: str | None = None
    split: str | None = None
    limit: int | None = None
    fingerprint: str | None = None
    streaming: bool = False

    @property
    def is_pair(self) -> bool:
        """True when two columns (a sentence pair) are analysed."""
        return len(self.columns) == 2

    def to_dict(self) -> dict[str, object]:
        """The fields as a JSON-ready dict (``columns`` as a list), as ``run.json`` records them."""
        d = asdict(self)
        d["columns"] = list(self.columns)
        return d


def parse_columns(column: str | Sequence[str]) -> tuple[str, ...]:
    """``"text"`` -> ``("text",)``, ``"premise,hypothesis"`` (or a 2-sequence) -> a pair of columns."""
    if isinstance(column, str):
        cols = tuple(c.strip() for c in column.split(","))
    else:
        cols = tuple(str(c).strip() for c in column)
    if not 1 <= len(cols) <= 2 or any(not c for c in cols):
        raise InputError(
            f"--column must be one column name or two separated by a comma (a sentence pair), got {column!r}"
        )
    return cols


def _hf_datasets() -> ModuleType:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise InputError("the 'datasets' package is needed to load datasets: pip install datasets") from exc
    return datasets


def _quiet(datasets: ModuleType) -> None:
    try:
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except Exception:  # pragma: no cover - cosmetic only
        pass


def _pick_split(dd: "DatasetDict", split: str | None, source: str) -> "tuple[Dataset, str]":
    names = list(dd.keys())
    if split is None:
        split = "train" if "train" in dd else names[0]
    if split not in dd:
        raise InputError(f"dataset {source!r} has no split {split!r}; available splits: {', '.join(names)}")
    return dd[split], split


def _load_local(path: Path, split: str | None, datasets: ModuleType, streaming: bool = False) -> "tuple[Dataset, str, str]":
    """Load a local file or folder with the matching `datasets` builder -> (dataset, kind, split)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _BUILDERS)
        builders = {_BUILDERS[p.suffix.lower()] for p in files}
        if not files:
            raise InputError(
                f"folder {str(path)!r} holds no CSV / JSON / JSONL / Parquet / text files to load"
            )
        if len(builders) > 1:
            raise InputError(
                f"folder {str(path)!r} mixes file types ({', '.join(sorted(builders))}); keep one type per folder"
            )
        builder = builders.pop()
        data_files = [str(p) for p in files]
        kind = "folder"
    else:
        builder = _BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise InputError(
                f"cannot tell the format of {str(path)!r}; use a .csv, .tsv, .json, .jsonl, .parquet or .txt file"
            )
        data_files = [str(path)]
        kind = builder
    kwargs: dict[str, object] = {}
    if builder == "csv":
        # texts such as "NaN", "null" or "None" are text, not pandas' missing values (an empty cell stays "")
        kwargs["keep_default_na"] = False
        if all(f.lower().endswith(".tsv") for f in data_files):
            kwargs["sep"] = "\t"
    if builder != "parquet":  # one line, as for `long`, instead of the builder's decoding traceback
        for name in data_files:
            check_utf8(name, "dataset file")
    try:
        dd = datasets.load_dataset(builder, data_files={"train": data_files}, streaming=streaming, **kwargs)
    except Exception as exc:
        if _has_no_rows(builder, data_files):
            raise InputError(f"the dataset {str(path)!r} has no rows (only a header, or empty); add rows of text") from None
        raise InputError(f"could not read {str(path)!r} as {builder}: {_one_line(exc)}") from exc
    ds, split = _pick_split(dd, split, str(path))
    return ds, kind, split


def _has_no_rows(builder: str, files: Sequence[str]) -> bool:
    """True when no file holds a data row: CSV files hold at most a header line, JSON and text files no
    non-blank line, Parquet files zero rows (read only as far as needed)."""
    for name in files:
        try:
            if builder == "parquet":
                import pyarrow.parquet as pq

                if pq.ParquetFile(name).metadata.num_rows:
                    return False
                continue
            allowed = 1 if builder == "csv" else 0
            with open(name, encoding="utf-8", errors="replace") as fh:
                lines = 0
                for line in fh:
                    lines += bool(line.strip())
                    if lines > allowed:
                        return False
        except Exception:  # unreadable: not "no rows", the caller reports the read error
            return False
    return True


def _names_a_file(text: str) -> bool:
    """True when ``text`` is written as a local path (a data-file suffix, or starting with ``.``, ``/``,
    ``~``), not as a Hub dataset name."""
    return any(text.lower().endswith(s) for s in _BUILDERS) or text.startswith((".", "/", "~"))


def _load_hub(name: str, config: str | None, split: str | None, datasets: ModuleType,
              streaming: bool = False) -> "tuple[Dataset, str]":
    try:
        dd = datasets.load_dataset(name, config, streaming=streaming)
    except Exception as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
        hint = (" (offline: only datasets already in the local cache can be used)" if offline else "")
        raise InputError(
            f"could not load dataset {name!r}{hint}: {_one_line(exc)}; give a Hub name, "
            "a local .csv/.json/.jsonl/.parquet/.txt file or folder, or omit --dataset for the sample"
        ) from exc
    if isinstance(dd, (datasets.Dataset, datasets.IterableDataset)):
        return dd, split or "train"
    return _pick_split(dd, split, name)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(exc).__name__)


def _from_memory(data: Sequence[object], cols: tuple[str, ...], datasets: ModuleType) -> "Dataset":
    """A Dataset from a list; items that are not strings become None (Arrow columns hold one type)."""

    def text(x: object) -> str | None:
        return x if isinstance(x, str) else None

    items = list(data)
    if len(cols) == 2:
        firsts, seconds = [], []
        for it in items:
            if isinstance(it, (tuple, list)) and len(it) == 2:
                firsts.append(text(it[0]))
                seconds.append(text(it[1]))
            else:
                firsts.append(text(it))
                seconds.append(None)
        return datasets.Dataset.from_dict({cols[0]: firsts, cols[1]: seconds})
    return datasets.Dataset.from_dict({cols[0]: [text(x) for x in items]})


def load_dataset_texts(
    dataset: DatasetSource = None,
    *,
    config: str | None = None,
    split: str | None = None,
    column: str | Sequence[str] = "text",
    limit: int | None = None,
    streaming: bool = False,
) -> "tuple[Dataset | IterableDataset, DatasetInfo]":
    """Load a dataset and check its text column(s); returns ``(datasets.Dataset, DatasetInfo)``.

    ``dataset`` is ``None`` (the sample shipped with the package, see :func:`sample_dataset_path`), a
    local CSV / TSV / JSON / JSONL / Parquet / text file or a folder of them, a Hub dataset name (loaded
    with ``config``; needs the network or the local cache), a :class:`datasets.Dataset` /
    ``DatasetDict``, or an in-memory list of strings (or of ``(text, pair)`` tuples when ``column`` names
    two columns). ``split`` defaults to ``"train"`` (or the first split). ``column`` is one column name,
    or two separated by a comma for sentence pairs; a missing column raises :class:`InputError` listing
    the available ones, a dataset without rows (e.g. a CSV file holding only its header) raises "has no
    rows". ``limit`` (at least 1) keeps the first ``limit`` rows (in file order). CSV cells are text as
    written: ``NaN``, ``null`` or ``None`` are not read as missing values. All columns are kept
    in the returned dataset; rows are not filtered here (empty or non-string texts are the analysis
    engine's business, which skips and counts them).

    ``streaming=True`` returns a :class:`datasets.IterableDataset` in the same row order (Hub and local
    files are read as they are iterated, nothing is downloaded or converted first; an in-memory dataset
    is wrapped); ``info.num_rows`` and ``info.total_rows`` are then None (not counted in advance) and
    ``limit`` takes the first rows of the stream. Read it in row ranges with :class:`StreamRows`.
    """
    cols = parse_columns(column)
    if limit is not None and int(limit) < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    if isinstance(dataset, (str, os.PathLike)) and dataset != SAMPLE_NAME:
        text = os.fspath(dataset)
        if not Path(text).expanduser().exists() and _names_a_file(text):  # before the slow import of datasets
            raise InputError(f"dataset file {text!r} does not exist")
    datasets = _hf_datasets()
    _quiet(datasets)

    if dataset is None or (isinstance(dataset, str) and dataset == SAMPLE_NAME):
        ds, kind, split_used = _load_local(Path(sample_dataset_path()), split, datasets, streaming)
        source, kind = SAMPLE_NAME, "sample"
    elif isinstance(dataset, (datasets.Dataset, datasets.IterableDataset)):
        ds, source, kind, split_used = dataset, "in-memory", "in-memory", split
    elif isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        ds, split_used = _pick_split(dataset, split, "in-memory")
        source, kind = "in-memory", "in-memory"
    elif isinstance(dataset, (str, os.PathLike)):
        text = os.fspath(dataset)
        path = Path(text).expanduser()
        if path.exists():
            ds, kind, split_used = _load_local(path, split, datasets, streaming)
            source = str(path)
        else:
            ds, split_used = _load_hub(text, config, split, datasets, streaming)
            source, kind = text, "hub"
    elif isinstance(dataset, Sequence):
        ds = _from_memory(dataset, cols, datasets)
        source, kind, split_used = "in-memory", "in-memory", None
    else:
        raise InputError(
            f"dataset must be a path, a Hub name, a datasets.Dataset or a list of strings, "
            f"not {type(dataset).__name__}"
        )
    if streaming and isinstance(ds, datasets.Dataset):
        ds = ds.to_iterable_dataset()
    elif not streaming and isinstance(ds, datasets.IterableDataset):
        raise InputError("an IterableDataset is read as a stream: pass streaming=True (--streaming)")

    if isinstance(ds, datasets.Dataset) and ds.num_rows == 0:
        raise InputError(f"the dataset {source!r} has no rows; give a dataset with at least one row of text")
    available = list(ds.column_names or [])
    if not available and isinstance(ds, datasets.IterableDataset):  # a stream whose columns are known once read
        first = next(iter(ds.take(1)), None)
        if first is None:
            raise InputError(f"the dataset {source!r} has no rows; give a dataset with at least one row of text")
        available = list(first)
    missing = [c for c in cols if c not in available]
    if missing:
        raise InputError(
            f"column {missing[0]!r} not found in dataset {source!r}; available columns: "
            f"{', '.join(available) or '(none)'} (choose with --column)"
        )
    if isinstance(ds, datasets.IterableDataset):
        total = None
        if limit is not None:
            ds = ds.take(int(limit))
        num_rows = None
    else:
        total = ds.num_rows
        if limit is not None and int(limit) < total:
            ds = ds.select(range(int(limit)))
        num_rows = ds.num_rows
    info = DatasetInfo(
        source=source,
        kind=kind,
        columns=cols,
        num_rows=num_rows,
        total_rows=total,
        available_columns=available,
        config=config,
        split=split_used,
        limit=None if limit is None else int(limit),
        fingerprint=None if streaming else getattr(ds, "_fingerprint", None),
        streaming=streaming,
    )
    return ds, info


class StreamRows:
    """Rows of a :class:`datasets.IterableDataset` by row range, read forward: ``rows[start:stop]`` is a
    dict of column lists (like ``Dataset[start:stop]``), shorter at the stream's end, empty past it.

    Ranges must come in increasing order (each ``start`` at or after the previous ``stop``); the rows
    between them are read and dropped, so one process of a distributed run reads the stream once and
    keeps only its own shards. Only ``columns`` are kept; ``chunk`` rows are read at a time.
    """

    def __init__(self, ds: "IterableDataset", columns: Sequence[str], chunk: int = 1024) -> None:
        self.columns = tuple(columns)
        self._batches: Iterator[dict[str, list[object]]] = iter(ds.iter(batch_size=chunk))
        self._buffer: dict[str, list[object]] = {c: [] for c in self.columns}
        self._position = 0  # row number of the first buffered row
        self._ended = False

    def _buffered(self) -> int:
        return len(self._buffer[self.columns[0]])

    def __getitem__(self, rows: slice) -> dict[str, list[object]]:
        start, stop = int(rows.start or 0), int(rows.stop)
        if start < self._position:
            raise InputError(f"a stream is read forward only: rows {start}:{stop} were already passed")
        while self._buffered() < stop - self._position and not self._ended:
            try:
                batch = next(self._batches)
            except StopIteration:
                self._ended = True
                break
            for c in self.columns:
                self._buffer[c].extend(batch[c])
        lo, hi = start - self._position, stop - self._position
        out = {c: v[lo:hi] for c, v in self._buffer.items()}
        self._buffer = {c: v[hi:] for c, v in self._buffer.items()}
        self._position = stop  # every row before stop is passed (or the stream ended before it)
        return out
