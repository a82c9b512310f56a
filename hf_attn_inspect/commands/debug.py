"""``hf-attn-inspect debug``: run the attention debugging checklist on a model and mark each check."""

from __future__ import annotations

import argparse

from .options import add_model_options, load_inspector


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "debug",
        help="run the attention debugging checklist (NaN, masks, padding, uniform/collapsed heads, scale, sdpa trap)",
        description="Run the debugging checklist on one padded batch of texts and print one marked line per check "
        "([ok], [warn], [FAIL]) with the numbers, causes and fix. Exit 0 when no check fails (warnings allowed), "
        "1 when a check fails, 2 on bad input.",
    )
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to run (default: 6 built-in sentences of different lengths)")
    add_model_options(p)
    p.add_argument("--brief", action="store_true", help="one line per check, without numbers, causes and fixes")
    p.add_argument("--max-length", type=int, default=256, help="truncate texts to this many tokens (default 256)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checks.diagnose import diagnose
    from ..core.errors import InputError

    if any(not t.strip() for t in args.texts):
        raise InputError("a text is empty or blank")
    if args.max_length < 2:
        raise InputError(f"--max-length must be at least 2, got {args.max_length}")
    inspector = load_inspector(args)
    report = diagnose(inspector, args.texts or None, max_length=args.max_length)
    print(report.format(details=not args.brief))
    return report.exit_code
