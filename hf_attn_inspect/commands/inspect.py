"""``hf-attn-inspect inspect``: plot one text's attention and print the chosen head's pattern analysis."""

from __future__ import annotations

import argparse
from pathlib import Path

from typing import TYPE_CHECKING

from .options import (
    add_max_length_option, add_memory_option, add_model_options, add_output_options, check_common, examples, load_inspector,
)
from ..core.errors import InputError
from ..core.files import check_output_dir, check_replaceable, record_outputs
from ..core.stacks import ATTENTIONS, CROSS, SELF, is_self_attention, key_stack, model_stack, result_stack

if TYPE_CHECKING:
    from ..capture.inspector import AttentionInspector
    from ..capture.result import AttentionResult
    from ..runs.captured import LongCapture

#: Tokens shown at each end of a long input's token list; inputs up to ``_ALL_TOKENS`` tokens are listed whole.
_SHOWN_TOKENS = 12
_ALL_TOKENS = 64


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="plot a text's attention (head, layer, model view) and analyse one head",
        description="Run TEXT through the model, write the chosen head's heatmap, the chosen layer's heads and "
        "the layers x heads model view as images, and print the pattern analysis of the chosen head.",
        epilog=examples(
            'hf-attn-inspect inspect "The cat sat on the mat."',
            'hf-attn-inspect inspect "The cat sat." --pair "It slept." --layer 5 --head 11 --format svg --out figs',
        ) + "\n  hf-attn-inspect inspect photo.jpg --model google/vit-base-patch16-224 --top-mass 0.6",
    )
    p.add_argument("text", metavar="TEXT", help="the text to inspect, or an image file (.jpg, .png...) for a vision model")
    add_model_options(p)
    p.add_argument("--pair", default=None, metavar="TEXT2",
                   help="second text: a sentence pair, or the decoder text of an encoder-decoder model")
    p.add_argument("--layer", type=int, default=0, help="layer to plot and analyse (0-based, default 0)")
    p.add_argument("--head", type=int, default=0, help="head to plot and analyse (0-based, default 0)")
    p.add_argument("--attention", default=SELF, choices=list(ATTENTIONS),
                   help="for encoder-decoder models: encoder self-, decoder self- or cross-attention")
    p.add_argument("--out", default="attention_out", help="output directory (default ./attention_out)")
    p.add_argument("--format", default="png", choices=["png", "svg", "pdf"], help="image format (default png)")
    p.add_argument("--scale", default=None, choices=["sqrt", "linear"],
                   help="colour scale of the images: sqrt (colour ~ square root of the weight, faint weights stay "
                   "visible) or linear (default: sqrt above 150 tokens, else linear)")
    add_max_length_option(p)
    add_output_options(p)
    p.add_argument("--no-truncate", action="store_true", help="refuse texts longer than the maximum instead of truncating")
    p.add_argument("--all-heads", action="store_true", help="also print every head's metrics and pattern class")
    p.add_argument("--html", action="store_true", help="also write the interactive explorer (attention.html) next to the images")
    p.add_argument("--measure", default="weights", metavar="NAME",
                   help="draw the images from this measure instead of the weights: norm, alti, value_zeroing, rollout, "
                   "flow... (rows shown as shares summing to 1; per-layer measures are drawn as head 0; see "
                   "docs/guides/measures.md)")
    add_memory_option(p)
    img = p.add_argument_group("images (a vision transformer given an image file)")
    img.add_argument("--top-mass", type=float, default=None, metavar="X",
                     help="[CLS] maps keep only the largest patches holding this share (0..1) of the mass (DINO)")
    img.add_argument("--head-fusion", default="mean", choices=["mean", "max", "min"],
                     help="how the rollout over the image fuses each layer's heads (default mean)")
    img.add_argument("--discard-ratio", type=float, default=0.0, metavar="R",
                     help="the rollout drops this share (0..1) of each layer's weakest weights (default 0)")
    p.set_defaults(func=run)


def _check_index(value: int, limit: int, what: str) -> None:
    if not 0 <= value < limit:
        raise InputError(f"{what} {value} is out of range; valid {what}s: 0..{limit - 1}")


