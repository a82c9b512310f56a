"""``hf-attn-inspect debug``: run the attention debugging checklist on a model and mark each check."""

from __future__ import annotations

import argparse

from .options import add_max_length_option, add_model_options, check_common, examples, load_inspector


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "debug",
        help="run the attention debugging checklist (NaN, masks, padding, uniform/collapsed heads, scale, sdpa trap)",
        description="Run the debugging checklist on one padded batch of texts and print one marked line per check "
        "([ok], [warn], [FAIL]) with the numbers, causes and fix. Exit 0 when no check fails (warnings allowed), "
        "1 when a check fails, 2 on bad input.",
        epilog=examples(
            "hf-attn-inspect debug",
            'hf-attn-inspect debug --model ./my-model --brief "A short text." "A much longer text to pad against."',
        ),
    )
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to run (default: 6 built-in sentences of different lengths); "
                   "image files for a vision model (default: two built-in images)")
    add_model_options(p)
    p.add_argument("--brief", action="store_true", help="one line per check, without numbers, causes and fixes")
    add_max_length_option(p, default=256)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.errors import InputError

    if any(not t.strip() for t in args.texts):
        raise InputError("a text is empty or blank")
    check_common(args)

    from ..checks.diagnose import diagnose

    inspector = load_inspector(args)
    from .images import refuse_images_for_text_model

    refuse_images_for_text_model(inspector, args.texts)
    report = diagnose(inspector, args.texts or None, max_length=args.max_length)
    print(report.format(details=not args.brief))
    return report.exit_code
