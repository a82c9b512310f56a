"""The reference core against torch's own scaled_dot_product_attention, on randomised shapes and masks."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_attn_inspect.core.kernels import mask_to_keep, repeat_kv, scaled_dot_product_attention_with_weights as sdpaw


@st.composite
def problems(draw):
    batch = draw(st.integers(1, 3))
    kv_heads = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    t = draw(st.integers(1, 9))
    s = draw(st.integers(1, 9))
    d = draw(st.sampled_from([1, 4, 8, 16]))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["none", "bool", "int", "additive", "causal"]))
    return batch, kv_heads, groups, t, s, d, seed, kind


@settings(max_examples=150, deadline=None)
@given(problems())
def test_matches_torch_sdpa(p):
    batch, kv_heads, groups, t, s, d, seed, kind = p
    g = torch.Generator().manual_seed(seed)
    h = kv_heads * groups
    q = torch.randn(batch, h, t, d, generator=g)
    k = torch.randn(batch, kv_heads, s, d, generator=g)
    v = torch.randn(batch, kv_heads, s, d, generator=g)
    keep = torch.rand(batch, 1, t, s, generator=g) > 0.3
    keep[..., 0] = True  # at least one key per row: torch gives NaN on fully masked rows
    mask, ref_mask, causal = None, None, False
    if kind == "bool":
        mask = ref_mask = keep
    elif kind == "int":
        mask, ref_mask = keep.long(), keep
    elif kind == "additive":
        bias = torch.randn(batch, 1, t, s, generator=g)
        mask = torch.where(keep, bias, torch.tensor(float("-inf")))
        ref_mask = mask
    elif kind == "causal":
        causal = True
    out, w = sdpaw(q, k, v, mask, is_causal=causal)
    kk, vv = repeat_kv(k, h), repeat_kv(v, h)
    ref = F.scaled_dot_product_attention(q, kk, vv, attn_mask=ref_mask, is_causal=causal)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    sums = w.sum(-1)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
    if kind in ("bool", "int", "additive"):
        assert (w[~keep.expand_as(w)] == 0).all()
    if causal:
        assert (w.triu(1) == 0).all()


def test_fully_masked_rows_are_zero_not_nan():
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 0, 0]])
    out, w = sdpaw(q, k, v, mask)
    assert not torch.isnan(w).any() and not torch.isnan(out).any()
    assert (w[:, :, 1] == 0).all() and (out[:, :, 1] == 0).all()
    assert torch.allclose(w[:, :, 0].sum(-1), torch.ones(1, 2))


def test_dtype_min_additive_mask_counts_as_masked():
    mask = torch.tensor([[0.0, torch.finfo(torch.float32).min, 0.0]])
    keep, bias = mask_to_keep(mask)
    assert keep.tolist() == [[True, False, True]] and bias is None


def test_half_precision_softmax_in_float32():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=g) for _ in range(3))
    out16, w16 = sdpaw(q.bfloat16(), k.bfloat16(), v.bfloat16())
    out32, w32 = sdpaw(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float())
    assert w16.dtype == torch.float32 and out16.dtype == torch.bfloat16
    assert torch.allclose(w16, w32, atol=1e-6)


def test_explicit_scale_and_chapter_example():
    q = k = v = torch.eye(3)[None]
    _, w = sdpaw(q, k, v, scale=1.0)
    e = math.e
    assert w[0, 0, 0].item() == pytest.approx(e / (e + 2))


def test_uneven_gqa_is_refused():
    with pytest.raises(ValueError, match="evenly"):
        repeat_kv(torch.randn(1, 3, 2, 4), 4)
