#!/usr/bin/env python
"""Benchmark of ``batch`` against a plain forward pass and the chapter's per-sentence loop, in one run.

On the same sentences (``sample_sentences(n)``: the shipped sample, then joined pairs/triples of it):

(a) plain forward: the model as loaded (default attention, sdpa for the embedded model), no outputs
    requested, the same length-sorted batches of ``--batch-size`` texts, tokenization included;
(b) ``analyze_dataset`` (everything: dataset wrapping, tokenization, capture, statistics, merging);
(c) the chapter's way: one sentence at a time, eager ``output_attentions=True``, and the chapter's
    numpy ``analyze_attention_pattern`` for every layer and head.

(a) and (b) alternate for ``--repeats`` rounds and the best time of each is kept (the machine may be
shared). Peak memory (peak RSS during the analysis, after the model is loaded) is measured in child processes: (a), (b) and (c) on ``--n`` sentences,
and (b) on each of ``--memory-sizes``, built by repeating the smallest size's sentences so that the
length mix (which sets the padded batch shape) stays the same and only the dataset size changes.

    PYTHONPATH=$PWD python scripts/bench_batch.py [--n 1000] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def chapter_analyze_attention_pattern(attention_weights, threshold: float = 0.3) -> dict:
    """The chapter's function, verbatim in substance (numpy, one head)."""
    if isinstance(attention_weights, torch.Tensor):
        weights = attention_weights.detach().cpu().numpy()
    else:
        weights = attention_weights
    seq_len = weights.shape[0]
    analysis = {}
    diagonal = np.diag(weights)
    analysis["diagonal_mean"] = diagonal.mean()
    analysis["is_diagonal_dominant"] = analysis["diagonal_mean"] > threshold
    first_col = weights[:, 0]
    analysis["first_token_mean"] = first_col.mean()
    analysis["attends_to_first"] = analysis["first_token_mean"] > threshold
    prev_attention = []
    for i in range(1, seq_len):
        prev_attention.append(weights[i, i - 1])
    analysis["previous_token_mean"] = np.mean(prev_attention) if prev_attention else 0
    analysis["is_previous_dominant"] = analysis["previous_token_mean"] > threshold
    analysis["weight_std"] = weights.std()
    analysis["is_uniform"] = analysis["weight_std"] < 0.1
    above_threshold = (weights > threshold).sum()
    analysis["sparsity"] = 1 - (above_threshold / weights.size)
    eps = 1e-10
    entropy = -np.sum(weights * np.log(weights + eps), axis=-1)
    analysis["mean_entropy"] = entropy.mean()
    analysis["max_entropy"] = np.log(seq_len)
    return analysis


def load(device: str | None):
    from hf_attn_inspect import AttentionInspector

    return AttentionInspector.from_pretrained(device=device)


def sorted_batches(inspector, texts, batch_size):
    lengths = [len(x) for x in inspector.tokenizer(texts)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    return [[texts[i] for i in order[s:s + batch_size]] for s in range(0, len(texts), batch_size)]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_plain(inspector, texts, batch_size) -> float:
    tok, model, dev = inspector.tokenizer, inspector.model, inspector.device
    start = time.perf_counter()
    with torch.no_grad():
        for chunk in sorted_batches(inspector, texts, batch_size):
            enc = tok(chunk, padding=True, truncation=True, max_length=inspector.max_length, return_tensors="pt")
            model(**{k: v.to(dev) for k, v in enc.items()})
    sync(dev)
    return time.perf_counter() - start


def run_batch(inspector, texts, batch_size) -> float:
    from hf_attn_inspect.runs.dataset import analyze_dataset

    start = time.perf_counter()
    analyze_dataset(inspector, texts, batch_size=batch_size)
    sync(inspector.device)
    return time.perf_counter() - start


def run_chapter(inspector, texts, eager_model) -> float:
    tok, dev = inspector.tokenizer, inspector.device
    start = time.perf_counter()
    with torch.no_grad():
        for text in texts:
            enc = tok(text, truncation=True, max_length=inspector.max_length, return_tensors="pt")
            out = eager_model(**{k: v.to(dev) for k, v in enc.items()}, output_attentions=True)
            for layer in out.attentions:
                w = layer[0].float().cpu().numpy()
                for h in range(w.shape[0]):
                    chapter_analyze_attention_pattern(w[h])
    return time.perf_counter() - start


def eager_copy(inspector):
    from transformers import AutoModel

    path = inspector.model.config._name_or_path
    from hf_attn_inspect import default_model_path

    if not os.path.isdir(path):
        path = default_model_path()
    return AutoModel.from_pretrained(path, attn_implementation="eager").to(inspector.device).eval()


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ``clear_refs`` 5) so loading the model does not count."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def hwm_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def spread(texts: list[str], k: int | None) -> list[str]:
    """``k`` texts evenly spread over ``texts`` (same length mix), or all of them."""
    if not k or k >= len(texts):
        return texts
    step = len(texts) / k
    return [texts[int(i * step)] for i in range(k)]