def run(args: argparse.Namespace) -> int:
    from .images import inspect_image, is_image_argument

    if is_image_argument(args.text):
        check_common(args)
        return inspect_image(args)
    if not args.text.strip():
        raise InputError("text is empty or blank")
    if args.pair is not None and not args.pair.strip():
        raise InputError("--pair text is empty or blank")
    check_common(args)
    if args.measure != "weights":
        if args.attention != SELF:
            raise InputError("--measure applies to the main stack's self-attention; drop --attention")
        from ..capture.measures import check_measures

        check_measures(args.measure)
    out = check_output_dir(args.out)  # created with the first image, not before
    name = f"{args.attention}_" if args.attention != SELF else ""
    files = [f"{name}head_L{args.layer}_H{args.head}.{args.format}", f"{name}layer_{args.layer}_heads.{args.format}",
             f"{name}model_view.{args.format}"] + (["attention.html"] if args.html else [])
    check_replaceable(out, files, overwrite=args.overwrite)

    from ..core.files import files_kept_on_success
    from ..core.memory import oom_guard

    # all or nothing: no output file is left behind when it fails (also when memory runs out while drawing)
    with files_kept_on_success(out), oom_guard("writing inspect's figures", "try a smaller --max-memory"):
        return _inspect(args, out, name, files)


def _inspect(args: argparse.Namespace, out: Path, name: str, files: list[str]) -> int:
    from ..stats.chapter import analyze_attention_pattern, format_raw_fields
    from ..views.plotting import (
        default_scale, plot_attention_heatmap, plot_model_view, plot_multi_head_attention, save_figure,
    )
    from ..core.tokens import clean_token

    inspector = load_inspector(args)
    dims = inspector.dims()
    stack = model_stack(args.attention, inspector.is_encoder_decoder)
    if stack not in dims:
        raise InputError(f"--attention {args.attention} needs an encoder-decoder model; this one has only self-attention")
    layers, heads = dims[stack]
    _check_index(args.layer, layers, "layer")
    _check_index(args.head, heads, "head")
    from ..runs.captured import LongCapture
    from ..runs.planner import plan_capture, run_plan

    batch = inspector.encode([args.text], None if args.pair is None else [args.pair], max_length=args.max_length,
                             truncation=not args.no_truncate)  # the one tokenization of the text
    if args.measure != "weights":  # a measure of the whole input (no planner: it has no pooled form)
        result = _measure_result(inspector, args)
    else:
        plan = plan_capture(inspector, batch, stack=stack, layer=args.layer, head=args.head, max_memory=args.max_memory)
        result = run_plan(inspector, plan)
    if isinstance(result, LongCapture):  # the full weights do not fit the memory budget: pooled figures, streamed metrics
        return _draw_long_input(args, inspector, result, out)

    att, q_tokens, k_tokens = result.stack(args.attention)
    q_labels, k_labels = [clean_token(t) for t in q_tokens], [clean_token(t) for t in k_tokens]
    weights = result.head(args.layer, args.head, args.attention)
    record_outputs(out, files)
    written = []
    scale = args.scale or default_scale(max(att.shape[-2:]))
    n_input = batch.input_lengths[0] if batch.truncated and batch.truncated[0] and batch.input_lengths else None
    cut = f"cut from {n_input:,} tokens to {len(q_tokens):,}" if n_input else ""
    what = "" if args.measure == "weights" else f"{args.measure}, "
    quantity = "attention weight" if args.measure == "weights" else f"{args.measure} share of the row"
    ax = plot_attention_heatmap(weights, k_labels, q_labels, title=f"{what}layer {args.layer}, head {args.head}"
                                + (f" ({cut})" if cut else ""), scale=scale, vmax="auto", quantity=quantity)
    written.append(save_figure(ax.figure, out / f"{name}head_L{args.layer}_H{args.head}.{args.format}"))
    fig = plot_multi_head_attention(result.layer(args.layer, args.attention), q_labels if q_labels == k_labels else None,
                                    title=f"{what}layer {args.layer}: all heads" + (f" ({cut})" if cut else ""),
                                    scale=scale, vmax="auto", quantity=quantity)
    written.append(save_figure(fig, out / f"{name}layer_{args.layer}_heads.{args.format}"))
    fig = plot_model_view(att, layer_ids=result.layer_ids, head_ids=result.head_ids, scale=scale, quantity=quantity,
                          title=f"Model view{' of ' + args.measure if what else ''} (rows: layers, columns: heads)"
                          + (f", {cut}" if cut else ""))
    written.append(save_figure(fig, out / f"{name}model_view.{args.format}"))
    if args.html:
        from ..views.explorer import write_explorer

        written.append(write_explorer(result, out / "attention.html"))

    print(f"model: {inspector.name}")
    if args.attention == CROSS:
        print("cross-attention: each decoder token (a row, query) over the encoder's tokens (columns, keys); "
              "the self-attention pattern classes do not apply")
        print("decoder " + _token_line(q_tokens, cut))
        print("encoder " + _token_line(k_tokens, cut))
        from ..stats.chapter import analyze_cross_attention, format_cross_analysis

        print(f"layer {args.layer}, head {args.head} cross-attention:")
        print(format_cross_analysis(analyze_cross_attention(weights), k_labels))
    else:
        print(_token_line(q_tokens, cut))
    if weights.shape[0] == weights.shape[1] and args.attention != CROSS:
        from ..stats.patterns import describe_pattern, head_table

        table = head_table(result, which=result_stack(key_stack(args.attention)))
        row = table[(table["layer"] == args.layer) & (table["head"] == args.head)].iloc[0]
        print(f"layer {args.layer}, head {args.head} pattern: {describe_pattern(row)}")
        print("  (the package's classification, hf_attn_inspect.stats.patterns; --all-heads lists every head)")
        causal = result.is_causal if args.attention == SELF else key_stack(args.attention) == "decoder"
        print(format_raw_fields(analyze_attention_pattern(weights, causal=causal), causal=causal))
    if args.all_heads:
        from ..stats.patterns import head_table
        from ..stats.tables import format_head_table

        which = result_stack(key_stack(args.attention))
        if args.attention == CROSS:
            print("(--all-heads: metrics are defined for self-attention; showing the encoder's)")
        print(f"\nEVERY HEAD ({which} attention): metrics averaged over query rows, entropy in nats")
        print(format_head_table(head_table(result, which=which)))
    for path in written:
        print(f"wrote {path}")
    return 0


