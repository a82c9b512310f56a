"""``hf-attn-inspect view TEXT [--pair TEXT2] -o attention.html``: write the interactive explorer page."""

from __future__ import annotations

import argparse
from pathlib import Path

from .budget import add_memory_option
from .options import add_max_length_option, add_model_options, add_output_options, check_common, examples, load_inspector
from ..core.errors import InputError
from ..core.files import check_output_dir, check_replaceable


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "view",
        help="write a self-contained interactive HTML explorer of one text's attention",
        description="Capture every layer's and head's attention for TEXT and write one offline HTML file "
        "(head view, matrix view, model view, per-head metrics).",
        epilog=examples(
            'hf-attn-inspect view "The cat sat on the mat."',
            'hf-attn-inspect view "The cat sat." --pair "It slept." -o pair.html --overwrite',
        ),
    )
    p.add_argument("text", help="the input text")
    p.add_argument("--pair", default=None, help="second text of a sentence pair (decoder text for encoder-decoder models)")
    p.add_argument("-o", "--output", default="attention.html", help="HTML file to write (default: attention.html)")
    add_max_length_option(p)
    add_output_options(p)
    p.add_argument("--no-rollout", action="store_true", help="leave the precomputed attention rollout out")
    p.add_argument("--layers", type=int, nargs="+", default=None, metavar="L",
                   help="keep only these layers (0-based): what a long input's full weights fit in memory for")
    add_model_options(p)
    add_memory_option(p)
    p.set_defaults(func=run)


def _is_explorer_page(path: Path) -> bool:
    """True when ``path`` is an explorer page this command wrote (its generator tag, in the page's head)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return '<meta name="generator" content="hf-attn-inspect">' in fh.read(4096)
    except OSError:
        return False


def run(args: argparse.Namespace) -> int:
    if not args.text.strip():
        raise InputError("the text is empty; pass the text to look at, e.g. hf-attn-inspect view \"The cat sat.\"")
    out = Path(args.output).expanduser()
    if out.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"output {out} must end in .html")
    check_common(args)
    check_output_dir(out.parent)
    if out.is_dir():
        raise InputError(f"output {out} is a directory; give the path of an .html file")
    check_replaceable(out.parent, [out.name], overwrite=args.overwrite, owned=[out.name] if _is_explorer_page(out) else [])

    from ..views.explorer import write_explorer

    inspector = load_inspector(args)
    result = inspector(args.text, args.pair, max_length=args.max_length, layers=args.layers, max_memory=args.max_memory)
    path = write_explorer(result, out, rollout=not args.no_rollout)
    size = path.stat().st_size / 1e6
    print(f"wrote {path} ({result.seq_len} tokens, {result.num_layers} layers x {result.num_heads} heads, {size:.2f} MB)")
    return 0
