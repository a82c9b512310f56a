"""``hf-attn-inspect long TEXT_FILE --out DIR``: long-document report from streaming statistics (no [T, T] weights).

Writes to DIR: ``head_metrics.csv`` (one row per layer and head), ``sinks.csv`` (first-token share by
query-position bin), ``distance.csv`` (attention mass by distance bucket), and the figures
``sinks.png``, ``distance.png`` and ``first_token_heads.png``
(:func:`hf_attn_inspect.views.long_context.save_long_context_report`). Every file is written to a temporary
name first and renamed, so an interrupted run leaves no half-written file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import InputError
from ..core.files import check_output_dir, check_replaceable, record_outputs
from ..core.paths import check_utf8
from .options import add_max_length_option, add_model_options, add_output_options, check_common, examples


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "long",
        help="long-document attention report (sinks, distance profile, per-head metrics) without [T, T] memory",
        description="Analyse one long text with streaming attention statistics: per layer and head metrics, "
        "first-token (sink) share by query position and attention mass by distance bucket, as CSV and figures.",
        epilog=examples(
            "hf-attn-inspect long report.txt --out long_out",
            "hf-attn-inspect long book.txt --model ./my-llama --max-length 16384 --layers 0 5 --out long_out --overwrite",
        ),
    )
    p.add_argument("text_file", metavar="TEXT_FILE", help="UTF-8 text file holding the document ('-' for stdin)")
    p.add_argument("--out", "-o", required=True, help="output directory (created if missing)")
    add_output_options(p)
    add_model_options(p)
    add_max_length_option(p)
    p.add_argument("--layers", type=int, nargs="+", default=None, help="0-based layers to analyse (default: all)")
    p.add_argument("--local-window", type=int, default=None, help="half-width w of the local_window metric (tokens)")
    p.add_argument("--bins", type=int, default=32, help="number of query-position bins of the sink curve (default 32)")
    p.add_argument("--q-tile", type=int, default=512, help="query rows per tile (memory/speed trade-off)")
    p.add_argument("--k-tile", type=int, default=2048, help="keys per tile (memory/speed trade-off)")
    p.set_defaults(func=run)


def _read_text(path: str) -> str:
    import sys

    if path == "-":
        return sys.stdin.read()
    p = Path(path)
    if not p.is_file():
        raise InputError(f"text file '{path}' does not exist; give the path of a UTF-8 text file")
    check_utf8(p, "text file")
    return p.read_text(encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    for name, value in (("--bins", args.bins), ("--q-tile", args.q_tile), ("--k-tile", args.k_tile)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    check_common(args)
    if args.local_window is not None and args.local_window < 0:
        raise InputError(f"--local-window must be 0 or more, got {args.local_window}")
    text = _read_text(args.text_file)
    if not text.strip():
        raise InputError(f"text file '{args.text_file}' is empty; give a file with some text in it")
    out = check_output_dir(args.out)  # created with the first file, not before

    import sys
    import warnings

    from .options import load_inspector
    from ..capture.inspector import TruncationWarning
    from ..runs.long_context import document_tokens, long_context_report
    from ..core.kernels import LOCAL_WINDOW
    from ..views.long_context import REPORT_FILES, save_long_context_report

    check_replaceable(out, REPORT_FILES, overwrite=args.overwrite)
    inspector = load_inspector(args)
    limit = args.max_length or inspector.max_length
    n_input = document_tokens(inspector, text)
    if n_input > limit:
        why = "--max-length" if args.max_length else "the model's maximum"
        print(f"note: the text has {n_input:,} tokens; only the first {limit:,} ({why}) are analysed, "
              "the rest is cut", file=sys.stderr, flush=True)
    with warnings.catch_warnings():  # said above, once, before the work starts
        warnings.simplefilter("ignore", TruncationWarning)
        report = long_context_report(
            inspector,
            text,
            max_length=args.max_length,
            layers=args.layers,
            bins=args.bins,
            local_window=LOCAL_WINDOW if args.local_window is None else args.local_window,
            q_tile=args.q_tile,
            k_tile=args.k_tile,
        )

    import matplotlib

    matplotlib.use("Agg")
    record_outputs(out, REPORT_FILES)
    written = save_long_context_report(report, out)

    nl = report.metrics["layer"].nunique()
    nh = report.metrics["head"].nunique()
    top = report.metrics.sort_values("first_token", ascending=False).head(3)
    near = report.distance[report.distance["high"].between(0, 4)].groupby("layer")["mass"].sum() / nh
    cut = f" (cut from {report.n_input_tokens:,}: the rest of the text was not analysed)" if report.truncated else ""
    print(f"{report.model_name}: {report.n_tokens} tokens{cut}, "
          f"{nl} layers x {nh} heads, {'causal' if report.causal else 'bidirectional'} attention")
    print("strongest sink heads (mean attention on the first token): " + ", ".join(
        f"L{int(r.layer)}H{int(r.head)} {r.first_token:.2f}" for r in top.itertuples()))
    print("attention within 4 tokens, per layer: " + ", ".join(f"L{int(k)} {v:.2f}" for k, v in near.items()))
    print(f"wrote {', '.join(p.name for p in written)} to {out}")
    return 0
