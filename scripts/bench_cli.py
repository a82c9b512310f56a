"""How fast the command line answers: ``hf-attn-inspect --help`` and an input error, next to bare Python.

Each measurement is a fresh interpreter (``python -m hf_attn_inspect ...`` and ``python -c pass``), run
interleaved ``--repeats`` times; the medians and the differences are printed. Target: ``--help`` and
early input errors within 1 s of bare Python start-up, i.e. without importing torch or transformers.

    PYTHONPATH=$PWD python scripts/bench_cli.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CASES = {
    "python -c pass": ["-c", "pass"],
    "hf-attn-inspect --help": ["-m", "hf_attn_inspect", "--help"],
    "hf-attn-inspect batch --help": ["-m", "hf_attn_inspect", "batch", "--help"],
    'hf-attn-inspect inspect "" (input error)': ["-m", "hf_attn_inspect", "inspect", ""],
    "hf-attn-inspect batch --dataset missing.csv (input error)": [
        "-m", "hf_attn_inspect", "batch", "--dataset", "missing.csv", "--out", "bench_cli_out"],
}


def _once(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                   check=False, timeout=600)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs of each case, interleaved (default 7)")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.repeats):
        for name, argv in CASES.items():  # interleaved, so load changes hit every case alike
            times[name].append(_once(argv))
    base = statistics.median(times["python -c pass"])
    print(f"{'case':<60} {'median s':>9} {'above bare python':>18}")
    for name, ts in times.items():
        med = statistics.median(ts)
        extra = "" if name == "python -c pass" else f"{med - base:+.2f} s"
        print(f"{name:<60} {med:9.2f} {extra:>18}")
    print(f"(target: within 1 s of bare python; {args.repeats} interleaved runs each, medians)")


if __name__ == "__main__":
    main()
