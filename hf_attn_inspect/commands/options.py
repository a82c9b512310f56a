"""Options shared by every model-running command, and the inspector they describe."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the model stack is imported only when a command runs, so --help stays fast
    from ..capture.inspector import AttentionInspector

__all__ = ["add_model_options", "load_inspector"]


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Add the options every model-running command shares: --model, --device, --dtype, --revision, --trust-remote-code."""
    parser.add_argument("--model", "-m", default=None,
                        help="Hub name or local directory (default: the embedded all-MiniLM-L6-v2, offline)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="model dtype (default float32, exact)")
    parser.add_argument("--revision", default=None, help="model revision on the Hub")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow models with custom code")


def load_inspector(args: argparse.Namespace) -> "AttentionInspector":
    """The :class:`~hf_attn_inspect.AttentionInspector` named by the shared model options (see :func:`add_model_options`)."""
    from ..capture.inspector import resolve_inspector

    return resolve_inspector(
        args.model, device=args.device, dtype=args.dtype, revision=args.revision,
        trust_remote_code=args.trust_remote_code,
    )
