"""``hf-attn-inspect view TEXT [--pair TEXT2] -o attention.html``: write the interactive explorer page."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .budget import add_memory_option
from .options import add_model_options, load_inspector
from ..core.errors import InputError

if TYPE_CHECKING:
    from ..capture.inspector import AttentionInspector
    from ..core.memory import MemoryBudget


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "view",
        help="write a self-contained interactive HTML explorer of one text's attention",
        description="Capture every layer's and head's attention for TEXT and write one offline HTML file "
        "(head view, matrix view, model view, per-head metrics).",
    )
    p.add_argument("text", help="the input text")
    p.add_argument("--pair", default=None, help="second text of a sentence pair (decoder text for encoder-decoder models)")
    p.add_argument("-o", "--output", default="attention.html", help="HTML file to write (default: attention.html)")
    p.add_argument("--max-length", type=int, default=None, help="truncate the input to this many tokens")
    p.add_argument("--no-rollout", action="store_true", help="leave the precomputed attention rollout out")
    p.add_argument("--layers", type=int, nargs="+", default=None, metavar="L",
                   help="keep only these layers (0-based); when every layer's full weights exceed the memory budget, "
                   "these keep full weights and every other layer is drawn pooled (at most 256 x 256 blocks per head)")
    add_model_options(p)
    add_memory_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..views.explorer import write_explorer

    if not args.text.strip():
        raise InputError("the text is empty; pass the text to look at, e.g. hf-attn-inspect view \"The cat sat.\"")
    out = Path(args.output)
    if out.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"output {out} must end in .html")
    if args.max_length is not None and args.max_length < 2:
        raise InputError("--max-length must be at least 2")
    inspector = load_inspector(args)
    from ..core.memory import format_bytes, memory_budget

    budget = memory_budget(args.max_memory, inspector.device)
    estimate = inspector.estimate_memory(args.text, args.pair, max_length=args.max_length)
    if estimate.total > budget.bytes:
        return _view_long_input(args, inspector, out, budget, format_bytes(estimate.total))
    result = inspector(args.text, args.pair, max_length=args.max_length, layers=args.layers, max_memory=args.max_memory)
    path = write_explorer(result, out, rollout=not args.no_rollout)
    size = path.stat().st_size / 1e6
    print(f"wrote {path} ({result.seq_len} tokens, {result.num_layers} layers x {result.num_heads} heads, {size:.2f} MB)")
    return 0


def _view_long_input(
    args: argparse.Namespace, inspector: "AttentionInspector", out: Path, budget: "MemoryBudget", full: str
) -> int:
    """Every layer's full weights exceed the budget: chosen layers full (when they fit), the rest pooled."""
    import warnings

    from ..runs.long_inputs import capture_for_explorer
    from ..views.explorer import write_explorer

    cap = capture_for_explorer(inspector, args.text, args.pair, layers=args.layers, budget=budget,
                               max_length=args.max_length)
    for note in cap.notes:
        warnings.warn(note)
    path = write_explorer(cap.result, out, rollout=False, pooled=cap)
    size = path.stat().st_size / 1e6
    print(f"long input: full weights of every layer would need about {full}, more than the "
          f"memory budget of {budget.describe()}; the page holds {cap.kept()}")
    print(f"wrote {path} ({cap.result.seq_len} tokens, {size:.2f} MB)")
    return 0
