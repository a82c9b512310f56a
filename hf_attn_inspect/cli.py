"""The ``hf-attn-inspect`` command line: one sub-command per module in :mod:`hf_attn_inspect.commands`.

Every deliberate error (:class:`~hf_attn_inspect.core.errors.AttnInspectError`) becomes one line
``error: ...`` on stderr and exit code 2; warnings become one ``warning: ...`` line each.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import Sequence

from .core.errors import AttnInspectError

# Each module defines ``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.
COMMAND_MODULES: tuple[str, ...] = ("inspect", "verify", "debug", "view", "batch", "compare", "long")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options every model-running command shares: --model, --device, --dtype, --revision."""
    parser.add_argument("--model", "-m", default=None,
                        help="Hub name or local directory (default: the embedded all-MiniLM-L6-v2, offline)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="model dtype (default float32, exact)")
    parser.add_argument("--revision", default=None, help="model revision on the Hub")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow models with custom code")


def load_inspector(args: argparse.Namespace):
    """Build an :class:`~hf_attn_inspect.AttentionInspector` from the shared model options."""
    from .capture.inspector import AttentionInspector

    return AttentionInspector.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, revision=args.revision,
        trust_remote_code=args.trust_remote_code,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-attn-inspect",
        description="See and debug the attention of Hugging Face transformer models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.commands.{name}").register(sub)
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
