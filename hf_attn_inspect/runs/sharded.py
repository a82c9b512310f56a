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
  same (a damaged shard is recomputed), and ends with the same numbers as an uninterrupted run; a run
  says ``finished`` only once every file it writes is written (:func:`finishing`), and ``resume=True``
  writes whatever a ``finished`` one lacks;
- a finished run (``"status": "finished"``) is never replaced unless ``overwrite=True``, and an
  unfinished one (stopped or interrupted) is neither silently restarted nor overwritten;
- a run that stops on an input error, or on any error before a shard was finished, is recorded as
  ``"status": "failed"`` (with the error) and blocks nothing: the next run starts afresh (or continues
  with ``resume=True``); one that stops on an error or an interrupt after finishing shards is recorded
  as ``"status": "stopped"``, with the error and how to resume (its ``resume`` entry, :data:`RESUME`);
- a file the run would write that no run of ours wrote (no ``run.json`` of ours in the folder) is
  never replaced without ``overwrite=True``, and the folder is created only with the first file.

Launched on several processes (``accelerate launch`` / ``torchrun``; see
:mod:`hf_attn_inspect.runs.distributed`), the same loop deals the shards out to the ranks, every rank
writes its shards to the shared output folder, and rank 0 merges them in shard order: the numbers are
those of one process, and a run stopped with any number of processes resumes with any other number.

The engine writes its own tables, then its report (a ``report`` callback), and only then the final
``run.json`` (``"status": "finished"``; :func:`finishing`) once the loop returns (on rank 0 only:
:attr:`ShardedRun.is_main`). :func:`clean_rows` is the row filter every engine shares (non-string and empty rows are
skipped and counted), :func:`package_versions` the version record of ``run.json`` files.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import pandas as pd
import torch

from ..core.errors import AttnInspectError, DistributedError, InputError, OutputError
from ..core.files import atomic_write, check_output_dir, check_replaceable, write_json
from .distributed import Processes, processes

if TYPE_CHECKING:  # datasets is imported by the engines that load data; only its type is needed here
    from datasets import Dataset

__all__ = [
    "RESUME",
    "SHARDS_DIR",
    "UNFINISHED",
    "Progress",
    "RunRecord",
    "ShardCompute",
    "ShardStats",
    "ShardedRun",
    "check_out_dir",
    "clean_rows",
    "clean_rows_indexed",
    "finishing",
    "finish_run",
    "lacking_outputs",
    "package_versions",
    "prepare_out_dir",
    "release_free_memory",
    "run_sharded",
    "shard_path",
    "unfinished_hint",
]

#: Folder of an output directory that holds the finished shards.
SHARDS_DIR = "shards"

#: The statuses of a run that ``resume=True`` (``--resume``) continues: ``running`` while it runs (or after a
#: kill), ``stopped`` after an error or an interrupt that left finished shards.
UNFINISHED = ("running", "stopped")

