"""``hf-attn-inspect batch``: per-head attention statistics over a whole dataset."""

from __future__ import annotations

import argparse
import sys


from .options import (add_data_options, add_model_options, add_output_options, add_quiet_option, check_data_options,
                      data_spec, examples, show_progress)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "batch",
        help="analyse the attention of every head over a whole dataset",
        description=(
            "Run the model over every text of a dataset and write per-head statistics (mean and std over "
            "sentences of every metric, pattern-class shares), per-layer statistics, figures, a report "
            "and run.json into --out. Written shard by shard: a stopped run continues with --resume."
        ),
        epilog=examples(
            "hf-attn-inspect batch --limit 100 --out runs/sample",
            "hf-attn-inspect batch --dataset my.csv --column text --max-length 128 --out runs/mine --resume",
        ) + "\n  hf-attn-inspect batch --dataset photos/ --column image --model facebook/dinov2-small --out runs/img",
    )
    add_model_options(p)
    add_data_options(p, batch_size=64)
    p.add_argument("--out", "-o", required=True, help="output directory")
    p.add_argument("--measures", default="weights", metavar="LIST",
                   help="weights (default) or weights,norm: also per-head norm-based shares (norm_first, norm_special, "
                   "norm_punctuation, norm_other: Kobayashi et al. 2020; see docs/guides/measures.md)")
    add_output_options(p, resume=True)
    add_quiet_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.files import check_output_dir

    from ..core.errors import InputError
    from .images import batch_images, is_image_folder, is_image_column

    check_data_options(args)
    measures = {m.strip() for m in args.measures.split(",") if m.strip()}
    if not measures <= {"weights", "norm"}:
        raise InputError(f"batch --measures takes weights and norm, got '{args.measures}'; the other measures "
                         "are per text: hf-attn-inspect attribute")
    check_output_dir(args.out)
    if is_image_folder(args.dataset):  # a folder of images: a vision model's per-head statistics
        return batch_images(args)
    spec = data_spec(args, args.dataset)
    loaded = spec.load()  # check the dataset before loading the model: a wrong column fails in a second
    if is_image_column(loaded, args.column):
        return batch_images(args)

    from ..runs.dataset import OUTPUTS, analyze_dataset
    from ..runs.distributed import process_device, processes
    from ..runs.sharded import check_out_dir
    from ..views.reports import write_dataset_report
    from .options import load_inspector

    if processes().is_main:  # rank 0 checks the folder (and reports a refusal once)
        check_out_dir(args.out, resume=args.resume, overwrite=args.overwrite, outputs=OUTPUTS)
    args.device = process_device(args.device)  # launched on several processes: this rank's own GPU (or the CPU)
    inspector = load_inspector(args)
    probe = None
    if "norm" in measures:
        from ..runs.measure_stats import norm_shares_factory

        probe = norm_shares_factory(inspector.model)
    # rank 0 writes the figures and the report before run.json says "finished", and says what was done
    df = analyze_dataset(inspector, spec, out=args.out, resume=args.resume, overwrite=args.overwrite,
                         progress=show_progress(args), probe=probe, report=lambda d: write_dataset_report(args.out, d))
    if not processes().is_main:
        return 0
    c = df.attrs.get("counts", {})
    print(f"analysed {c.get('analysed', 0):,} of {c.get('rows', 0):,} rows "
          f"({c.get('skipped_total', 0)} skipped, {c.get('truncated', 0)} truncated); "
          f"{len(df)} heads -> {args.out}/head_stats.csv, report.md", file=sys.stdout)
    return 0
