"""scripts/bench_gpu.py keeps working: its reduced --smoke mode runs on CPU and prints every ratio.

Both tests call the script's ``main`` in-process (a subprocess would spend most of its time importing
torch and transformers again); its ``sys.exit(main())`` passes the return value on as the exit code.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "scripts" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_gpu_smoke_runs_and_prints_ratios(bench_gpu, capsys):
    with torch.random.fork_rng():  # the script seeds torch's generator; leave the worker's as it was
        assert bench_gpu.main(["--smoke", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("device: ")
    part_a = [line for line in out.splitlines() if "statistics" in line and "seq/s" in line]
    part_b = [line for line in out.splitlines() if line.strip().startswith("T=")]
    assert len(part_a) == 2 and all("ratio" in line for line in part_a)
    assert len(part_b) == 2 and all("x (ratio" in line for line in part_b)


def test_bench_gpu_refuses_full_run_without_cuda(bench_gpu, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the full run would start instead of being refused")
    assert bench_gpu.main([]) == 2
    assert "--smoke" in capsys.readouterr().err
