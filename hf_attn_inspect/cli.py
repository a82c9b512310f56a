"""The ``hf-attn-inspect`` command line: one sub-command per module in :mod:`hf_attn_inspect.commands`.

Every deliberate error (:class:`~hf_attn_inspect.core.errors.AttnInspectError`) becomes one line
``error: ...`` on stderr and exit code 2; warnings become one ``warning: ...`` line each.
"""

# Lazy imports: how a command module is written (so --help and bad input answer in a fraction of a second).
#
# * At module level a command imports only the standard library, ``.options`` and ``..core.errors`` /
#   ``..core.files`` (none of them imports torch, transformers, datasets, pandas or matplotlib; the
#   package ``__init__`` is lazy too). ``register(subparsers)`` builds the parser from these alone, with
#   the shared options of ``commands/options.py`` and ``epilog=examples(...)`` (two example lines).
# * ``run(args)`` first checks everything that needs no model: ``check_common(args)``, the command's own
#   flag values, texts and input files, ``core.files.check_output_dir`` for outputs; only then does it
#   import the engines (``from ..runs.x import ...`` inside the function) and load the model.
# * Files: a command writing files takes ``add_output_options`` (``--overwrite``), refuses files it did
#   not write with ``core.files.check_replaceable`` before loading the model, and calls
#   ``core.files.record_outputs`` just before its first write (the folder is created by that write).
# * tests/test_cli_consistency.py asserts that torch and transformers are not imported by ``--help`` of
#   every registered command nor by the early errors it lists (add a new command's cases there), and
#   that shared options and the two examples are alike on every command.

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import Sequence

from . import __version__
from .commands import attribute, batch, compare, debug, generate, importance, inspect, long, verify, view
from .core.errors import AttnInspectError

COMMAND_MODULES = (inspect, verify, debug, view, batch, compare, long, importance, generate, attribute)
"""Each module defines ``register(subparsers)``, which adds its parser and sets ``func(args) -> int``."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-attn-inspect",
        description="See and debug the attention of Hugging Face transformer models.",
        epilog="Run 'hf-attn-inspect COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMAND_MODULES:
        module.register(sub)
    for command in sub.choices.values():  # keep the line breaks of each command's examples
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; an unknown option is reported with the usage of the command it was given to."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _quiet_libraries() -> None:
    """transformers logs only errors and shows no progress bars; set through the environment when it is
    not imported yet (so it is not imported for this), directly when it is (a notebook calling main)."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    else:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _one_line_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code (0 ok, 1 check failed, 2 bad input)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MPLBACKEND", "Agg")
    parser = build_parser()
    args = _parse(parser, argv)
    warnings.showwarning = _one_line_warning
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    _quiet_libraries()
    started = time.time()
    try:
        return int(args.func(args) or 0)
    except AttnInspectError as exc:
        if not exc.relayed:  # another process of a distributed run reports it
            message = str(exc)
            print(f"error: {message}{'' if '--resume' in message else _resume_hint(args, started)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted{_resume_hint(args, started)}", file=sys.stderr)
        return 130


def _resume_hint(args: argparse.Namespace, started: float) -> str:
    """How to finish the run this command left unfinished in ``--out`` (a command with ``--resume``), else ""."""
    out = getattr(args, "out", None)
    if out is None or not hasattr(args, "resume"):
        return ""
    try:
        if os.stat(os.path.join(os.path.expanduser(out), "run.json")).st_mtime < started - 1:
            return ""  # not this command's run: it stopped before starting one
    except OSError:
        return ""
    from .runs.sharded import unfinished_hint

    return unfinished_hint(out)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