#: What ``run.json`` of a stopped run says to do (its ``resume`` entry).
RESUME = "rerun the same command with --resume (same options) to finish the run from its saved shards"

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
    files, ``analysed_now`` the sentences computed by this call (all processes together) and ``elapsed``
    its seconds. ``world_size`` is the number of processes that ran it, ``ranks`` what each computed
    (``rank``, ``shards``, ``rows``, ``analysed``), ``is_main`` whether this process is the one that
    writes the outputs (rank 0; always True in a single process).
    """

    total: ShardStats
    counts: dict[str, object]
    shards_total: int
    shards_resumed: int
    analysed_now: int
    elapsed: float
    world_size: int = 1
    ranks: list[dict[str, int]] = field(default_factory=list)
    is_main: bool = True


def shard_path(out_dir: str | os.PathLike, shard: int) -> Path:
    """Where shard number ``shard`` (0-based) of a run in ``out_dir`` is written."""
    return Path(out_dir) / SHARDS_DIR / f"shard-{shard:06d}.npz"


def run_sharded(
    n_rows: int | None,
    shard_size: int,
    compute: ShardCompute,
    *,
    out_dir: str | os.PathLike | None = None,
    params: RunRecord | None = None,
    outputs: Sequence[str] = (),
    optional: Sequence[str] = (),
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    desc: str = "rows",
    column: str = "text",
) -> ShardedRun:
    """Run ``compute(start, stop, bar)`` over rows ``[0, n_rows)`` shard by shard and merge the results.

    Rows are cut into ``ceil(n_rows / shard_size)`` shards (at least one); their statistics are added in
    shard order. ``n_rows=None`` is a stream of unknown length: shards are computed until one comes back
    with fewer than ``shard_size`` rows (``ShardStats.rows``), the last one. With ``out_dir`` (see the
    module docstring), the directory is checked with :func:`prepare_out_dir` (``params`` are the run's
    settings, compared on ``resume``; ``outputs`` the files of a finished run that ``overwrite`` deletes
    besides ``run.json`` and the shards, and whose absence from a ``finished`` run lets ``resume`` complete
    it, ``optional`` those of them a finished run may lack), ``run.json`` says ``running`` and every
    finished shard is written atomically; a shard that raises (or an interrupt) leaves the shards before it
    on disk for ``resume`` and ``run.json`` saying ``stopped``, with the error and how to resume. The
    engine marks the run finished with :func:`finishing` once it wrote its files.
    ``progress=True`` shows a tqdm bar labelled ``desc`` on stderr.

    Launched on several processes (``torchrun``/``accelerate launch``, see
    :mod:`hf_attn_inspect.runs.distributed`), the shards still to compute are dealt out in rounds: in
    round ``k`` rank ``r`` computes the ``k * world_size + r``-th of them (in shard order) and writes it
    to the shared ``out_dir``; after each round the ranks exchange their shard statistics (a meeting
    point with a timeout). Rank 0 alone checks the folder, writes ``run.json`` and shows progress (all
    ranks' rows), and adds the shards in shard order, so the numbers are the same as one process's; every
    rank returns the merged result. A rank that raises makes every rank raise (its own error on that
    rank, :class:`DistributedError` naming it on the others); one that died or stopped answering makes
    the others raise :class:`DistributedError`; the finished shards stay on disk for ``resume`` with
    any number of processes. Raises :class:`InputError` when ``shard_size`` is below 1 or no row of
    ``column`` was usable, :class:`OutputError` for the output-directory refusals.
    """
    if shard_size < 1:
        raise InputError(f"shard size must be at least 1, got {shard_size}")
    params = dict(params or {})
    procs = processes()
    n_shards = None if n_rows is None else max(1, math.ceil(n_rows / shard_size))
    out = Path(out_dir) if out_dir is not None else None
    done = _start(procs, out, params, n_shards, resume=resume, overwrite=overwrite, outputs=outputs, optional=optional)
    bar = None
    if progress and procs.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_rows, unit="sent", desc=desc, dynamic_ncols=True,
                   initial=sum(s.rows for s in done.values()))
    started = time.perf_counter()
    merged = _Merge(dict(done) if procs.is_main else {})
    ranks = [{"rank": r, "shards": 0, "rows": 0, "analysed": 0} for r in range(procs.world_size)]
    todo = (i for i in (range(n_shards) if n_shards is not None else itertools.count()) if i not in done)
    try:
        while True:
            round_ = list(itertools.islice(todo, procs.world_size))
            if not round_:
                break
            mine = round_[procs.rank] if procs.rank < len(round_) else None
            report, failure = _compute_one(procs, mine, n_rows, shard_size, compute, bar, out)
            try:
                reports = procs.exchange(report)
            except DistributedError as exc:
                raise DistributedError(f"{exc}{_resume_hint(out)}") from None
            _raise_failures(procs, reports, failure, out)
            for r, rep in enumerate(reports):
                stats = rep["stats"]
                if stats is None:
                    continue
                if n_rows is None and stats.rows == 0:  # past a stream's end
                    merged.empty = merged.empty or stats
                    continue
                ranks[r]["shards"] += 1
                ranks[r]["rows"] += stats.rows
                ranks[r]["analysed"] += stats.n
                if bar is not None and r != procs.rank:
                    bar.update(stats.rows)
                if procs.is_main:
                    merged.add(rep["shard"], stats)
            if n_rows is None:  # a stream: the first short shard is the last one
                ends = [rep["shard"] + (rep["stats"].rows > 0) for rep in reports
                        if rep["stats"] is not None and rep["stats"].rows < shard_size]
                if ends:
                    n_shards = min(ends)
                    break
        assert n_shards is not None  # known, or set when the stream ended
        total = procs.share(merged.finish(n_shards) if procs.is_main else None)
        n_shards = max(1, n_shards)
        if total.n == 0:
            raise InputError(f"no usable text in column {column!r} ({total.rows} rows, all empty or not text)")
    except BaseException as exc:  # an interrupt (Ctrl-C) too: the run says how to go on
        if out is not None and procs.is_main:
            # Nothing worth resuming (bad input, or no shard finished): "failed", which blocks no later run.
            # Finished shards: the run is "stopped", for --resume, and run.json says so.
            shards_done = len(list((out / SHARDS_DIR).glob("shard-*.npz")))
            failed = isinstance(exc, InputError) or shards_done == 0
            record = {"status": "failed" if failed else "stopped", "error": _error_text(exc),
                      "parameters": params, "versions": package_versions(), "shards_total": n_shards,
                      "shards_done": shards_done}
            write_json(record if failed else {**record, "resume": RESUME}, out / "run.json")
        raise
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - started
    counts = {"rows": total.rows, "analysed": total.n, "skipped": dict(total.skipped),
              "skipped_total": sum(total.skipped.values()), "truncated": total.truncated}
    return ShardedRun(total, counts, n_shards, len(done), sum(r["analysed"] for r in ranks), elapsed,
                      procs.world_size, ranks, procs.is_main)


def _start(procs: Processes, out: Path | None, params: RunRecord, n_shards: int | None, *, resume: bool,
           overwrite: bool, outputs: Sequence[str], optional: Sequence[str]) -> dict[int, ShardStats]:
    """Rank 0 checks the output folder and marks the run ``running``; every rank learns which shards are
    finished (non-main ranks get their numbers only, as empty placeholders) or raises rank 0's refusal."""
    done: dict[int, ShardStats] = {}
    refusal: AttnInspectError | None = None
    if out is not None and procs.is_main:
        try:
            done = prepare_out_dir(out, params, resume=resume, overwrite=overwrite, outputs=outputs, optional=optional)
            write_json({"status": "running", "parameters": params, "versions": package_versions(),
                        "shards_total": n_shards, "shards_done": len(done)}, out / "run.json")
        except AttnInspectError as exc:
            refusal = exc
    if procs.world_size > 1:
        verdict = procs.share((refusal, sorted(done)) if procs.is_main else None)
        if not procs.is_main:
            refusal, numbers = verdict
            done = {i: ShardStats.empty(0, 0, (), ()) for i in numbers}
            if refusal is not None:
                refusal.relayed = True
    if refusal is not None:
        raise refusal
    return done


def _compute_one(procs: Processes, shard: int | None, n_rows: int | None, shard_size: int, compute: ShardCompute,
                 bar: Progress | None, out: Path | None) -> tuple[dict[str, object], Exception | None]:
    """Compute (and save) this rank's ``shard`` of the round; returns its report for the others and the
    exception it raised (in a distributed run; a single process raises it at once)."""
    report: dict[str, object] = {"shard": shard, "stats": None, "error": None}
    if shard is None:
        return report, None
    start = shard * shard_size
    stop = start + shard_size if n_rows is None else min(n_rows, start + shard_size)
    try:
        stats = compute(start, stop, bar)
        if out is not None and (n_rows is not None or stats.rows > 0):  # nothing to keep past a stream's end
            stats.save(shard_path(out, shard))
    except Exception as exc:
        if procs.world_size == 1:
            raise
        report["error"] = " ".join(str(exc).split())[:300] or type(exc).__name__
        return report, exc
    report["stats"] = stats
    return report, None


def _raise_failures(procs: Processes, reports: list[dict[str, object]], own: Exception | None, out: Path | None) -> None:
    """After a round: when a rank failed, raise on every rank (the failing rank re-raises its own error)."""
    failed = [(r, rep) for r, rep in enumerate(reports) if rep["error"] is not None]
    if not failed:
        return
    if own is not None:
        raise own
    r, rep = failed[0]
    error = DistributedError(f"rank {r} of {procs.world_size} failed in shard {rep['shard']}: {rep['error']}{_resume_hint(out)}")
    error.relayed = not procs.is_main  # rank 0 reports it
    raise error


def _resume_hint(out: Path | None) -> str:
    if out is None:
        return ""
    return (f"; the finished shards are kept in {str(out / SHARDS_DIR)!r}: rerun with --resume "
            "(with any number of processes) to finish the run")


class _Merge:
    """Adds shard statistics in shard order as they arrive (out of order across ranks and rounds)."""

    def __init__(self, done: dict[int, ShardStats]) -> None:
        self.waiting = done
        self.next = 0
        self.total: ShardStats | None = None
        self.empty: ShardStats | None = None

    def add(self, shard: int, stats: ShardStats) -> None:
        self.waiting[shard] = stats
        while self.next in self.waiting:
            stats = self.waiting.pop(self.next)
            self.total = stats if self.total is None else self.total + stats
            self.next += 1

    def finish(self, n_shards: int) -> ShardStats:
        """The sum of shards ``0 .. n_shards - 1`` (all must have arrived); a stream without rows gives
        the empty statistics of the shard past its end."""
        missing = [i for i in range(self.next, n_shards) if i not in self.waiting]
        if missing:
            raise DistributedError(f"shard {missing[0]} never arrived; rerun with --resume")
        for i in range(self.next, n_shards):
            stats = self.waiting.pop(i)
            self.total = stats if self.total is None else self.total + stats
        total = self.total if self.total is not None else self.empty
        assert total is not None  # at least one shard was computed or read
        return total


# --------------------------------------------------------------------------- output directory
def _read_run(out: Path) -> RunRecord | None:
    """The ``run.json`` of a run of ours in ``out`` (a dict with ``status`` and ``parameters``), else None."""
    try:
        previous = json.loads((out / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return previous if isinstance(previous, dict) and {"status", "parameters"} <= set(previous) else None


def check_out_dir(
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    outputs: Sequence[str] = (),
    optional: Sequence[str] = (),
) -> RunRecord | None:
    """Check, writing nothing, that a run may write into ``out_dir``; returns the earlier run's record, if any.

    Refused with :class:`OutputError`: a path that is a file or cannot be created or written; a file
    among ``run.json`` and ``outputs`` that exists while the folder holds no run of ours (it is the user's,
    :func:`~hf_attn_inspect.core.files.check_replaceable`); a finished run; an unfinished one (status
    ``running`` or ``stopped``, or shards without ``run.json``) without ``resume``. ``overwrite`` allows all
    but the first. A run recorded as ``failed`` blocks nothing: without ``resume`` it is started afresh. A
    run that says ``finished`` but lacks some of ``outputs`` (not counting ``optional`` ones; see
    :func:`lacking_outputs`) is continued by ``resume``, which writes what it lacks.
    """
    out = check_output_dir(out_dir)
    if overwrite:
        return None
    previous = _read_run(out)
    check_replaceable(out, ("run.json", *outputs), owned=("run.json", *outputs) if previous else ())
    status = previous.get("status") if previous else None
    has_shards = (out / SHARDS_DIR).is_dir() and any((out / SHARDS_DIR).glob("shard-*.npz"))
    if status == "finished":
        lacking = lacking_outputs(out, outputs, optional)
        if not lacking:
            raise OutputError(
                f"{str(out)!r} holds a finished run; pass --overwrite to replace it or choose another --out"
            )
        if not resume:
            raise OutputError(
                f"{str(out)!r} holds a finished run without {', '.join(lacking)}; pass --resume to write what "
                "it lacks, --overwrite to start again, or choose another --out"
            )
    if (status in UNFINISHED or (previous is None and has_shards)) and not resume:
        raise OutputError(
            f"{str(out)!r} holds an unfinished run; pass --resume to continue it or --overwrite to start again"
        )
    return previous


def lacking_outputs(out_dir: str | os.PathLike, outputs: Sequence[str], optional: Sequence[str] = ()) -> list[str]:
    """The files of ``outputs`` (names in ``out_dir``) that do not exist, leaving out those of ``optional``
    (files a finished run writes only with some options, e.g. ``head_diffs.png`` with ``--top 0``)."""
    out = Path(out_dir)
    return [name for name in outputs if name not in optional and not (out / name).exists()]


def unfinished_hint(out_dir: str | os.PathLike | None) -> str:
    """``"; <how to finish it>"`` when ``out_dir`` holds a run of ours that is not finished (``running`` or
    ``stopped``), else ``""``: what the command line adds to an interrupted command's error line."""
    if out_dir is None:
        return ""
    previous = _read_run(Path(out_dir).expanduser())
    if previous is None or previous.get("status") not in UNFINISHED:
        return ""
    return f"; {str(out_dir)!r} keeps what was done: {RESUME}"


@contextmanager
def finishing(out_dir: str | os.PathLike, record: RunRecord) -> Iterator[RunRecord]:
    """Write a run's last files inside the ``with`` block; ``run.json`` becomes ``record`` (the finished
    run, which the block may still complete) only when the block ends, so a run is ``finished`` only once
    everything it writes is written. An error or interrupt inside marks it ``stopped`` instead (with the
    error and how to resume: its shards are all saved, so ``--resume`` only writes the files)."""
    out = Path(out_dir)
    try:
        yield record
    except BaseException as exc:
        stopped = {**record, "status": "stopped", "error": _error_text(exc), "resume": RESUME}
        stopped.pop("finished_at", None)
        write_json(stopped, out / "run.json")
        raise
    write_json(record, out / "run.json")


def finish_run(
    out_dir: str | os.PathLike | None,
    record: RunRecord,
    df: pd.DataFrame,
    write: Callable[[str | os.PathLike, pd.DataFrame], object],
    report: Callable[[pd.DataFrame], object] | None = None,
    *,
    is_main: bool = True,
) -> None:
    """The last step of every sharded engine: on the main process of a run with an ``out_dir``, ``write(out_dir,
    df)`` its tables, then ``report(df)`` (the view layer's figures and ``report.md``), all inside
    :func:`finishing`, so ``run.json`` says ``finished`` only once every file is written. Other processes, and
    runs without a folder, write nothing."""
    if out_dir is None or not is_main:
        return
    with finishing(out_dir, record):
        write(out_dir, df)
        if report is not None:
            report(df)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"{type(exc).__name__}: {exc}"


def prepare_out_dir(
    out_dir: str | os.PathLike,
    params: RunRecord,
    *,
    resume: bool = False,
    overwrite: bool = False,
    outputs: Sequence[str] = (),
    optional: Sequence[str] = (),
) -> dict[int, ShardStats]:
    """Check an output directory for a run with ``params`` and return the shards a resumed run already finished.

    The checks of :func:`check_out_dir` come first (nothing is created: the folder appears with the
    run's first file). ``overwrite`` deletes ``run.json``, the shards and ``outputs`` (file names in
    ``out_dir``) and starts afresh, as does a run after a ``failed`` one without ``resume``. ``resume``
    is refused when the earlier run's parameters differ (naming them). Raises :class:`OutputError` for
    each refusal.
    """
    out = Path(out_dir).expanduser()
    previous = check_out_dir(out, resume=resume, overwrite=overwrite, outputs=outputs, optional=optional)
    if overwrite or (not resume and previous is not None):  # replace our own earlier (or failed) run
        _clear(out, outputs)
        return {}
    if not resume:
        return {}
    as_json = json.loads(json.dumps(params, default=str))
    if previous is not None and previous.get("parameters") != as_json:
        old = previous.get("parameters", {})
        diff = sorted(k for k in set(old) | set(as_json) if old.get(k) != as_json.get(k))
        raise OutputError(
            f"cannot resume {str(out)!r}: it was started with different settings ({', '.join(diff)}); "
            f"rerun with the same options ({_settings(diff, old, as_json)}) or pass --overwrite"
        )
    done = {}
    for path in sorted((out / SHARDS_DIR).glob("shard-*.npz")):
        try:
            done[int(path.stem.split("-")[1])] = ShardStats.load(path)
        except Exception:  # a damaged shard (any read or parse error) is recomputed
            continue
    return done


#: The command-line flag of each run parameter a user sets directly.
_FLAGS = {"batch_size": "--batch-size", "shard_size": "--shard-size", "max_length": "--max-length",
          "dtype": "--dtype", "model": "--model", "stack": "--stack"}


def _settings(keys: Sequence[str], old: RunRecord, new: RunRecord) -> str:
    """The earlier run's value of each differing parameter, as a flag to pass where there is one
    (``--batch-size 8``), else ``name: value (now value)``."""
    parts = []
    for k in keys:
        before, now = old.get(k), new.get(k)
        if k in _FLAGS and before is not None and not isinstance(before, (dict, list)):
            parts.append(f"{_FLAGS[k]} {before}")
        else:
            parts.append(f"{k} was {json.dumps(before)}, now {json.dumps(now)}")
    return "; ".join(parts)


def _clear(out_dir: Path, outputs: Sequence[str]) -> None:
    if not out_dir.is_dir():
        return
    try:
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
