"""``hf-attn-inspect view TEXT [--pair TEXT2] -o attention.html``: write the interactive explorer page."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .options import (
    add_max_length_option, add_memory_option, add_model_options, add_output_options, check_common, examples, load_inspector,
)
from ..core.errors import InputError
from ..core.files import check_output_dir, check_replaceable

if TYPE_CHECKING:
    from ..runs.captured import ExplorerCapture


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
    p.add_argument("text", help="the input text, or an image file (.jpg, .png...) for a vision model")
    p.add_argument("--pair", default=None, help="second text of a sentence pair (decoder text for encoder-decoder models)")
    p.add_argument("-o", "--output", default="attention.html", help="HTML file to write (default: attention.html)")
    add_max_length_option(p)
    add_output_options(p)
    p.add_argument("--no-rollout", action="store_true", help="leave the precomputed attention rollout out")
    p.add_argument("--layers", type=int, nargs="+", default=None, metavar="L",
                   help="keep only these layers (0-based); when every layer's full weights exceed the memory budget, "
                   "these keep full weights and every other layer is drawn pooled (at most 256 x 256 blocks per head)")
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

    from .images import is_image_argument, view_image

    if is_image_argument(args.text):
        return view_image(args, out)

    from ..views.explorer import write_explorer

    from ..runs.captured import ExplorerCapture
    from ..runs.planner import plan_capture, run_plan

    inspector = load_inspector(args)
    batch = inspector.encode([args.text], None if args.pair is None else [args.pair], max_length=args.max_length)
    plan = plan_capture(inspector, batch, layers=args.layers, max_memory=args.max_memory)
    result = run_plan(inspector, plan)
    if isinstance(result, ExplorerCapture):  # every layer's full weights exceed the budget: the rest pooled
        return _view_long_input(result, out)
    path = write_explorer(result, out, rollout=not args.no_rollout)
    size = path.stat().st_size / 1e6
    print(f"wrote {path} ({result.seq_len} tokens, {result.num_layers} layers x {result.num_heads} heads, {size:.2f} MB)")
    return 0


def _view_long_input(cap: "ExplorerCapture", out: Path) -> int:
    """Every layer's full weights exceed the budget: chosen layers full (when they fit), the rest pooled."""
    import warnings

    from ..core.memory import format_bytes
    from ..views.explorer import write_explorer

    for note in cap.notes:
        warnings.warn(note)
    path = write_explorer(cap.result, out, rollout=False, pooled=cap)
    size = path.stat().st_size / 1e6
    print(f"long input: full weights of every layer would need about {format_bytes(cap.full_estimate.total)}, more "
          f"than the memory budget of {cap.budget.describe()}; the page holds {cap.kept()}")
    print(f"wrote {path} ({cap.result.seq_len} tokens, {size:.2f} MB)")
    return 0
