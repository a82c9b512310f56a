#!/usr/bin/env python
"""Throughput of `hf-attn-inspect batch` on 1 process vs 2 processes (torchrun), as a ratio measured in one run.

Both runs analyse the same sentences (``sample_sentences(--n)`` written to a JSONL file) with the same
model, batch and shard sizes. On CPUs the threads are split evenly: the one process gets ``--threads``
(default: every core), each of the two processes half of them (``OMP_NUM_THREADS``). With two or more
GPUs (``--device cuda``), each of the two processes takes its own GPU, as ``torchrun`` hands them out.
The runs alternate (1, 2, 2, 1, 1, 2, ...) ``--repeats`` times each and the medians count.

Two numbers per run: the run loop's throughput (``run.json``: sentences analysed / seconds from the
first shard to the merged result, which is what more processes speed up) and the whole command's wall
time (imports and model loading included, which every process pays once). The script also checks that
both give a byte-identical ``head_stats.csv``.

    PYTHONPATH=$PWD python scripts/bench_scale.py                  # CPU, every core
    PYTHONPATH=$PWD python scripts/bench_scale.py --n 4000 --device cuda   # a machine with 2+ GPUs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_batch(processes: int, data: Path, out: Path, args: argparse.Namespace, threads: int) -> dict[str, float]:
    """One `batch` run on ``processes`` processes; returns its loop throughput and wall time."""
    cli = ["-m", "hf_attn_inspect", "batch", "--dataset", str(data), "--out", str(out), "--no-progress",
           "--batch-size", str(args.batch_size), "--shard-size", str(args.shard_size), "--overwrite"]
    if args.model:
        cli += ["--model", args.model]
    if args.device == "cpu":
        cli += ["--device", "cpu"]
    if processes == 1:
        cmd = [sys.executable, *cli]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
               "--master-port", str(_free_port()), *cli]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", MPLBACKEND="Agg",
               OMP_NUM_THREADS=str(max(1, threads // processes)), TOKENIZERS_PARALLELISM="false")
    env.pop("WORLD_SIZE", None)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{processes}-process run failed:\n{proc.stderr[-3000:]}")
    run = json.loads((out / "run.json").read_text())
    return {"loop": run["counts"]["analysed"] / run["elapsed_s"], "wall": wall, "world": run["world_size"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="sentences (default 1000)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each (default 2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="CPU threads in all (default: every core)")
    parser.add_argument("--model", default=None, help="model (default: the embedded all-MiniLM-L6-v2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=128)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cpu (threads split evenly) or cuda (one GPU per process; needs 2)")
    args = parser.parse_args()
    import torch

    from hf_attn_inspect.runs.sources import sample_sentences

    if args.device == "cuda" and torch.cuda.device_count() < 2:
        sys.exit(f"--device cuda needs 2 GPUs, this machine has {torch.cuda.device_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "texts.jsonl"
        data.write_text("\n".join(json.dumps({"text": t}) for t in sample_sentences(args.n)), encoding="utf-8")
        results: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        for r in range(args.repeats):
            for procs in ((1, 2) if r % 2 == 0 else (2, 1)):
                res = run_batch(procs, data, Path(tmp) / f"out{procs}", args, args.threads)
                assert res["world"] == procs
                results[procs].append(res)
                print(f"  run {r + 1}: {procs} process{'es' if procs > 1 else ''}: {res['loop']:.1f} sentences/s "
                      f"in the loop, {res['wall']:.1f} s wall", flush=True)
        same = (Path(tmp) / "out1" / "head_stats.csv").read_bytes() == (Path(tmp) / "out2" / "head_stats.csv").read_bytes()
    med = {p: {k: statistics.median(x[k] for x in results[p]) for k in ("loop", "wall")} for p in (1, 2)}
    cpu = platform.processor() or platform.machine()
    print(f"\n{args.n} sentences, batch {args.batch_size}, shards of {args.shard_size}, device {args.device}"
          + (f", {args.threads} threads in all ({cpu})" if args.device == "cpu" else "")
          + f", median of {args.repeats}; load average {os.getloadavg()[0]:.1f}")
    print("| | 1 process | 2 processes | ratio 2/1 |")
    print("|---|---|---|---|")
    print(f"| run loop, sentences/s | {med[1]['loop']:.1f} | {med[2]['loop']:.1f} | **{med[2]['loop'] / med[1]['loop']:.2f}** |")
    print(f"| whole command, s (imports, model load) | {med[1]['wall']:.1f} | {med[2]['wall']:.1f} | "
          f"{med[1]['wall'] / med[2]['wall']:.2f} (speed-up) |")
    print(f"head_stats.csv byte-identical: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
