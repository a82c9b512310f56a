"""Inputs too long for full weights: the memory budget, refusals with numbers, pooled attention, OOM as one line."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from hf_attn_inspect import AttentionInspector
from hf_attn_inspect.capture.pooled import PooledRecorder, block_edges, pool_blocks
from hf_attn_inspect.cli import main
from hf_attn_inspect.core.errors import InputError, MemoryBudgetError, MemoryExhaustedError
from hf_attn_inspect.core.memory import format_bytes, memory_budget, oom_guard, parse_size
from hf_attn_inspect.runs.planner import capture_within_budget
from hf_attn_inspect.stats.metrics import METRICS
from hf_attn_inspect.stats.patterns import head_table
from hf_attn_inspect.stats.streaming import streaming_head_metrics

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the cat sat on a mat , and dog ran to park with big red ball in sun .".split()
ALLOC_FAILURE = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 4608000000 bytes. Error code 12"


def words(n: int, seed: int = 0, vocab: list[str] = WORDS) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(vocab) for _ in range(n))


# ------------------------------------------------------------------------------------------- budget
def test_parse_size_units_and_errors():
    assert parse_size("8GB") == 8_000_000_000
    assert parse_size("512MB") == 512_000_000
    assert parse_size("2GiB") == parse_size("2G") == 2 * 2**30
    assert parse_size("1.5 GB") == 1_500_000_000
    assert parse_size(1234) == 1234
    for bad in ("lots", "8XB", "-1GB", "0", True):
        with pytest.raises(InputError):
            parse_size(bad)
    assert memory_budget("3GB").bytes == 3_000_000_000 and memory_budget("3GB").source == "max_memory"
    auto = memory_budget()
    assert auto.bytes > 0 and "available memory" in auto.source
    assert format_bytes(4.6e9) == "4.6 GB"


def test_oom_guard_turns_allocation_failures_into_one_line():
    with pytest.raises(MemoryExhaustedError, match=r"^out of memory while computing x: DefaultCPUAllocator.*; hint$"):
        with oom_guard("computing x", "hint"):
            raise RuntimeError(ALLOC_FAILURE + "\nsecond line")
    with pytest.raises(ValueError):  # anything else passes through unchanged
        with oom_guard("computing x"):
            raise ValueError("not memory")


def test_max_memory_below_one_head_raises_with_the_numbers(inspector):
    text = words(60) + "."
    n = len(inspector.tokenizer(text)["input_ids"])
    one_head = n * n * 4
    full = inspector.estimate_memory(text)
    with pytest.raises(MemoryBudgetError) as err:
        inspector(text, max_memory=one_head - 1)
    message = str(err.value)
    assert err.value.estimate == full.total and err.value.budget == one_head - 1
    assert format_bytes(full.total) in message and format_bytes(one_head - 1) in message
    assert f"{n} tokens" in message and "6 layers x 12 heads" in message
    for way_out in ("layers=", "max_memory", "long"):
        assert way_out in message
    assert "\n" not in message
    # also below one head of one layer when asked for just that head
    with pytest.raises(MemoryBudgetError):
        inspector(text, layers=[0], heads=[0], max_memory=one_head - 1)


def test_enough_for_one_layer_returns_that_layer_when_asked(inspector):
    text = words(80, seed=3) + "."
    one_layer = inspector.estimate_memory(text, layers=[3]).total
    assert inspector.estimate_memory(text).total > one_layer
    with pytest.raises(MemoryBudgetError):
        inspector(text, max_memory=one_layer)
    got = inspector(text, layers=[3], max_memory=one_layer)
    assert got.layer_ids == [3] and got.attentions.shape[0] == 1
    want = inspector(text).attentions[3]
    torch.testing.assert_close(got.attentions[0], want, atol=0, rtol=0)


def test_row_quantities_of_row_blocks_equal_the_full_matrix_rows():
    """Long inputs are measured a block of query rows at a time (q_offset): the same rows as the full matrix."""
    torch.manual_seed(0)
    b, h, t = 2, 3, 23
    w = torch.softmax(torch.randn(b, h, t, t) * 3, -1)
    valid = torch.ones(b, t, dtype=torch.bool)
    valid[1, 17:] = False  # padding in the second sentence
    special = torch.zeros(b, t, dtype=torch.bool)
    special[:, 0] = True
    punct = torch.rand(b, t) > 0.7
    from hf_attn_inspect.stats.metrics import row_quantities

    for lw in (1, 4, 30):  # the band path and the mask path of local_window
        full = row_quantities(w, valid, special=special, punctuation=punct, local_window=lw)
        parts = [row_quantities(w[..., q0 : q0 + 5, :], valid, special=special, punctuation=punct, local_window=lw, q_offset=q0)
                 for q0 in range(0, t, 5)]
        for name, value in full.items():
            torch.testing.assert_close(torch.cat([p[name] for p in parts], -1), value, atol=1e-6, rtol=1e-6)
        # independent check of the band quantities on one row
        i = 9
        want_local = w[0, 1, i, max(0, i - lw) : i + lw + 1].sum()
        torch.testing.assert_close(full["local_window"][0, 1, i], want_local, atol=1e-6, rtol=1e-6)
    assert float(full["previous_token"][0, 0, 0]) == 0 and float(full["next_token"][0, 0, t - 1]) == 0


# ------------------------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("family", ["embedded", "llama"])
def test_pooled_block_sums_equal_full_block_sums(inspector, tiny_model, tiny_tokenizer, family):
    """Pooled inside the capture, block by block of rows (chunks that do not align with the blocks)."""
    ins = inspector if family == "embedded" else AttentionInspector(tiny_model("llama"), tiny_tokenizer)
    text = words(97, seed=5) + "."
    batch = ins.encode([text])
    nl, nh = ins.num_layers, ins.num_heads
    stack = "self"
    t = int(batch.inputs["attention_mask"].shape[-1])
    recorder = PooledRecorder(full={(stack, i): list(range(nh)) for i in range(nl)}, max_blocks=13,
                              chunk_bytes=nh * t * 4 * 7)  # 7 query rows per block of work
    assert recorder.rows_per_chunk(1, nh, t) == 7
    ins.run(batch, recorder)
    full = torch.stack([recorder.weights[stack][i][0] for i in range(nl)])  # [L, H, T, T]
    reference = ins(text).attentions
    torch.testing.assert_close(full, reference, atol=1e-5, rtol=1e-5)
    if family == "llama":  # causal: keys after the query are exactly 0
        assert (full.triu(1) == 0).all()
    q_edges, k_edges = recorder.edges[stack]
    assert torch.equal(q_edges, block_edges(t, 13)) and len(q_edges) - 1 <= 13
    pooled = torch.stack([recorder.pooled[stack][i][0] for i in range(nl)])
    # the full matrix's block sums, by numpy's reduceat (independent of pool_blocks)
    starts = q_edges[:-1].numpy()
    want = np.add.reduceat(np.add.reduceat(full.double().numpy(), starts, axis=-2), starts, axis=-1)
    np.testing.assert_allclose(pooled.numpy(), want, atol=1e-6, rtol=0)
    np.testing.assert_allclose(pool_blocks(full, q_edges, k_edges).numpy(), want, atol=1e-9, rtol=0)
    # every real query row's weights sum to 1: each query block's sums add up to its number of rows
    np.testing.assert_allclose(pooled.sum(-1).numpy(), np.broadcast_to(np.diff(starts.tolist() + [t]), pooled.shape[:-1]),
                               atol=1e-5)


def test_long_capture_metrics_equal_streaming_and_classes_equal_stored(inspector):
    text = words(300, seed=1)
    budget = 60 * 10**6
    assert inspector.estimate_memory(text).total > budget
    cap = capture_within_budget(inspector, text, layer=2, head=3, max_memory=budget, max_blocks=64)
    assert cap.pooled.shape == (6, 12, len(cap.q_edges) - 1, len(cap.k_edges) - 1) and cap.pooled.shape[-1] <= 64
    streamed = streaming_head_metrics(inspector, text)
    np.testing.assert_allclose(cap.table[list(METRICS)].to_numpy(), streamed[list(METRICS)].to_numpy(), atol=2e-5, rtol=1e-5)
    stored = head_table(inspector(text))
    np.testing.assert_allclose(cap.table["column_share"], stored["column_share"], atol=1e-5)
    assert list(cap.table["class"]) == list(stored["class"])


@pytest.mark.parametrize("family, stack", [("bart", "self"), ("bart", "decoder"), ("bart", "cross"), ("gpt2", "self"),
                                           ("deberta", "self")])
def test_long_capture_every_family_matches_stored_weights(tiny_model, tiny_tokenizer, family, stack):
    """Encoder-decoder stacks, a causal LM, and DeBERTa (eager fallback: weights arrive through ``record``)."""
    ins = AttentionInspector(tiny_model(family), tiny_tokenizer)
    text = "the cat sat on the mat , and the dog ran to the park . " * 6
    pair = "a dog ran . " * 5 if family == "bart" else None
    cap = capture_within_budget(ins, text, pair, stack=stack, max_memory="200MB", max_blocks=16)
    r = ins(text, pair)
    att = {"self": r.attentions, "encoder": r.attentions, "decoder": r.decoder_attentions, "cross": r.cross_attentions}
    np.testing.assert_allclose(cap.pooled.numpy(), pool_blocks(att[cap.stack], cap.q_edges, cap.k_edges).numpy(), atol=1e-6)
    want = head_table(r, which="decoder" if cap.metrics_stack == "decoder" else "self")
    np.testing.assert_allclose(cap.table[list(METRICS)].to_numpy(), want[list(METRICS)].to_numpy(), atol=2e-5)
    assert list(cap.table["class"]) == list(want["class"])
    torch.testing.assert_close(cap.layer_weights, att[cap.stack][0], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------- command line
@pytest.mark.heavy
def test_inspect_long_input_within_budget_writes_pooled_figures(tmp_path, capsys):
    out = tmp_path / "o"
    text = words(400, seed=2)
    assert main(["inspect", text, "--max-memory", "60MB", "--out", str(out), "--layer", "1", "--head", "2"]) == 0
    printed = capsys.readouterr().out
    assert "long input: full weights would need about" in printed and "60 MB (max_memory)" in printed
    assert "pooled into" in printed and "layer 1, head 2 pattern: " in printed
    assert "ATTENTION PATTERN ANALYSIS" not in printed and "uniform: yes" not in printed  # one verdict (issue 15 item 9)
    table = pd.read_csv(out / "head_metrics.csv")
    assert len(table) == 72 and {"pattern", "class", *METRICS} <= set(table.columns)
    for name in ("head_L1_H2.png", "layer_1_heads.png", "model_view.png"):
        with Image.open(out / name) as img:
            img.verify()
            assert img.size[0] > 500 and img.size[1] > 300


def test_inspect_refuses_when_even_pooled_does_not_fit(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["inspect", words(400), "--max-memory", "5MB", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 402 tokens do not fit even without full weights")
    assert "5 MB (max_memory)" in err[0] and "--max-memory" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("where", ["capture", "pooled capture", "drawing"])
def test_simulated_allocation_failure_exits_2_with_one_line_and_no_files(tmp_path, capsys, monkeypatch, where):
    def fail(*args, **kwargs):
        raise RuntimeError(ALLOC_FAILURE)

    argv = ["inspect", "The cat sat on the mat.", "--out", str(tmp_path / "o")]
    if where == "capture":
        monkeypatch.setattr("hf_attn_inspect.capture.recorders.scaled_dot_product_attention_with_weights", fail)
        expected = "error: out of memory while computing layer 0's self attention (WeightsRecorder"
    elif where == "pooled capture":
        monkeypatch.setattr("hf_attn_inspect.capture.pooled.fast_attention_with_weights", fail)
        argv = ["inspect", words(400), "--max-memory", "60MB", "--out", str(tmp_path / "o")]
        expected = "error: out of memory while computing layer 0's self attention (PooledStatsRecorder"
    else:
        from hf_attn_inspect.views import plotting

        calls = []
        real = plotting.save_figure

        def second_fails(fig, path, **kw):  # the first image is written, the second runs out of memory
            calls.append(path)
            if len(calls) == 2:
                raise MemoryError()
            return real(fig, path, **kw)

        monkeypatch.setattr(plotting, "save_figure", second_fails)
        expected = "error: out of memory while writing inspect's figures: MemoryError"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected), err
    out = tmp_path / "o"
    assert not out.exists() or not any(out.iterdir()), "no partial output"


def test_view_layers_within_budget(tmp_path, capsys):
    out = tmp_path / "v.html"
    text = words(400, seed=2)
    assert main(["view", text, "--max-memory", "60MB", "-o", str(out)]) == 0  # above the budget: every layer pooled
    assert "every layer's attention pooled" in capsys.readouterr().out and out.stat().st_size > 10_000
    assert main(["view", text, "--max-memory", "200MB", "--layers", "2", "-o", str(out)]) == 0  # fits: layer 2 only
    assert "1 layers x 12 heads" in capsys.readouterr().out and out.stat().st_size > 10_000


# ------------------------------------------------------------------------------------------- 12k tokens
RUNNER = textwrap.dedent(
    """
    import json, resource, sys
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from hf_attn_inspect.cli import main
    rc = main(sys.argv[2:])
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    # VmHWM, not ru_maxrss: Linux carries the parent's (the pytest worker's) peak across fork and exec into it
    print(json.dumps({"rc": rc, "maxrss_kb": int(status["VmHWM"].split()[0]),
                      "vmpeak_kb": int(status["VmPeak"].split()[0])}))
    """
)


@pytest.mark.heavy
def test_12k_tokens_inspect_under_3gb_address_space(tiny_dir, tmp_path):
    """The issue's reproduction: a 12,000-token document through ``inspect`` on a 2-layer, 4-head Llama
    (2 key/value heads) with the address space limited to 3 GB. Full weights would need ~21 GB."""
    t = 12000
    model = tiny_dir("llama_long")
    text = words(t - 2, seed=1, vocab=[w for w in WORDS if w not in (",", ".")])  # one token per word + CLS/SEP
    doc = tmp_path / "doc.txt"
    doc.write_text(text, encoding="utf-8")
    out = tmp_path / "ins"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="2",
               MPLBACKEND="Agg")
    limit = 3 * 2**30
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(limit), "inspect", text, "--model", str(model), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    # the reference, computed meanwhile in this process: the streaming statistics of every head
    ins = AttentionInspector.from_pretrained(model, device="cpu")
    want = streaming_head_metrics(ins, text, q_tile=1024, k_tile=4096)
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    stats = json.loads(stdout.strip().splitlines()[-1])
    assert stats["rc"] == 0, stderr[-3000:]
    assert stats["vmpeak_kb"] * 1024 <= limit and stats["maxrss_kb"] * 1024 < limit, stats
    assert f"tokens ({t})" in stdout and "address-space limit" in stdout and "pooled into 256 x 256 blocks" in stdout
    for name in ("head_L0_H0.png", "layer_0_heads.png", "model_view.png"):
        with Image.open(out / name) as img:
            img.verify()
    got = pd.read_csv(out / "head_metrics.csv")
    assert len(got) == 2 * 4
    np.testing.assert_allclose(got[list(METRICS)].to_numpy(), want[list(METRICS)].to_numpy(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------- view: explorer pages
def _page_data(path: Path) -> dict:
    import re

    text = path.read_text(encoding="utf-8")
    raw = re.search(r'<script type="application/json" id="hai-data">(.*?)</script>', text, re.S).group(1)
    return json.loads(raw)


def _head(entry: dict, l: int, h: int) -> np.ndarray:
    """Dequantised ``[nq, nk]`` matrix of layer index ``l``, head ``h`` of one stack's page data."""
    import base64
    import gzip

    from hf_attn_inspect.views.explorer import dequantize_rows

    P = entry.get("pooled")
    nq, nk = (P["nq"][l], P["nk"][l]) if P else (entry["nq"], entry["nk"])
    base = P["step_base"][l] + h * nq if P else (l * len(entry["head_ids"]) + h) * nq
    lv = np.frombuffer(gzip.decompress(base64.b64decode(entry["levels"][l][h])), np.uint8).reshape(nq, nk)
    st = np.frombuffer(gzip.decompress(base64.b64decode(entry["steps"])), "<f4")[base : base + nq]
    return dequantize_rows(lv, st)


