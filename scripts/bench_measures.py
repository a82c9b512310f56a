#!/usr/bin/env python
"""Time of each measure as a ratio to the weights-only capture, on the embedded MiniLM at ``--tokens`` tokens.

For every measure: the best of ``--repeats`` runs of ``inspector(text, measures=[name])`` (capture included)
divided by the best weights-only ``inspector(text)``. Value zeroing is also stated in layer runs: its time over
the time of one run of one layer on the text (targets: ``tokens + 1`` per layer). Flow solves ``T^2`` maximum
flows per layer from the third on: it is timed on ``--flow-tokens`` tokens (its own line) and its time at
``--tokens`` is extrapolated from the pairs solved (``--flow-pairs`` pairs of the full input).

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--flow-tokens", type=int, default=16)
    parser.add_argument("--flow-pairs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
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
        t = best(lambda: inspector(text, measures=[name]), args.repeats if name != "value_zeroing" else 1)
        line = f"{name:14s} {t / base:6.2f}x  ({t * 1e3:.0f} ms)"
        if name == "value_zeroing":
            layers = inspector.num_layers
            line += f"  = {(t - base) / layer_run / layers:.0f} single-layer runs per layer (target <= {n + 1})"
        elif name in targets:
            line += f"  target {targets[name]}"
        print(line)

    short = " ".join(words[: args.flow_tokens - 2])
    t = best(lambda: inspector(short, measures=["flow"]), 1)
    print(f"flow           {t:.1f} s at {len(inspector(short).tokens)} tokens")
    import networkx as nx
    from networkx.algorithms.flow import build_residual_network, shortest_augmenting_path

    a = residual_mix(inspector(text).attentions.mean(1)).double()
    graph = nx.DiGraph()
    for layer in range(a.shape[0]):
        graph.add_edges_from(((layer + 1, i), (layer, j), {"capacity": float(a[layer, i, j])})
                             for i in range(n) for j in range(n))
    residual = build_residual_network(graph, "capacity")
    start = time.perf_counter()
    for p in range(args.flow_pairs):
        shortest_augmenting_path(graph, (a.shape[0], p % n), (0, (7 * p) % n), residual=residual)
    per_pair = (time.perf_counter() - start) / args.flow_pairs
    pairs = max(0, a.shape[0] - 2) * n * n
    print(f"flow           ~{per_pair * pairs:.0f} s at {n} tokens (extrapolated: {pairs} pairs x {per_pair * 1e3:.0f} "
          "ms; target <= 10 s)")


if __name__ == "__main__":
    main()
