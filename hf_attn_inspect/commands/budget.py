"""The memory budget on the command line: ``--max-memory``, and ``inspect`` of inputs too long for full weights.

Not a command itself: ``inspect`` and ``view`` use it. :func:`inspect_long_input` runs when the full capture
of ``inspect`` would exceed the budget: it keeps what fits (:func:`hf_attn_inspect.runs.long_inputs.capture_within_budget`),
draws pooled figures, writes every head's metrics and prints what was kept.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capture.inspector import AttentionInspector

__all__ = ["add_memory_option", "inspect_long_input"]

#: Tokens shown at each end of a long input's token list.
_SHOWN_TOKENS = 12


def add_memory_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--max-memory SIZE`` (``8GB``, ``512MB``, ``2GiB``; default half of the memory available)."""
    parser.add_argument(
        "--max-memory", default=None, metavar="SIZE",
        help="memory budget of the capture, e.g. 8GB or 512MB (default: half of the memory available to the "
        "process: cgroup limit, ulimit -v, free RAM, free GPU memory); inputs whose full weights exceed it "
        "keep what fits",
    )


def inspect_long_input(args: argparse.Namespace, inspector: "AttentionInspector", out: Path, stack: str) -> int | None:
    """``inspect`` for an input whose full weights exceed the budget; None when they fit (the normal path runs).

    Writes the head, layer and model-view figures (full weights where they fit the budget and the input is
    at most :data:`~hf_attn_inspect.runs.long_inputs.DRAW_LIMIT` tokens, else pooled attention, each figure
    saying which), ``head_metrics.csv`` (every head's metrics and class) and prints the drawn head's
    analysis and what was kept.
    """
    from ..core.files import atomic_write, check_replaceable, record_outputs
    from ..core.memory import format_bytes, memory_budget
    from ..core.tokens import clean_token
    from ..runs.long_inputs import capture_within_budget
    from ..stats.chapter import analysis_from_metrics, format_raw_fields
    from ..stats.patterns import describe_pattern
    from ..stats.tables import format_head_table
    from ..views.plotting import plot_attention_heatmap, plot_multi_head_attention, save_figure
    from ..views.pooled import plot_pooled_heads, plot_pooled_heatmap, plot_pooled_model_view

    budget = memory_budget(args.max_memory, inspector.device)
    estimate = inspector.estimate_memory(args.text, args.pair, max_length=args.max_length, truncation=not args.no_truncate)
    if estimate.total <= budget.bytes:
        return None
    cap = capture_within_budget(
        inspector, args.text, args.pair, layer=args.layer, head=args.head, stack=stack, budget=budget,
        max_length=args.max_length, truncation=not args.no_truncate,
    )
    li = cap.layer_ids.index(args.layer)
    prefix = f"{args.attention}_" if args.attention != "self" else ""
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
                                    scale=scale)
    else:
        ax = plot_pooled_heatmap(cap.pooled[li, args.head], cap.q_edges, cap.k_edges,
                                 title=f"layer {args.layer}, head {args.head} ({cap.n_tokens:,} tokens, {pooled_note})")
    written.append(save_figure(ax.figure, out / f"{prefix}head_L{args.layer}_H{args.head}.{args.format}"))
    if cap.layer_weights is not None:
        fig = plot_multi_head_attention(cap.layer_weights, q_labels if q_labels == k_labels else None,
                                        title=f"layer {args.layer}: all heads", scale=scale)
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
    shown = cap.tokens if cap.n_tokens <= 2 * _SHOWN_TOKENS else (
        cap.tokens[:_SHOWN_TOKENS] + ["..."] + cap.tokens[-_SHOWN_TOKENS:])
    print(f"tokens ({cap.n_tokens}): {' '.join(shown)}")
    print(f"long input: full weights would need about {format_bytes(cap.full_estimate.total)}, more than the memory "
          f"budget of {cap.budget.describe()}; {cap.kept()}")
    row = cap.table[(cap.table["layer"] == args.layer) & (cap.table["head"] == args.head)]
    if not row.empty and cap.stack != "cross":
        print(f"layer {args.layer}, head {args.head} pattern: {describe_pattern(row.iloc[0])}")
        print("  (the package's classification, hf_attn_inspect.stats.patterns; --all-heads lists every head)")
        print(format_raw_fields(analysis_from_metrics(row.iloc[0].to_dict())))
    if args.all_heads:
        print(f"\nEVERY HEAD ({cap.metrics_stack} attention): metrics averaged over query rows, entropy in nats")
        print(format_head_table(cap.table))
    for path in written:
        print(f"wrote {path}")
    return 0