LONG_VIEW = words(300, seed=3)  # 302 tokens: full weights of 6 x 12 heads need ~80 MB, pooled + one layer ~55 MB


def test_view_above_budget_pools_other_layers_chosen_layers_full(inspector, tmp_path, capsys):
    from hf_attn_inspect.runs.planner import capture_for_explorer

    full = inspector(LONG_VIEW)  # the reference: every layer's full weights (fits without a budget)
    out = tmp_path / "v.html"
    assert main(["view", LONG_VIEW, "--layers", "2", "--max-memory", "60MB", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "long input" in printed and "full weights of layer 2" in printed
    data = _page_data(out)
    S = data["stacks"]["self"]
    assert S["layer_ids"] == list(range(6)) and S["pooled"]["layers"] == [True, True, False, True, True, True]
    assert S["rollout"] is None and "pooled" in S["pooled"]["note"] and "blocks of 2 tokens" in S["pooled"]["note"]
    q_edges, k_edges = torch.tensor(S["pooled"]["q_edges"]), torch.tensor(S["pooled"]["k_edges"])
    assert torch.equal(q_edges, block_edges(302)) and S["pooled"]["nq"][0] == 151 <= 256
    rows = np.diff(q_edges.numpy())[:, None]
    for l in (0, 5):
        for h in (0, 7, 11):
            sums = pool_blocks(full.head(l, h), q_edges, k_edges).numpy()
            page = _head(S, l, h) * rows  # the page draws block means (sum / query rows of the block)
            step = sums.max(-1, keepdims=True) / 128
            assert np.abs(page - sums).max() <= (step / 2 + 1e-6).max()
    w = full.head(2, 4).numpy()  # the chosen layer: token-level weights as on a normal page
    assert np.abs(_head(S, 2, 4) - w).max() <= w.max(-1).max() / 256 + 1e-7
    metrics = np.array(S["metrics"]["values"]).reshape(6, 12, -1)
    ref = head_table(full)
    for name in ("entropy", "first_token", "diagonal"):
        k = S["metrics"]["columns"].index(name)
        got = metrics[ref["layer"], ref["head"], k]
        assert np.allclose(got, ref[name].to_numpy(), atol=2e-5), name
    # the engine's block sums themselves are exact: equal to pooling the full matrix (1e-6)
    cap = capture_for_explorer(inspector, LONG_VIEW, layers=[2], max_memory="60MB")
    assert cap.full_layers == [2] and cap.result.layer_ids == [2]
    assert torch.allclose(cap.result.layer(2), full.layer(2), atol=1e-6)
    pooled = cap.pooled["self"]
    assert pooled.layer_ids == [0, 1, 3, 4, 5]
    ref_sums = pool_blocks(full.attentions[[0, 1, 3, 4, 5]], pooled.q_edges, pooled.k_edges)
    assert torch.allclose(pooled.sums, ref_sums, atol=1e-6)


def test_view_above_budget_without_layers_pools_every_layer_and_refuses_when_nothing_fits(inspector, tmp_path, capsys):
    out = tmp_path / "all.html"
    assert main(["view", LONG_VIEW, "--max-memory", "60MB", "-o", str(out)]) == 0
    assert "every layer's attention pooled" in capsys.readouterr().out
    S = _page_data(out)["stacks"]["self"]
    assert S["pooled"]["layers"] == [True] * 6 and len(S["metrics"]["values"]) == 72
    assert len(S["classes"]) == 72 and all(S["classes"])  # every head's class, from the streamed statistics
    assert "No layer has token-level weights" in S["pooled"]["note"]
    assert out.stat().st_size < 3_000_000  # 72 heads of 151 x 151 one-byte levels, gzipped
    assert main(["view", LONG_VIEW, "--layers", "9", "--max-memory", "60MB", "-o", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: layer 9 is out of range; valid layers: 0..5")
    bad = tmp_path / "none.html"
    assert main(["view", LONG_VIEW, "--max-memory", "10MB", "-o", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 302 tokens do not fit even without full weights") and err.count("\n") == 1
    assert not bad.exists()
