"""Options shared by the commands, their checks, and the inspector they describe.

One definition per option, so a flag means the same on every command that has it: ``--model`` and the
model options (``--device``, ``--dtype``, ``--revision``, ``--trust-remote-code``), ``--max-length``,
``--max-memory``, ``-q/--quiet`` (no progress bar), ``--overwrite`` and ``--resume``. :func:`check_common` validates them
before any model is loaded, :func:`examples` builds the examples every command's ``--help`` ends with.
This module imports neither torch nor transformers (see the comment at the top of ``cli.py``).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..core.errors import InputError

if TYPE_CHECKING:  # the model stack is imported only when a command runs, so --help stays fast
    from ..capture.inspector import AttentionInspector
    from ..runs.data import DataSpec
    from ..runs.sources import DatasetSource

__all__ = [
    "add_data_options",
    "add_device_options",
    "add_max_length_option",
    "add_memory_option",
    "add_model_options",
    "add_output_options",
    "add_quiet_option",
    "check_common",
    "check_data_options",
    "data_spec",
    "examples",
    "load_inspector",
    "show_progress",
]


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--device`` and ``--dtype`` (every model-running command has them)."""
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="model dtype (default float32, exact)")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Add the options every one-model command shares: --model, --device, --dtype, --revision, --trust-remote-code."""
    parser.add_argument("--model", "-m", default=None,
                        help="Hub name or local directory (default: the embedded all-MiniLM-L6-v2, offline)")
    add_device_options(parser)
    parser.add_argument("--revision", default=None, help="model revision on the Hub")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow models with custom code")


def add_data_options(
    parser: argparse.ArgumentParser,
    *,
    batch_size: int,
    dataset_into: argparse._ActionsContainer | None = None,
    streaming: bool = True,
) -> None:
    """Add the dataset options of the dataset commands (batch, compare, importance): ``--dataset``, ``--config``,
    ``--split``, ``--column``, ``--limit``, ``--streaming`` (with ``streaming``), ``--batch-size`` (default
    ``batch_size``), ``--max-length`` and ``--shard-size``. ``dataset_into`` is where ``--dataset`` goes (e.g. a
    mutually exclusive group with ``--text``); :func:`check_data_options` checks their values."""
    (dataset_into or parser).add_argument(
        "--dataset", "-d", default=None,
        help="Hub dataset name or local CSV/JSON/JSONL/Parquet/text file or folder (default: the sample shipped "
        "with the package)")
    parser.add_argument("--config", default=None, help="dataset configuration (Hub datasets)")
    parser.add_argument("--split", default=None, help="dataset split (default: train, or the first one)")
    parser.add_argument("--column", default="text", help="text column, or two columns 'A,B' for sentence pairs")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N rows")
    if streaming:
        parser.add_argument("--streaming", action="store_true",
                            help="read the dataset as a stream (nothing downloaded or converted before the first batch)")
    parser.add_argument("--batch-size", type=int, default=batch_size,
                        help=f"sentences per forward pass (default {batch_size})")
    add_max_length_option(parser)
    parser.add_argument("--shard-size", type=int, default=2048, help="rows per saved, resumable shard (default 2048)")


def check_data_options(args: argparse.Namespace) -> None:
    """Check the values of :func:`add_data_options`' flags and the shared ones (:func:`check_common`) before any
    model or dataset is loaded: ``--limit``, ``--batch-size`` and ``--shard-size`` at least 1. Raises
    :class:`InputError`."""
    check_common(args)
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1 or args.shard_size < 1:
        raise InputError(f"--batch-size and --shard-size must be at least 1, got {args.batch_size}, {args.shard_size}")


def data_spec(args: argparse.Namespace, source: "DatasetSource") -> "DataSpec":
    """The :class:`~hf_attn_inspect.runs.data.DataSpec` of :func:`add_data_options`' flags (and ``--label-column``
    where a command has it) reading ``source`` (``--dataset``, or the texts given on the command line)."""
    from ..runs.data import DataSpec

    return DataSpec(source=source, column=args.column, label_column=getattr(args, "label_column", None),
                    config=args.config, split=args.split, limit=args.limit,
                    streaming=getattr(args, "streaming", False), batch_size=args.batch_size,
                    max_length=args.max_length, shard_size=args.shard_size)


def add_max_length_option(parser: argparse.ArgumentParser, default: int | None = None) -> None:
    """Add ``--max-length N``: truncate inputs to N tokens (at least 2; default: the model's maximum)."""
    where = f"default {default}" if default is not None else "default: the model's maximum"
    parser.add_argument("--max-length", type=int, default=default, metavar="N",
                        help=f"truncate inputs to N tokens ({where})")


def add_memory_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--max-memory SIZE`` (``8GB``, ``512MB``, ``2GiB``; default half of the memory available)."""
    parser.add_argument(
        "--max-memory", default=None, metavar="SIZE",
        help="memory budget of the capture, e.g. 8GB or 512MB (default: half of the memory available to the "
        "process: cgroup limit, ulimit -v, free RAM, free GPU memory); inputs whose full weights exceed it "
        "keep what fits",
    )


def add_quiet_option(parser: argparse.ArgumentParser) -> None:
    """Add ``-q/--quiet`` (``--no-progress`` is the same flag): no progress bar. Without it a progress bar
    is shown on stderr when stderr is a terminal."""
    parser.add_argument("-q", "--quiet", "--no-progress", dest="quiet", action="store_true",
                        help="no progress bar (one is shown only when stderr is a terminal)")


def add_output_options(parser: argparse.ArgumentParser, *, resume: bool = False) -> None:
    """Add ``--overwrite`` (replace files that an earlier run, or someone else, left in the output) and,
    with ``resume``, ``--resume`` (continue a stopped run from its saved shards)."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing output files, including ones hf-attn-inspect did not write")
    if resume:
        parser.add_argument("--resume", action="store_true", help="continue a stopped run from its shards in --out")


