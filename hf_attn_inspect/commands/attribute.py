"""``hf-attn-inspect attribute``: how much each token takes from each other under several measures."""

from __future__ import annotations

import argparse

from .options import add_max_length_option, add_model_options, add_output_options, check_common, examples

#: The measures written when ``--measures`` is not given (flow is slow: ask for it by name).
DEFAULT_MEASURES = "weights,norm,norm_layer,norm_res,alti,value_zeroing,rollout"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attribute",
        help="compare attention weights with norm-based, ALTI, value-zeroing, rollout and flow attributions",
        description="Run TEXT through the model and write every chosen measure (measures.safetensors), each token "
        "group's share of the rows per measure, layer and head (token_shares.csv), a plain-words report of how "
        "the measures disagree (report.md) and one figure per measure (its last layer). See "
        "docs/guides/measures.md.",
        epilog=examples(
            'hf-attn-inspect attribute "The cat sat on the mat." --out attribution',
            'hf-attn-inspect attribute "The cat sat." --measures weights,norm,alti,flow --format svg --out attr',
        ),
    )
    p.add_argument("text", metavar="TEXT", help="the text to attribute")
    add_model_options(p)
    p.add_argument("--measures", default=DEFAULT_MEASURES,
                   help=f"comma-separated measures (default {DEFAULT_MEASURES}; also norm_res_ln for BERT-style "
                   "models, alti_rollout, flow)")
    p.add_argument("--out", "-o", required=True, help="output directory")
    p.add_argument("--format", default="png", choices=["png", "svg", "pdf"], help="image format (default png)")
    add_max_length_option(p)
    add_output_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.errors import InputError
    from ..core.files import check_output_dir, check_replaceable, files_kept_on_success, record_outputs

    if not args.text.strip():
        raise InputError("text is empty or blank")
    check_common(args)
    names = [n.strip() for n in args.measures.split(",") if n.strip()]
    if not names:
        raise InputError("--measures is empty; name at least one measure, e.g. weights,norm")
    from ..capture.measures import check_measures

    names = list(check_measures(names))
    out = check_output_dir(args.out)
    figures = [f"{name}.{args.format}" for name in names]
    files = ["measures.safetensors", "token_shares.csv", "report.md", *figures]
    check_replaceable(out, files, overwrite=args.overwrite)

    from .options import load_inspector
    from ..core.files import atomic_write, write_text
    from ..stats.attribution import disagreement_report, token_shares
    from ..views.measures import plot_measure_map
    from ..views.plotting import save_figure

    inspector = load_inspector(args)
    result = inspector(args.text, measures=names, max_length=args.max_length)
    with files_kept_on_success(out):
        record_outputs(out, files)
        written = [result.save(out / "measures.safetensors")]
        table = token_shares(result, names)
        written.append(atomic_write(out / "token_shares.csv", lambda fh: table.to_csv(fh, index=False)))
        report = disagreement_report(result, names)
        written.append(write_text(report, out / "report.md"))
        for name, figure in zip(names, figures):
            written.append(save_figure(plot_measure_map(result, name).figure, out / figure))
    print(report.split("\n\n", 2)[-1].rsplit("\nSee ", 1)[0].rstrip())
    for path in written:
        print(f"wrote {path}")
    return 0
