"""``hf-attn-inspect compare MODEL_A MODEL_B``: which heads' attention differs between two checkpoints."""

from __future__ import annotations

import argparse

from ..core.stacks import SELF_STACKS
from .options import (add_data_options, add_device_options, add_output_options, add_quiet_option, check_data_options,
                      data_spec, examples, show_progress)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="compare the attention of two checkpoints head by head (JS divergence, metric deltas)",
        description="Run two models with the same tokenizer on the same texts and rank their heads by the "
        "Jensen-Shannon divergence (nats) between their attention rows. Writes head_divergence.csv, "
        "divergence_map.png, head_diffs.png, report.md and run.json to --out.",
        epilog=examples(
            "hf-attn-inspect compare default ./finetuned --limit 200 --out cmp",
            'hf-attn-inspect compare default ./finetuned --text "The cat sat on the mat." --out cmp --overwrite',
        ),
    )
    p.add_argument("model_a", help="model A: Hub name or local checkpoint directory ('default' = the embedded model)")
    p.add_argument("model_b", help="model B: Hub name or local checkpoint directory ('default' = the embedded model)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", "-t", action="append", default=None, help="a text to compare on (repeatable)")
    src.add_argument("--image", action="append", default=None,
                     help="an image file to compare two vision checkpoints on (repeatable)")
    add_data_options(p, batch_size=16, dataset_into=src)
    p.add_argument("--stack", default=None, choices=list(SELF_STACKS),
                   help="which attention of encoder-decoder models (default: encoder)")
    p.add_argument("--top", type=int, default=4, help="number of most-changed heads drawn as diff heatmaps (default 4)")
    add_device_options(p)
    p.add_argument("--out", "-o", required=True, help="output directory")
    add_output_options(p, resume=True)
    add_quiet_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.errors import InputError
    from ..core.files import check_output_dir

    check_data_options(args)
    if args.top < 0:
        raise InputError(f"--top must be 0 or more, got {args.top}")
    if args.text is not None and all(not t.strip() for t in args.text):
        raise InputError("--text is empty or blank; give a text to compare on")
    check_output_dir(args.out)
    models = [None if m == "default" else m for m in (args.model_a, args.model_b)]
    from .images import compare_images, is_image_column, is_image_folder

    if args.image or is_image_folder(args.dataset):  # two vision checkpoints on images
        return compare_images(args, models)
    spec = data_spec(args, args.text if args.text is not None else args.dataset)
    loaded = spec.load()  # check the data before loading the models: a wrong column fails in a second
    if is_image_column(loaded, args.column):
        return compare_images(args, models)

    from ..capture.inspector import resolve_inspector
    from ..runs.compare import OPTIONAL, OUTPUTS, compare_models
    from ..runs.sharded import check_out_dir
    from ..runs.distributed import process_device, processes
    from ..views.comparison import UNCHANGED, changed_heads, write_comparison

    if processes().is_main:  # rank 0 checks the folder (and reports a refusal once)
        check_out_dir(args.out, resume=args.resume, overwrite=args.overwrite, outputs=OUTPUTS, optional=OPTIONAL)
    device = process_device(args.device)  # launched on several processes: this rank's own GPU (or the CPU)
    a = resolve_inspector(models[0], device=device, dtype=args.dtype, what="model A")
    b = resolve_inspector(models[1], a.tokenizer, device=device, dtype=args.dtype, what="model B")
    # rank 0 writes the figures and the report before run.json says "finished", and says what was done
    df = compare_models(a, b, spec, out=args.out, overwrite=args.overwrite, resume=args.resume, stack=args.stack,
                        progress=show_progress(args), report=lambda d: write_comparison(args.out, d, a, b, top=args.top))
    if not processes().is_main:
        return 0
    n = df.attrs["counts"]["analysed"]
    changed = changed_heads(df)
    if changed.empty:
        print(f"compared {len(df)} heads on {n} text{'s' if n != 1 else ''}: no head changed (every JS divergence "
              f"is below {UNCHANGED:g} nats; the two models attend alike)")
    else:
        print(f"compared {len(df)} heads on {n} text{'s' if n != 1 else ''}; most changed (JS divergence, nats):")
    for row in changed.head(max(args.top, 5)).itertuples():
        cls = ""
        if "class_a" in df.columns:
            cls = f"  {row.class_a} -> {row.class_b}"
        print(f"  layer {row.layer:2d} head {row.head:2d}  {row.js_divergence:.4f}{cls}")
    skipped = df.attrs["counts"]["skipped_total"]
    if skipped:
        print(f"skipped {skipped} empty or non-text row{'s' if skipped != 1 else ''}")
    print(f"wrote {args.out}/head_divergence.csv, divergence_map.png, head_diffs.png, report.md, run.json")
    return 0