def check_common(args: argparse.Namespace) -> None:
    """Check the shared options' values (before any model is loaded, without importing torch):
    ``--max-length`` at least 2, ``--resume`` and ``--overwrite`` not together, ``--layer``/``--head``/
    ``--layers`` not negative (their upper bound needs the model), ``--max-memory`` a size
    (:func:`~hf_attn_inspect.core.memory.parse_size`), a ``--model`` (or compare's models) written as a path
    that exists (:func:`~hf_attn_inspect.core.paths.local_or_hub`). Raises :class:`InputError` (a missing
    model directory: :class:`~hf_attn_inspect.core.errors.ModelLoadError`)."""
    from ..core.memory import parse_size
    from ..core.paths import local_or_hub

    max_length = getattr(args, "max_length", None)
    if max_length is not None and max_length < 2:
        raise InputError(f"--max-length must be at least 2, got {max_length}")
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        raise InputError("--resume and --overwrite exclude each other; pick one")
    for flag in ("layer", "head", "layers"):
        values = getattr(args, flag, None)
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, int) and value < 0:
                raise InputError(f"--{flag} counts from 0; got {value}")
    if getattr(args, "max_memory", None) is not None:
        parse_size(args.max_memory)
    for name in ("model", "model_a", "model_b"):
        value = getattr(args, name, None)
        if isinstance(value, str) and value != "default":
            local_or_hub(value)


def show_progress(args: argparse.Namespace) -> bool:
    """Whether to draw a progress bar: not ``--quiet`` and stderr is a terminal."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def examples(*lines: str) -> str:
    """The ``examples:`` block that ends a command's ``--help`` (one command line per argument)."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def load_inspector(args: argparse.Namespace) -> "AttentionInspector":
    """The :class:`~hf_attn_inspect.AttentionInspector` named by the shared model options (see :func:`add_model_options`)."""
    from ..capture.inspector import resolve_inspector

    return resolve_inspector(
        args.model, device=args.device, dtype=args.dtype, revision=args.revision,
        trust_remote_code=args.trust_remote_code,
    )
