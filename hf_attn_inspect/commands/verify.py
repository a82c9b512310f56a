"""``hf-attn-inspect verify``: prove that captured attention equals the model's own, layer by layer."""

from __future__ import annotations

import argparse

from .options import add_model_options, examples, load_inspector


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check captured weights against eager output_attentions and outputs against the model's own attention",
        description="For every layer, on one padded batch: captured weights vs eager output_attentions, and "
        "reference weights @ V vs the attention output of the model's own implementation. "
        "Exit 0 when every difference is within tolerance, 1 otherwise, 2 on bad input.",
        epilog=examples(
            "hf-attn-inspect verify",
            'hf-attn-inspect verify --model ./my-model --device cpu "A first text." "A second, longer text."',
        ),
    )
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to check (default: 4 built-in sentences of different "
                   "lengths); image files for a vision model (default: two built-in images)")
    add_model_options(p)
    p.add_argument("--tolerance", type=float, default=1e-5, help="largest accepted absolute difference (default 1e-5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.errors import InputError

    if any(not t.strip() for t in args.texts):
        raise InputError("a text is empty or blank")
    if not args.tolerance > 0:
        raise InputError(f"--tolerance must be above 0, got {args.tolerance}")

    from ..checks.verify import verify

    inspector = load_inspector(args)
    from .images import refuse_images_for_text_model

    refuse_images_for_text_model(inspector, args.texts)
    report = verify(inspector, args.texts or None, tolerance=args.tolerance)
    print(report.format())
    return 0 if report.passed else 1
