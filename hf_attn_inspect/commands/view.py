"""``hf-attn-inspect view TEXT [--pair TEXT2] -o attention.html``: write the interactive explorer page."""

from __future__ import annotations

import argparse
from pathlib import Path

from .budget import add_memory_option
from .options import add_model_options, load_inspector
from ..core.errors import InputError


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
                   help="keep only these layers (0-based): what a long input's full weights fit in memory for")
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
    result = inspector(args.text, args.pair, max_length=args.max_length, layers=args.layers, max_memory=args.max_memory)
    path = write_explorer(result, out, rollout=not args.no_rollout)
    size = path.stat().st_size / 1e6
    print(f"wrote {path} ({result.seq_len} tokens, {result.num_layers} layers x {result.num_heads} heads, {size:.2f} MB)")
    return 0
