#!/usr/bin/env python
"""Benchmark of head importance in units of one plain forward pass over the same sentences, in one run.

On the same sentences (``sample_sentences(n)``) and the same length-sorted batches of ``--batch-size``:

(a) plain forward: the model as loaded (sdpa for the embedded model), no outputs requested,
    tokenization included;
(b) ``head_importance(method="ablation")``: every one of the L x H heads removed one at a time
    (cached layers + batch copies), everything included (tokenization, the intact pass with the
    pattern statistics, the objective);
(c) ``head_importance(method="gradient")``: one forward and one backward pass per batch;
(d) optionally (``--plain-path``) (b) with ``cache_layers=False``, to show what the cache saves.

Rounds alternate (a), (b), (c) for ``--repeats`` rounds and the median of each is kept. On the CPU the
clock is the process's CPU time (``--clock cpu``, the default there, with ``--threads 1``): on a shared
machine wall time mostly measures the other processes; ``--clock wall`` measures elapsed time (the
default on CUDA). Targets on the embedded model (6 x 12 heads): (b) <= 0.7 x (L x H) forwards, (c) <= 3
forwards. Prints one JSON line with the ratios.

    PYTHONPATH=$PWD python scripts/bench_importance.py [--n 64] [--batch-size 32] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


CLOCK = time.perf_counter


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_plain(inspector, texts, batch_size) -> float:
    tok, model, dev = inspector.tokenizer, inspector.model, inspector.device
    lengths = [len(x) for x in tok(texts)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    start = CLOCK()
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            chunk = [texts[i] for i in order[s:s + batch_size]]
            enc = tok(chunk, padding=True, truncation=True, max_length=inspector.max_length, return_tensors="pt")
            model(**{k: v.to(dev) for k, v in enc.items()})
    sync(dev)
    return CLOCK() - start


def run_importance(inspector, texts, batch_size, **kw) -> float:
    from hf_attn_inspect.runs.importance import head_importance

    start = CLOCK()
    head_importance(inspector, texts, batch_size=batch_size, **kw)
    sync(inspector.device)
    return CLOCK() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="sentences (default 64)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 with --clock cpu)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default=None,
                        help="cpu: process CPU time (default on the CPU); wall: elapsed time (default on CUDA)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--plain-path", action="store_true", help="also time ablation without the layer cache")
    args = parser.parse_args()
    global CLOCK
    clock = args.clock or ("cpu" if args.device == "cpu" else "wall")
    CLOCK = time.process_time if clock == "cpu" else time.perf_counter
    threads = args.threads or (1 if clock == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)

    from hf_attn_inspect import AttentionInspector
    from hf_attn_inspect.runs.sources import sample_sentences

    inspector = AttentionInspector.from_pretrained(device=args.device)
    texts = sample_sentences(args.n)
    layers, heads = inspector.num_layers, inspector.num_heads
    run_plain(inspector, texts, args.batch_size)  # warm-up
    run_importance(inspector, texts[: args.batch_size], args.batch_size, method="gradient")
    times: dict[str, list[float]] = {"plain": [], "ablation": [], "gradient": [], "ablation_no_cache": []}
    for _ in range(args.repeats):
        times["plain"].append(run_plain(inspector, texts, args.batch_size))
        times["ablation"].append(run_importance(inspector, texts, args.batch_size, method="ablation"))
        times["plain"].append(run_plain(inspector, texts, args.batch_size))
        times["gradient"].append(run_importance(inspector, texts, args.batch_size, method="gradient"))
        if args.plain_path:
            times["ablation_no_cache"].append(
                run_importance(inspector, texts, args.batch_size, method="ablation", cache_layers=False))
    med = {k: statistics.median(v) for k, v in times.items() if v}
    plain = med["plain"]
    report = {
        "device": str(inspector.device),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "clock": clock, "sentences": args.n, "batch_size": args.batch_size, "heads": layers * heads, "repeats": args.repeats,
        "plain_forward_s": round(plain, 4),
        "ablation_s": round(med["ablation"], 3),
        "ablation_forwards": round(med["ablation"] / plain, 2),
        "ablation_per_head_forwards": round(med["ablation"] / plain / (layers * heads), 3),
        "ablation_target_per_head": 0.7,
        "gradient_s": round(med["gradient"], 3),
        "gradient_forwards": round(med["gradient"] / plain, 2),
        "gradient_target": 3.0,
    }
    if "ablation_no_cache" in med:
        report["ablation_no_cache_per_head_forwards"] = round(med["ablation_no_cache"] / plain / (layers * heads), 3)
    report["targets_met"] = report["ablation_per_head_forwards"] <= 0.7 and report["gradient_forwards"] <= 3.0
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
