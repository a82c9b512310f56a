"""scripts/bench_gpu.py keeps working: its reduced --smoke mode runs on CPU and prints every ratio."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_gpu_smoke_runs_and_prints_ratios():
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), "--smoke", "--repeats", "1"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert out.startswith("device: ")
    part_a = [line for line in out.splitlines() if "statistics" in line and "seq/s" in line]
    part_b = [line for line in out.splitlines() if line.strip().startswith("T=")]
    assert len(part_a) == 2 and all("ratio" in line for line in part_a)
    assert len(part_b) == 2 and all("x (ratio" in line for line in part_b)


def test_bench_gpu_refuses_full_run_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the full run would start instead of being refused")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_gpu.py")], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert proc.returncode == 2 and "--smoke" in proc.stderr
