"""``hf-attn-inspect compare MODEL_A MODEL_B``: which heads' attention differs between two checkpoints."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="compare the attention of two checkpoints head by head (JS divergence, metric deltas)",
        description="Run two models with the same tokenizer on the same texts and rank their heads by the "
        "Jensen-Shannon divergence (nats) between their attention rows. Writes head_divergence.csv, "
        "divergence_map.png, head_diffs.png, report.md and run.json to --out.",
    )
    p.add_argument("model_a", help="model A: Hub name or local checkpoint directory ('default' = the embedded model)")
    p.add_argument("model_b", help="model B: Hub name or local checkpoint directory ('default' = the embedded model)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", "-t", action="append", default=None, help="a text to compare on (repeatable)")
    src.add_argument("--dataset", "-d", default=None,
                     help="Hub dataset or local CSV/JSON/JSONL/Parquet/text file or folder (default: the shipped sample)")
    p.add_argument("--config", default=None, help="dataset configuration (Hub datasets)")
    p.add_argument("--split", default=None, help="dataset split (default: train, or the first one)")
    p.add_argument("--column", default="text", help="text column, or two separated by a comma for sentence pairs")
    p.add_argument("--limit", type=int, default=None, help="use only the first N rows")
    p.add_argument("--streaming", action="store_true",
                   help="read the dataset as a stream (nothing downloaded or converted before the first batch)")
    p.add_argument("--batch-size", type=int, default=16, help="texts per padded batch (default 16)")
    p.add_argument("--shard-size", type=int, default=2048, help="rows per resumable shard (default 2048)")
    p.add_argument("--max-length", type=int, default=None, help="truncate texts to this many tokens")
    p.add_argument("--stack", default=None, choices=["self", "encoder", "decoder"],
                   help="which attention of encoder-decoder models (default: encoder)")
    p.add_argument("--top", type=int, default=4, help="number of most-changed heads drawn as diff heatmaps (default 4)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="model dtype (default float32)")
    p.add_argument("--out", "-o", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace a finished comparison in --out")
    p.add_argument("--resume", action="store_true", help="continue a stopped comparison from its shards in --out")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..capture.inspector import resolve_inspector
    from ..core.errors import InputError
    from ..runs.compare import compare_models
    from ..runs.distributed import process_device, processes
    from ..views.comparison import write_comparison

    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.top < 0:
        raise InputError(f"--top must be 0 or more, got {args.top}")
    models = [None if m == "default" else m for m in (args.model_a, args.model_b)]
    source = args.text if args.text is not None else args.dataset
    device = process_device(args.device)  # launched on several processes: this rank's own GPU (or the CPU)
    a = resolve_inspector(models[0], device=device, dtype=args.dtype, what="model A")
    b = resolve_inspector(models[1], a.tokenizer, device=device, dtype=args.dtype, what="model B")
    df = compare_models(
        a, b, source, out=args.out, overwrite=args.overwrite, resume=args.resume, column=args.column, config=args.config,
        split=args.split, limit=args.limit, batch_size=args.batch_size, shard_size=args.shard_size, max_length=args.max_length,
        stack=args.stack, progress=not args.quiet and sys.stderr.isatty(), streaming=args.streaming,
    )
    if not processes().is_main:  # rank 0 writes the figures and the report and says what was done
        return 0
    write_comparison(args.out, df, a, b, top=args.top)
    n = df.attrs["counts"]["analysed"]
    print(f"compared {len(df)} heads on {n} text{'s' if n != 1 else ''}; most changed (JS divergence, nats):")
    for row in df.head(max(args.top, 5)).itertuples():
        cls = ""
        if "class_a" in df.columns:
            cls = f"  {row.class_a} -> {row.class_b}"
        print(f"  layer {row.layer:2d} head {row.head:2d}  {row.js_divergence:.4f}{cls}")
    skipped = df.attrs["counts"]["skipped_total"]
    if skipped:
        print(f"skipped {skipped} empty or non-text row{'s' if skipped != 1 else ''}")
    print(f"wrote {args.out}/head_divergence.csv, divergence_map.png, head_diffs.png, report.md, run.json")
    return 0
