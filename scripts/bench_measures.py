#!/usr/bin/env python
"""Time of each measure as a ratio to the weights-only capture, on the embedded MiniLM at ``--tokens`` tokens.

For every measure: the best of ``--repeats`` runs of ``inspector(text, measures=[name])`` (capture included)
divided by the best of as many weights-only ``inspector(text)`` runs alternating with them (value zeroing: one
run, over the first weights-only best). Value zeroing is also stated in layer runs: its time over
the time of one run of one layer on the text (targets: ``tokens + 1`` per layer). Flow solves ``T^2`` maximum
flows per layer from the third on: it is timed on ``--flow-tokens`` and twice as many tokens (its own lines) and
its time at ``--tokens`` is extrapolated per layer from ``--flow-rows`` query rows of the full input (each row is
``T`` flows).

Targets (issue 21): norm <= 1.5x, ALTI <= 3x, value zeroing <= tokens + 1 layer runs, flow <= 10 s (6 layers).

    PYTHONPATH=$PWD python scripts/bench_measures.py [--tokens 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def paired(fn, base_fn, repeats: int) -> tuple[float, float]:
    """Best times of ``fn`` and ``base_fn`` run alternately (a ratio that a busy shared machine moves less)."""
    times, base_times = [], []
    for _ in range(repeats):
        base_times.append(best(base_fn, 1))
        times.append(best(fn, 1))
    return min(times), min(base_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--flow-tokens", type=int, default=16)
    parser.add_argument("--flow-rows", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from hf_attn_inspect import AttentionInspector
    from hf_attn_inspect.core.mixing import residual_mix

    inspector = AttentionInspector.from_pretrained(device="cpu")
    words = ("the quick brown fox jumps over the lazy dog while a cat watches it from the window " * 40).split()
    text = " ".join(words[: args.tokens - 2])
    n = len(inspector(text).tokens)
    base = best(lambda: inspector(text), args.repeats)
    print(f"MiniLM, {n} tokens, {args.threads} threads: weights-only capture {base * 1e3:.0f} ms")

    block = inspector.model.encoder.layer[0]
    hidden = torch.randn(1, n, inspector.model.config.hidden_size)
    with torch.no_grad():
        layer_run = best(lambda: block(hidden), 5)

    targets = {"norm": "<= 1.5x", "alti": "<= 3x"}
    for name in ("norm", "norm_layer", "norm_res", "norm_res_ln", "alti", "alti_rollout", "rollout", "value_zeroing"):
        if name == "value_zeroing":
            t = best(lambda: inspector(text, measures=[name]), 1)
            line = f"{name:14s} {t / base:6.2f}x  ({t * 1e3:.0f} ms)"
        else:
            t, alongside = paired(lambda: inspector(text, measures=[name]), lambda: inspector(text), args.repeats)
            line = f"{name:14s} {t / alongside:6.2f}x  ({t * 1e3:.0f} ms; weights-only beside it {alongside * 1e3:.0f})"
        if name == "value_zeroing":
            layers = inspector.num_layers
            line += f"  = {(t - base) / layer_run / layers:.0f} single-layer runs per layer (target <= {n + 1})"
        elif name in targets:
            line += f"  target {targets[name]}"
        print(line)

    for m in (args.flow_tokens, 2 * args.flow_tokens):
        short = " ".join(words[: m - 2])
        t = best(lambda: inspector(short, measures=["flow"]), 1)
        print(f"flow           {t:.1f} s at {len(inspector(short).tokens)} tokens")
    from hf_attn_inspect.core.mixing import flow_capacities, layer_flows

    caps, _ = flow_capacities(residual_mix(inspector(text).attentions.mean(1)))
    rows = [round(k * (n - 1) / max(1, args.flow_rows - 1)) for k in range(args.flow_rows)]
    total, per_layer = 0.0, []
    for layer in range(2, caps.shape[0]):
        start = time.perf_counter()
        layer_flows(caps, layer, rows)
        per_row = (time.perf_counter() - start) / len(rows)
        total += per_row * n
        per_layer.append(f"{per_row / n * 1e3:.1f}")
    print(f"flow           ~{total:.0f} s at {n} tokens (extrapolated from {len(rows)} query rows per layer; ms per "
          f"flow in layers 3..{caps.shape[0]}: {', '.join(per_layer)}; target <= 10 s)")


if __name__ == "__main__":
    main()