def _token_line(tokens: list[str], cut: str = "") -> str:
    """``tokens (N): t1 t2 ...``: every token of an input up to 64 tokens; of a longer one the first and
    last 12 around ``...`` (the figures and ``--html`` show them all), wrapped at 100 columns, with
    ``cut`` (``"cut from 4,271 tokens to 512"``) when the text was truncated."""
    import textwrap

    n = len(tokens)
    shown = tokens if n <= _ALL_TOKENS else tokens[:_SHOWN_TOKENS] + ["..."] + tokens[-_SHOWN_TOKENS:]
    line = f"tokens ({n}{'; ' + cut if cut else ''}): {' '.join(shown)}"
    return line if n <= _ALL_TOKENS else textwrap.fill(line, 100, subsequent_indent="  ", break_long_words=False)


def _measure_result(inspector: "AttentionInspector", args: argparse.Namespace) -> "AttentionResult":
    """The text's result with measure ``args.measure`` (rows normalised to shares) in place of the weights; a
    per-layer measure becomes one head per layer (and ``args.head`` 0)."""
    from dataclasses import replace

    from ..core.mixing import row_normalise

    result = inspector(args.text, args.pair, measures=[args.measure], max_length=args.max_length,
                       truncation=not args.no_truncate, max_memory=args.max_memory)
    m = row_normalise(result.measure(args.measure).float().clamp_min(0))
    if m.dim() == 3:
        m, args.head = m[:, None], 0
    return replace(result, attentions=m, head_ids=list(range(m.shape[1])), measures={})