def child(mode: str, n: int, batch_size: int, threads: int | None, device: str | None, chapter_n: int | None,
          cycle: int | None = None) -> None:
    from hf_attn_inspect.runs.sources import sample_sentences

    if threads:
        torch.set_num_threads(threads)
    inspector = load(device)
    texts = sample_sentences(n)
    if cycle:  # the first `cycle` texts repeated: same length mix whatever n, so only the size changes
        base = sample_sentences(cycle)
        texts = (base * (n // cycle + 1))[:n]
    if mode == "c":
        texts = spread(texts, chapter_n)
    eager = eager_copy(inspector) if mode == "c" else None
    base = rss_mib()
    peak_reset = reset_peak_rss()
    if inspector.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    {"a": lambda: run_plain(inspector, texts, batch_size),
     "b": lambda: run_batch(inspector, texts, batch_size),
     "c": lambda: run_chapter(inspector, texts, eager)}[mode]()
    peak = hwm_mib() if peak_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = torch.cuda.max_memory_allocated() / 2**20 if inspector.device.type == "cuda" else None
    print(json.dumps({"mode": mode, "n": n, "peak_rss_mib": peak, "base_rss_mib": base, "gpu_peak_mib": gpu}))


def measure_child(mode, n, args, cycle: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--n", str(n), "--batch-size", str(args.batch_size)]
    if cycle:
        cmd += ["--cycle", str(cycle)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.device:
        cmd += ["--device", args.device]
    if args.chapter_n:
        cmd += ["--chapter-n", str(args.chapter_n)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="sentences (default 1000)")
    ap.add_argument("--chapter-n", type=int, default=None, help="sentences for (c), evenly spread (default all)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds of (a) and (b); best kept")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--memory-sizes", type=int, nargs="*", default=[1000, 5000])
    ap.add_argument("--no-memory", action="store_true", help="skip the child processes measuring memory")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cycle", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.n, args.batch_size, args.threads, args.device, args.chapter_n, args.cycle)
        return

    from hf_attn_inspect.runs.sources import sample_sentences

    if args.threads:
        torch.set_num_threads(args.threads)
    inspector = load(args.device)
    texts = sample_sentences(args.n)
    eager = eager_copy(inspector)
    dev = inspector.device
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU {cpu}, {os.cpu_count()} cores"
    print(f"device: {name}; torch threads {torch.get_num_threads()}; model {inspector.name} "
          f"({inspector.num_layers} layers x {inspector.num_heads} heads, {inspector.model.config._attn_implementation} "
          f"attention); {len(texts)} sentences, batch size {args.batch_size}")
    run_plain(inspector, texts[:64], args.batch_size)  # warm-up
    run_batch(inspector, texts[:64], args.batch_size)
    times = {"a": [], "b": []}
    for _ in range(args.repeats):
        times["a"].append(run_plain(inspector, texts, args.batch_size))
        times["b"].append(run_batch(inspector, texts, args.batch_size))
    c_texts = spread(texts, args.chapter_n)
    run_chapter(inspector, c_texts[:5], eager)
    t_c = run_chapter(inspector, c_texts, eager)
    rate = {"a": len(texts) / min(times["a"]), "b": len(texts) / min(times["b"]), "c": len(c_texts) / t_c}
    result = {"device": name, "threads": torch.get_num_threads(), "n": len(texts), "chapter_n": len(c_texts),
              "batch_size": args.batch_size, "times_s": times, "chapter_time_s": t_c,
              "sentences_per_s": rate, "b_over_a": rate["b"] / rate["a"], "b_over_c": rate["b"] / rate["c"]}
    print(f"(a) plain forward     {rate['a']:9.1f} sentences/s   (runs: {', '.join(f'{t:.2f}s' for t in times['a'])})")
    print(f"(b) batch             {rate['b']:9.1f} sentences/s   (runs: {', '.join(f'{t:.2f}s' for t in times['b'])})")
    print(f"(c) chapter loop      {rate['c']:9.1f} sentences/s   ({len(c_texts)} sentences, {t_c:.2f}s)")
    print(f"b/a = {result['b_over_a']:.2f}   (target >= 0.8)")
    print(f"b/c = {result['b_over_c']:.1f}   (target >= 20)")
    if not args.no_memory:
        mem = {m: measure_child(m, args.n, args) for m in ("a", "b", "c")}
        base = min(args.memory_sizes) if args.memory_sizes else None
        sizes = {n: measure_child("b", n, args, cycle=base) for n in args.memory_sizes}
        result["memory"] = {"modes": mem, "batch_by_size": sizes}
        for m, r in mem.items():
            gpu = f", GPU peak {r['gpu_peak_mib']:.0f} MiB" if r["gpu_peak_mib"] is not None else ""
            k = len(spread(texts, args.chapter_n)) if m == "c" else args.n
            print(f"peak memory ({m}) {k} sentences: {r['peak_rss_mib']:.0f} MiB RSS "
                  f"(after loading: {r['base_rss_mib']:.0f} MiB){gpu}")
        if len(sizes) >= 2:
            ks = sorted(sizes)
            lo, hi = sizes[ks[0]], sizes[ks[-1]]
            growth = hi["peak_rss_mib"] / lo["peak_rss_mib"] - 1
            result["memory_growth"] = growth
            for k in ks:
                print(f"peak memory (b) {k:>6} sentences (first {ks[0]} repeated): {sizes[k]['peak_rss_mib']:.0f} MiB RSS "
                      f"(after loading: {sizes[k]['base_rss_mib']:.0f} MiB)")
            print(f"peak memory {ks[-1]} vs {ks[0]} sentences: {growth:+.1%}   (target within 10 %)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2, default=str)


if __name__ == "__main__":
    main()
