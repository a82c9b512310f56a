#!/usr/bin/env python
"""Benchmark of ``batch`` at sentence, paragraph and document length against the plain forward pass, in one run.

For each length ``T`` (default 30, 96, 256, 480 tokens) the texts are ``--n`` texts of the shipped sample
joined until they reach ``T`` tokens and cut at ``T`` (``max_length=T``), so every batch is ``T`` wide:

(a) plain forward: the model as loaded (sdpa attention for the embedded MiniLM), no outputs requested,
    batches of ``--batch-size`` texts, tokenization included (as in ``scripts/bench_batch.py``);
(b) ``analyze_dataset(..., batch_size=--batch-size, max_length=T)``: everything (tokenization, capture,
    statistics, merging).

The ratio is the one of ``bench_batch.py``: throughput of (b) over throughput of (a), i.e. plain forward
time / analysis time (1.0 = the analysis is as fast as the model alone; 0.8 = it takes 1.25x as long).
(a) and (b) alternate (a, b, a, b, ...) for ``--repeats`` rounds after a warm-up, and the median time of
each is kept, so a shared machine's load hits both alike. The attention path the analysis took at each
length (``run.json``'s ``attention_paths``) is printed too.

    PYTHONPATH=$PWD python scripts/bench_doclength.py [--lengths 30 96 256 480] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


def run_plain(inspector, texts: list[str], batch_size: int, length: int) -> float:
    tok, model, dev = inspector.tokenizer, inspector.model, inspector.device
    start = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            enc = tok(texts[s:s + batch_size], padding=True, truncation=True, max_length=length, return_tensors="pt")
            model(**{k: v.to(dev) for k, v in enc.items()})
    return time.perf_counter() - start


def run_batch(inspector, texts: list[str], batch_size: int, length: int) -> tuple[float, dict]:
    from hf_attn_inspect.runs.dataset import analyze_dataset

    start = time.perf_counter()
    df = analyze_dataset(inspector, texts, batch_size=batch_size, max_length=length)
    return time.perf_counter() - start, df.attrs["run"].get("attention_paths", {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[30, 96, 256, 480])
    ap.add_argument("--n", type=int, default=32, help="texts per length (default 32)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5, help="alternating rounds of (a) and (b); medians kept")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args()

    from hf_attn_inspect import AttentionInspector
    from hf_attn_inspect.runs.sources import sample_documents

    torch.set_num_threads(args.threads)
    inspector = AttentionInspector.from_pretrained(device="cpu")
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(f"CPU, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load average {load:.1f}; model "
          f"{inspector.name} ({inspector.model.config._attn_implementation} attention); {args.n} texts per length, "
          f"batch size {args.batch_size}, {args.repeats} interleaved rounds, medians")
    rows = []
    for length in args.lengths:
        texts = sample_documents(inspector.tokenizer, [length] * args.n)
        run_plain(inspector, texts[: args.batch_size], args.batch_size, length)  # warm-up
        run_batch(inspector, texts[: args.batch_size], args.batch_size, length)
        a, b = [], []
        paths: dict = {}
        for _ in range(args.repeats):
            a.append(run_plain(inspector, texts, args.batch_size, length))
            t, paths = run_batch(inspector, texts, args.batch_size, length)
            b.append(t)
        ta, tb = statistics.median(a), statistics.median(b)
        rows.append({"tokens": length, "plain_s": a, "analysis_s": b, "ratio": ta / tb, "paths": paths})
        print(f"{length:>4} tokens: plain {ta:7.2f} s  analysis {tb:7.2f} s  analysis / plain forward = {ta / tb:.2f}x"
              f"   (path: {', '.join(f'{k} x{v}' for k, v in paths.items())})", flush=True)
    print("\n| tokens per text | " + " | ".join(str(r["tokens"]) for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    print("| analysis / plain forward | " + " | ".join(f"{r['ratio']:.2f}x" for r in rows) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"threads": args.threads, "batch_size": args.batch_size, "n": args.n, "load_average": load,
                       "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
