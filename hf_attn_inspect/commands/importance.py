"""``hf-attn-inspect importance``: which heads matter, by ablation or gradient, with a pruning curve."""

from __future__ import annotations

import argparse

from .options import (add_data_options, add_model_options, add_output_options, add_quiet_option, check_data_options,
                      data_spec, examples, show_progress)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "importance",
        help="score every head by how much the model needs it (ablation or gradient), with a pruning curve",
        description=(
            "Remove each attention head in turn (zero or mean ablation, exact, any architecture) or take "
            "Michel et al.'s gradient importance, over the texts or a dataset; write head_importance.csv, "
            "importance_map.png, pruning_curve.csv/.png, report.md and run.json into --out. The objective "
            "follows the model: next-token loss (causal LM), masked-LM loss, classification loss with "
            "--label-column, else 1 - cosine of the pooled final hidden state."
        ),
        epilog=examples(
            "hf-attn-inspect importance --limit 64 --out runs/importance",
            "hf-attn-inspect importance --method gradient --dataset my.csv --column text --out runs/imp --resume",
        ),
    )
    add_model_options(p)
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to score on (instead of --dataset)")
    add_data_options(p, batch_size=32, streaming=False)
    p.add_argument("--label-column", default=None, help="label column (sequence classification: loss and accuracy)")
    p.add_argument("--method", choices=["ablation", "gradient"], default="ablation",
                   help="ablation: objective change when the head is removed (default); gradient: |dL/d gate|")
    p.add_argument("--ablate", choices=["zero", "mean"], default="zero",
                   help="how a head is removed: zero output (default) or its mean output over the data")
    p.add_argument("--heads", default=None,
                   help="also remove these heads together (LAYER.HEAD,LAYER.HEAD,...) and print the objective before and after")
    p.add_argument("--prune-step", type=float, default=0.1,
                   help="share of heads removed per pruning-curve step (default 0.1)")
    p.add_argument("--reestimate", action="store_true", help="recompute importance after each pruning step")
    p.add_argument("--no-pruning", action="store_true", help="skip the pruning curve")
    p.add_argument("--seed", type=int, default=0, help="seed of the masked-LM masking (default 0)")
    p.add_argument("--out", "-o", required=True, help="output directory")
    add_output_options(p, resume=True)
    add_quiet_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.errors import InputError
    from ..core.files import check_output_dir

    if args.texts and args.dataset is not None:
        raise InputError("give texts or --dataset, not both")
    check_data_options(args)
    if not 0 < args.prune_step <= 1:
        raise InputError(f"--prune-step must be in (0, 1], got {args.prune_step}")
    check_output_dir(args.out)
    spec = data_spec(args, list(args.texts) if args.texts else args.dataset)
    spec.load()  # check the data (columns, label column) before loading the model: a wrong column fails in a second
    from ..capture.ablation import parse_heads, resolve_heads

    if args.heads is not None:
        parse_heads(args.heads)  # a typo fails before the model loads
    from ..runs.distributed import alone, process_device, processes
    from ..runs.importance import (
        IMPORTANCE_OPTIONAL, IMPORTANCE_OUTPUTS, ablation_effect, head_importance, pruning_curve,
        write_importance_tables,
    )
    from ..runs.sharded import check_out_dir
    from ..views.importance import write_importance_report
    from ..views.words import counted
    from .options import load_inspector

    if processes().is_main:  # rank 0 checks the folder (and reports a refusal once)
        check_out_dir(args.out, resume=args.resume, overwrite=args.overwrite, outputs=IMPORTANCE_OUTPUTS,
                      optional=IMPORTANCE_OPTIONAL)
    args.device = process_device(args.device)  # launched on several processes: this rank's own GPU (or the CPU)
    inspector = load_inspector(args)
    if args.heads is not None:
        resolve_heads(inspector, args.heads)
    progress = show_progress(args)
    done: dict[str, object] = {}

    def report(df) -> None:  # noqa: ANN001 (the importance table)
        """Rank 0's pruning curve, ablation effect and report (alone: the other ranks are done), written
        before run.json says "finished"."""
        curve = effect = None
        with alone():
            if not args.no_pruning:
                curve = pruning_curve(inspector, spec, df, step=args.prune_step, how=args.ablate,
                                      reestimate=args.reestimate, method=args.method, seed=args.seed, progress=progress)
                write_importance_tables(args.out, curve=curve)
            if args.heads is not None:
                effect = ablation_effect(inspector, spec, args.heads, how=args.ablate, seed=args.seed,
                                         progress=progress)
        write_importance_report(args.out, df, curve, effect)
        run_record = df.attrs["run"]
        run_record["pruning_steps"] = None if curve is None else len(curve)
        if effect is not None:
            run_record["ablation_effect"] = effect
        done["effect"] = effect

    df = head_importance(inspector, spec, method=args.method, how=args.ablate, seed=args.seed, out=args.out,
                         resume=args.resume, overwrite=args.overwrite, progress=progress, report=report)
    if not processes().is_main:  # rank 0 computed the pruning curve and wrote the report
        return 0
    effect = done.get("effect")
    unit = df.attrs.get("unit", "")
    top = df.sort_values("rank").iloc[0]
    print(f"scored {len(df)} heads on {counted(int(df['n_sentences'].iloc[0]), 'sentence')} ({args.method}); most important: "
          f"layer {int(top['layer'])} head {int(top['head'])} ({top['importance']:+.4g}{' ' + unit if args.method == 'ablation' else ''}) "
          f"-> {args.out}/head_importance.csv, report.md")
    if effect is not None:
        print(f"removing {', '.join(effect['heads'])} ({args.ablate}): objective {effect['before']:.4g} -> "
              f"{effect['after']:.4g} {unit} (change {effect['change']:+.4g} +- {effect['stderr']:.2g})")
    return 0
