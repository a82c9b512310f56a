"""The one sharded run loop of every engine: rows in shards, statistics merged as sums, resumable.

An engine (dataset statistics, compare) describes its work as a function ``compute(start, stop, bar)``
that turns rows ``start:stop`` of its dataset into a :class:`ShardStats` (float64 sums and sums of
squares of per-sentence values, class counts, row counts). :func:`run_sharded` calls it shard by shard
and adds the results with ``+``, which is exact, so the merged numbers do not depend on the shard size
or on where a run was stopped.

With an output directory:

- ``run.json`` says ``"status": "running"`` (with the run's parameters) while the run goes on;
- every finished shard is written atomically to ``shards/shard-NNNNNN.npz``
  (:func:`~hf_attn_inspect.core.files.atomic_write`, ordinary umask permissions);
- a stopped run continues from its finished shards with ``resume=True`` when its parameters are the
  same (a damaged shard is recomputed), and ends with the same numbers as an uninterrupted run;
- a finished run (``"status": "finished"``) is never replaced unless ``overwrite=True``, and an
  unfinished one is neither silently restarted nor overwritten.

The engine writes its own tables and the final ``run.json`` (``"status": "finished"``) once the loop
returns. :func:`clean_rows` is the row filter every engine shares (non-string and empty rows are
skipped and counted), :func:`package_versions` the version record of ``run.json`` files.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import numpy as np
import pandas as pd
import torch

from ..core.errors import InputError, OutputError
from ..core.files import atomic_write, write_json

if TYPE_CHECKING:  # datasets is imported by the engines that load data; only its type is needed here
    from datasets import Dataset

__all__ = [
    "SHARDS_DIR",
    "Progress",
    "RunRecord",
    "ShardCompute",
    "ShardStats",
    "ShardedRun",
    "clean_rows",
    "clean_rows_indexed",
    "package_versions",
    "prepare_out_dir",
    "release_free_memory",
    "run_sharded",
    "shard_path",
]

#: Folder of an output directory that holds the finished shards.
SHARDS_DIR = "shards"

#: A ``run.json`` record: JSON values by key (``status``, ``parameters``, ``versions``, ``counts``, ...).
RunRecord = dict[str, Any]


# --------------------------------------------------------------------------- mergeable statistics
@dataclass
class ShardStats:
    """Sums over sentences for one shard (or any set of shards): combine with ``+``, exactly.

    ``sums``/``sumsq`` are float64 ``[layers, heads, metrics]`` sums of the per-sentence values and of
    their squares (so a mean is ``sums / n`` and a population variance ``sumsq / n - mean**2``);
    ``class_counts`` ``[layers, heads, classes]`` counts sentences per pattern class; ``n`` is the number
    of analysed sentences; ``rows`` the rows read; ``skipped`` the rows left out by reason;
    ``truncated`` the texts cut to the model's maximum length.
    """

    metric_names: tuple[str, ...]
    class_names: tuple[str, ...]
    sums: np.ndarray
    sumsq: np.ndarray
    class_counts: np.ndarray
    n: int = 0
    rows: int = 0
    truncated: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    @classmethod
    def empty(cls, layers: int, heads: int, metric_names: Sequence[str], class_names: Sequence[str]) -> "ShardStats":
        """Zero sums for ``layers`` x ``heads`` heads, the given metrics and classes, no sentence."""
        m, c = len(metric_names), len(class_names)
        return cls(
            tuple(metric_names), tuple(class_names),
            np.zeros((layers, heads, m)), np.zeros((layers, heads, m)), np.zeros((layers, heads, c), np.int64),
        )

    def add_values(self, values: torch.Tensor, classes: torch.Tensor) -> None:
        """Add per-sentence ``values [batch, layers, heads, metrics]`` and ``classes [batch, layers, heads]``
        (class indices into :attr:`class_names`); ``n`` grows by ``batch``."""
        v = values.double().numpy()
        self.sums += v.sum(0)
        self.sumsq += np.square(v).sum(0)
        onehot = torch.nn.functional.one_hot(classes, len(self.class_names)).sum(0)
        self.class_counts += onehot.numpy().astype(np.int64)
        self.n += int(values.shape[0])

    def __add__(self, other: "ShardStats") -> "ShardStats":
        if other.metric_names != self.metric_names or other.class_names != self.class_names:
            raise InputError("cannot merge statistics with different metrics or classes")
        skipped = dict(self.skipped)
        for k, v in other.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
        return ShardStats(
            self.metric_names, self.class_names, self.sums + other.sums, self.sumsq + other.sumsq,
            self.class_counts + other.class_counts, self.n + other.n, self.rows + other.rows,
            self.truncated + other.truncated, skipped,
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``path`` (``.npz``) atomically with :func:`~hf_attn_inspect.core.files.atomic_write`; returns it."""
        meta = {
            "metric_names": list(self.metric_names), "class_names": list(self.class_names), "n": self.n,
            "rows": self.rows, "truncated": self.truncated, "skipped": self.skipped,
        }
        return atomic_write(path, lambda fh: np.savez(
            fh, sums=self.sums, sumsq=self.sumsq, class_counts=self.class_counts, meta=np.array(json.dumps(meta))
        ), binary=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ShardStats":
        """Read statistics written by :meth:`save`."""
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            return cls(
                tuple(meta["metric_names"]), tuple(meta["class_names"]), z["sums"], z["sumsq"],
                z["class_counts"], meta["n"], meta["rows"], meta["truncated"], dict(meta["skipped"]),
            )


# --------------------------------------------------------------------------- the run loop
class Progress(Protocol):
    """A progress bar (tqdm's interface): ``update(n)`` advances it by ``n`` rows."""

    def update(self, n: int = 1) -> object: ...


#: What an engine gives :func:`run_sharded`: ``compute(start, stop, bar)`` -> the statistics of rows
#: ``start:stop``; it advances ``bar`` (None without progress) by every row it reads.
ShardCompute = Callable[[int, int, "Progress | None"], ShardStats]


@dataclass
class ShardedRun:
    """What :func:`run_sharded` returns: the merged statistics and the run's bookkeeping.

    ``total`` is the sum of every shard's :class:`ShardStats`; ``counts`` holds ``rows`` (rows read),
    ``analysed`` (sentences analysed), ``skipped`` (by reason), ``skipped_total`` and ``truncated``;
    ``shards_total`` is the number of shards, ``shards_resumed`` how many came from an earlier run's
    files, ``analysed_now`` the sentences computed by this call and ``elapsed`` its seconds.
    """

    total: ShardStats
    counts: dict[str, object]
    shards_total: int
    shards_resumed: int
    analysed_now: int
    elapsed: float


def shard_path(out_dir: str | os.PathLike, shard: int) -> Path:
    """Where shard number ``shard`` (0-based) of a run in ``out_dir`` is written."""
    return Path(out_dir) / SHARDS_DIR / f"shard-{shard:06d}.npz"


def run_sharded(
    n_rows: int,
    shard_size: int,
    compute: ShardCompute,
    *,
    out_dir: str | os.PathLike | None = None,
    params: RunRecord | None = None,
    outputs: Sequence[str] = (),
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    desc: str = "rows",
    column: str = "text",
) -> ShardedRun:
    """Run ``compute(start, stop, bar)`` over rows ``[0, n_rows)`` shard by shard and merge the results.

    Rows are cut into ``ceil(n_rows / shard_size)`` shards (at least one); their statistics are added in
    shard order. With ``out_dir`` (see the module docstring), the directory is checked with
    :func:`prepare_out_dir` (``params`` are the run's settings, compared on ``resume``; ``outputs`` the
    files of a finished run that ``overwrite`` deletes besides ``run.json`` and the shards), ``run.json``
    says ``running`` and every finished shard is written atomically; a shard that raises leaves the
    shards before it on disk for ``resume``. ``progress=True`` shows a tqdm bar labelled ``desc`` on
    stderr. Raises :class:`InputError` when ``shard_size`` is below 1 or no row of ``column`` was
    usable, :class:`OutputError` for the output-directory refusals.
    """
    if shard_size < 1:
        raise InputError(f"shard size must be at least 1, got {shard_size}")
    params = dict(params or {})
    n_shards = max(1, math.ceil(n_rows / shard_size))
    done: dict[int, ShardStats] = {}
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        done = prepare_out_dir(out, params, resume=resume, overwrite=overwrite, outputs=outputs)
        write_json({"status": "running", "parameters": params, "versions": package_versions(),
                    "shards_total": n_shards, "shards_done": len(done)}, out / "run.json")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_rows, unit="sent", desc=desc, dynamic_ncols=True,
                   initial=sum(s.rows for s in done.values()))
    started = time.perf_counter()
    analysed_now = 0
    total: ShardStats | None = None
    try:
        for shard in range(n_shards):
            if shard in done:
                stats = done[shard]
            else:
                stats = compute(shard * shard_size, min(n_rows, (shard + 1) * shard_size), bar)
                analysed_now += stats.n
                if out is not None:
                    stats.save(shard_path(out, shard))
            total = stats if total is None else total + stats
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - started
    assert total is not None  # n_shards >= 1
    if total.n == 0:
        raise InputError(f"no usable text in column {column!r} ({total.rows} rows, all empty or not text)")
    counts = {"rows": total.rows, "analysed": total.n, "skipped": dict(total.skipped),
              "skipped_total": sum(total.skipped.values()), "truncated": total.truncated}
    return ShardedRun(total, counts, n_shards, len(done), analysed_now, elapsed)