def _draw_long_input(args: argparse.Namespace, inspector: "AttentionInspector", cap: "LongCapture", out: Path) -> int:
    """``inspect`` of an input whose full weights exceed the budget (a pooled plan that ran).

    Writes the head, layer and model-view figures (full weights where the plan kept them, else pooled
    attention, each figure saying which), ``head_metrics.csv`` (every head's metrics and class) and prints
    the drawn head's analysis and what was kept.
    """
    import warnings

    from ..core.files import atomic_write
    from ..core.memory import format_bytes
    from ..core.tokens import clean_token
    from ..stats.chapter import analysis_from_metrics, format_raw_fields
    from ..stats.patterns import describe_pattern
    from ..stats.tables import format_head_table
    from ..views.plotting import plot_attention_heatmap, plot_multi_head_attention, save_figure
    from ..views.pooled import plot_pooled_heads, plot_pooled_heatmap, plot_pooled_model_view

    li = cap.layer_ids.index(args.layer)
    prefix = f"{args.attention}_" if args.attention != SELF else ""
    names = [f"{prefix}head_L{args.layer}_H{args.head}.{args.format}", f"{prefix}layer_{args.layer}_heads.{args.format}",
             f"{prefix}model_view.{args.format}", f"{prefix}head_metrics.csv"]
    check_replaceable(out, names[-1:], overwrite=args.overwrite)  # the images were checked by inspect itself
    record_outputs(out, names)
    scale = args.scale or "sqrt"  # a long input: faint weights stay visible
    q_labels = [clean_token(t) for t in cap.tokens]
    k_labels = [clean_token(t) for t in cap.key_tokens]
    nq, nk = cap.pooled.shape[-2:]
    size = int(cap.q_edges[1] - cap.q_edges[0])
    pooled_note = f"pooled: {nq} x {nk} blocks of {size} tokens"
    written = []
    if cap.head_weights is not None:
        ax = plot_attention_heatmap(cap.head_weights, k_labels, q_labels, title=f"layer {args.layer}, head {args.head}",
                                    scale=scale, vmax="auto")
    else:
        ax = plot_pooled_heatmap(cap.pooled[li, args.head], cap.q_edges, cap.k_edges,
                                 title=f"layer {args.layer}, head {args.head} ({cap.n_tokens:,} tokens, {pooled_note})")
    written.append(save_figure(ax.figure, out / f"{prefix}head_L{args.layer}_H{args.head}.{args.format}"))
    if cap.layer_weights is not None:
        fig = plot_multi_head_attention(cap.layer_weights, q_labels if q_labels == k_labels else None,
                                        title=f"layer {args.layer}: all heads", scale=scale, vmax="auto")
    else:
        fig = plot_pooled_heads(cap.pooled[li], cap.q_edges, cap.k_edges, head_ids=cap.head_ids,
                                title=f"layer {args.layer}: all heads ({cap.n_tokens:,} tokens, {pooled_note})")
    written.append(save_figure(fig, out / f"{prefix}layer_{args.layer}_heads.{args.format}"))
    fig = plot_pooled_model_view(cap.pooled, cap.q_edges, cap.k_edges, layer_ids=cap.layer_ids, head_ids=cap.head_ids)
    written.append(save_figure(fig, out / f"{prefix}model_view.{args.format}"))
    written.append(atomic_write(out / f"{prefix}head_metrics.csv", lambda fh: cap.table.to_csv(fh, index=False)))
    if args.html:
        warnings.warn("--html needs every head's full weights, which do not fit the memory budget for this input; "
                      "skipped (hf-attn-inspect view TEXT --layers L writes an explorer of chosen layers)")

    print(f"model: {inspector.name}")
    print(_token_line(cap.tokens))
    print(f"long input: full weights would need about {format_bytes(cap.full_estimate.total)}, more than the memory "
          f"budget of {cap.budget.describe()}; {cap.kept()}")
    row = cap.table[(cap.table["layer"] == args.layer) & (cap.table["head"] == args.head)]
    if not row.empty and is_self_attention(cap.stack):
        print(f"layer {args.layer}, head {args.head} pattern: {describe_pattern(row.iloc[0])}")
        print("  (the package's classification, hf_attn_inspect.stats.patterns; --all-heads lists every head)")
        print(format_raw_fields(analysis_from_metrics(row.iloc[0].to_dict())))
    if args.all_heads:
        print(f"\nEVERY HEAD ({cap.metrics_stack} attention): metrics averaged over query rows, entropy in nats")
        print(format_head_table(cap.table))
    for path in written:
        print(f"wrote {path}")
    return 0
