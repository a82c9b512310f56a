"""The ``hf-attn-inspect`` command line: one sub-command per module in :mod:`hf_attn_inspect.commands`.

The command modules import only what they need to build their parsers; each loads models and engines
inside its ``run`` function, so ``--help`` stays fast.

Every deliberate error (:class:`~hf_attn_inspect.core.errors.AttnInspectError`) becomes one line
``error: ...`` on stderr and exit code 2; warnings become one ``warning: ...`` line each.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Sequence

from .commands import batch, compare, debug, importance, inspect, long, verify, view
from .core.errors import AttnInspectError

COMMAND_MODULES = (inspect, verify, debug, view, batch, compare, long, importance)
"""Each module defines ``register(subparsers)``, which adds its parser and sets ``func(args) -> int``."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-attn-inspect",
        description="See and debug the attention of Hugging Face transformer models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code (0 ok, 1 check failed, 2 bad input)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MPLBACKEND", "Agg")
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _one_line_warning
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return int(args.func(args) or 0)
    except AttnInspectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
