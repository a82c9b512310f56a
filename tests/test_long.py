"""The ``long`` command: report files, error handling, and a 16k-token run without any [T, T] tensor."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hf_attn_inspect.stats.tables import head_metrics
from hf_attn_inspect.cli import main
from hf_attn_inspect.core.files import RECORD_NAME
from hf_attn_inspect.runs.long_context import long_context_report, position_bins
from hf_attn_inspect.stats.metrics import METRICS
from hf_attn_inspect.stats.streaming import DISTANCE_BUCKETS

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the cat sat on a mat and dog ran to park with big red ball in sun".split()


def words(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


def test_position_bins_cover_every_position():
    for n in (1, 2, 7, 100, 16384):
        edges = position_bins(n, 32)
        assert edges[0] == 0 and edges[-1] == n
        assert (np.diff(edges) > 0).all()


def test_report_matches_materialised_metrics(inspector):
    text = words(300) + "."
    report = long_context_report(inspector, text, q_tile=64, k_tile=96)
    want = head_metrics(inspector(text))
    np.testing.assert_allclose(report.metrics[list(METRICS)].to_numpy(), want[list(METRICS)].to_numpy(),
                               atol=1e-5, rtol=1e-5)
    # distance buckets: one row per (layer, head, bucket), each head's masses sum to 1
    sums = report.distance.groupby(["layer", "head"])["mass"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-5)
    reachable = [b for b, low in zip(DISTANCE_BUCKETS, (0, 1, 2, 5, 17, 65, 257, 1025, 4097)) if low < report.n_tokens]
    assert list(report.distance["bucket"][: len(reachable)]) == reachable  # only buckets the length can reach
    # sink curve: position-weighted mean of the bins equals the first_token metric
    s = report.sinks.assign(n=report.sinks["end"] - report.sinks["start"])
    weighted = (s["first_token"] * s["n"]).groupby([s["layer"], s["head"]]).sum() / report.n_tokens
    np.testing.assert_allclose(weighted.to_numpy(), report.metrics["first_token"].to_numpy(), atol=1e-5)


def test_long_command_writes_report(tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text(words(200) + ".", encoding="utf-8")
    out = tmp_path / "report"
    assert main(["long", str(doc), "--out", str(out), "--bins", "8"]) == 0
    printed = capsys.readouterr().out
    assert "tokens" in printed and "wrote" in printed
    metrics = pd.read_csv(out / "head_metrics.csv")
    assert list(metrics.columns) == ["layer", "head", *METRICS] and len(metrics) == 6 * 12
    sinks = pd.read_csv(out / "sinks.csv")
    assert {"layer", "head", "start", "end", "first_token"} <= set(sinks.columns)
    assert sinks["first_token"].between(0, 1).all()
    distance = pd.read_csv(out / "distance.csv")
    assert set(distance["bucket"].astype(str)) == set(DISTANCE_BUCKETS[:6])  # ~200 tokens: distances up to 65-256
    for name in ("sinks.png", "distance.png", "first_token_heads.png"):
        with Image.open(out / name) as img:
            img.verify()
            assert img.size[0] > 300 and img.size[1] > 150
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != RECORD_NAME], "no temporary files left"


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (None, ["long", "{tmp}/missing.txt", "--out", "{tmp}/o"], "does not exist"),
        ("", ["long", "{tmp}/doc.txt", "--out", "{tmp}/o"], "empty"),
        ("some text", ["long", "{tmp}/doc.txt", "--out", "{tmp}/doc.txt"], "is a file"),
        ("some text", ["long", "{tmp}/doc.txt", "--out", "{tmp}/o", "--bins", "0"], "--bins"),
        ("some text", ["long", "{tmp}/doc.txt", "--out", "{tmp}/o", "--layers", "9"], "layer 9"),
    ],
)
def test_long_command_errors_are_one_line(tmp_path, capsys, setup, args, message):
    if setup is not None:
        (tmp_path / "doc.txt").write_text(setup, encoding="utf-8")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "o" / "head_metrics.csv").exists()


@pytest.mark.heavy
def test_16k_tokens_on_cpu_without_any_t_by_t_tensor(tiny_dir, tmp_path):
    """Done-when: 16384 tokens through ``long`` on a tiny long-context Llama, every tensor tracked.

    The command runs in a fresh process under :class:`memory_guard.MaxTensorTracker` (a TorchDispatchMode
    that sees every tensor any torch operation creates) and reports its peak resident memory. One
    float32 ``[heads, T, T]`` matrix would be 4 x 16384^2 x 4 bytes = 4 GiB.
    """
    t = 16384
    model = tiny_dir("llama_long")
    doc = tmp_path / "long.txt"
    doc.write_text(words(t - 2, seed=1), encoding="utf-8")  # one WordPiece token per word, + [CLS]/[SEP]
    out = tmp_path / "report"
    # glibc would otherwise keep freed 16 MB tiles in its heap (seen: 0.6 vs 1.8 GiB peak RSS for the same
    # run); serving them with mmap makes the peak RSS measure live memory, not the allocator's cache
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS=os.environ["OMP_NUM_THREADS"],
               MALLOC_MMAP_THRESHOLD_="1048576")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "memory_guard.py"), "long", str(doc), "--model", str(model),
         "--out", str(out), "--q-tile", "512", "--k-tile", "2048"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["rc"] == 0
    assert f"{t} tokens" in proc.stdout
    # no tensor anywhere near [T, T]: the largest is one [heads, q_tile, k_tile] block (~4M elements)
    assert stats["max_numel"] <= 4 * 512 * 2049 + 4096, stats
    assert stats["max_numel"] < t * t // 32, stats
    one_head_matrix_stack = 4 * t * t * 4  # bytes of one float32 [heads, T, T]
    assert stats["maxrss_kb"] * 1024 < one_head_matrix_stack / 3, stats
    metrics = pd.read_csv(out / "head_metrics.csv")
    assert len(metrics) == 2 * 4
    # causal: mean over rows of ln(i + 1)
    expected_max_entropy = float(np.mean(np.log(np.arange(1, t + 1))))
    np.testing.assert_allclose(metrics["max_entropy"], expected_max_entropy, rtol=1e-5)
    assert (metrics["entropy"] <= metrics["max_entropy"] + 1e-4).all()
    distance = pd.read_csv(out / "distance.csv")
    far = distance[distance["bucket"] == ">4096"]["mass"]
    assert (far > 0.1).all(), "a near-uniform random model puts most weight far away at 16k tokens"