# --------------------------------------------------------------------------- output directory
def prepare_out_dir(
    out_dir: str | os.PathLike,
    params: RunRecord,
    *,
    resume: bool = False,
    overwrite: bool = False,
    outputs: Sequence[str] = (),
) -> dict[int, ShardStats]:
    """Check an output directory for a run with ``params`` and return the shards a resumed run already finished.

    ``overwrite`` deletes ``run.json``, the shards and ``outputs`` (file names in ``out_dir``) and
    starts afresh. Otherwise a finished run is refused, an unfinished one is refused without
    ``resume``, and ``resume`` is refused when the earlier run's parameters differ (naming them).
    Raises :class:`OutputError` for each refusal and when the directory cannot be created.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path {str(out)!r} exists and is not a directory")
    run_file = out / "run.json"
    previous = None
    if run_file.exists():
        try:
            previous = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
    has_shards = (out / SHARDS_DIR).is_dir() and any((out / SHARDS_DIR).glob("shard-*.npz"))
    if overwrite:
        _clear(out, outputs)
        return {}
    if previous is not None and previous.get("status") == "finished":
        raise OutputError(
            f"{str(out)!r} holds a finished run; pass --overwrite to replace it or choose another --out"
        )
    if (previous is not None or has_shards) and not resume:
        raise OutputError(
            f"{str(out)!r} holds an unfinished run; pass --resume to continue it or --overwrite to start again"
        )
    if not resume:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create output directory {str(out)!r}: {exc.strerror}") from exc
        return {}
    as_json = json.loads(json.dumps(params, default=str))
    if previous is not None and previous.get("parameters") != as_json:
        old = previous.get("parameters", {})
        diff = sorted(k for k in set(old) | set(as_json) if old.get(k) != as_json.get(k))
        raise OutputError(
            f"cannot resume {str(out)!r}: it was started with different settings ({', '.join(diff)}); "
            "rerun with the same options or pass --overwrite"
        )
    done = {}
    for path in sorted((out / SHARDS_DIR).glob("shard-*.npz")):
        try:
            done[int(path.stem.split("-")[1])] = ShardStats.load(path)
        except Exception:  # a damaged shard (any read or parse error) is recomputed
            continue
    return done


def _clear(out_dir: Path, outputs: Sequence[str]) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        shards = out_dir / SHARDS_DIR
        if shards.is_dir():
            for p in shards.glob("shard-*.npz"):
                p.unlink()
        for name in ("run.json", *outputs):
            (out_dir / name).unlink(missing_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot clear output directory {str(out_dir)!r}: {exc.strerror}") from exc


# --------------------------------------------------------------------------- helpers shared by engines
def clean_rows(ds: "Dataset", start: int, stop: int, columns: Sequence[str]) -> tuple[list[str], list[str] | None, dict[str, int]]:
    """Rows ``start:stop`` of ``columns`` (one text column, or two for sentence pairs) as usable texts.

    Returns ``(texts, pairs or None, skipped)``: rows where a column is not a string are skipped and
    counted as ``skipped["non_string"]``, rows where one is empty or blank as ``skipped["empty"]``;
    the others keep dataset order.
    """
    texts, pairs, skipped, _ = clean_rows_indexed(ds, start, stop, columns)
    return texts, pairs, skipped


def clean_rows_indexed(
    ds: "Dataset", start: int, stop: int, columns: Sequence[str]
) -> tuple[list[str], list[str] | None, dict[str, int], list[int]]:
    """:func:`clean_rows` plus the dataset row index of every kept text (to read other columns, e.g. labels)."""
    chunk = ds[start:stop]
    firsts = chunk[columns[0]]
    seconds = chunk[columns[1]] if len(columns) == 2 else [None] * len(firsts)
    texts, pairs, kept, skipped = [], [], [], {"empty": 0, "non_string": 0}
    for i, (a, b) in enumerate(zip(firsts, seconds)):
        parts = (a,) if len(columns) == 1 else (a, b)
        if any(not isinstance(p, str) for p in parts):
            skipped["non_string"] += 1
        elif any(not p.strip() for p in parts):
            skipped["empty"] += 1
        else:
            texts.append(a)
            pairs.append(b)
            kept.append(start + i)
    return texts, (pairs if len(columns) == 2 else None), skipped, kept


def package_versions() -> dict[str, str]:
    """The versions recorded in ``run.json``: this package, torch, transformers, datasets, numpy, pandas, python."""
    import datasets
    import transformers

    try:
        own = metadata.version("hf-attn-inspect")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        own = "unknown"
    return {
        "hf_attn_inspect": own, "torch": torch.__version__, "transformers": transformers.__version__,
        "datasets": datasets.__version__, "numpy": np.__version__, "pandas": pd.__version__,
        "python": platform.python_version(),
    }


_TRIM: Callable[[int], int] | bool | None = None


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``), so batches of varying shapes do not
    leave the process's peak memory growing with the number of batches; a no-op elsewhere."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)
