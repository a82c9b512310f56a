"""Property tests (hypothesis): attention rows sum to 1, no NaN, metrics within bounds, padding changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_attn_inspect import scaled_dot_product_attention_with_weights
from hf_attn_inspect.stats.patterns import classify_heads
from hf_attn_inspect.stats.tables import head_metrics
from hf_attn_inspect.stats.metrics import METRICS, sentence_metrics

SHARES = ("diagonal", "previous_token", "next_token", "first_token", "special_tokens", "punctuation", "max_weight",
          "sparsity")


@st.composite
def attention_batches(draw):
    b = draw(st.integers(1, 4))
    h = draw(st.integers(1, 3))
    t = draw(st.integers(1, 12))
    d = draw(st.sampled_from([2, 4, 8]))
    lengths = draw(st.lists(st.integers(1, t), min_size=b, max_size=b))
    causal = draw(st.booleans())
    temperature = draw(st.sampled_from([0.01, 1.0, 10.0, 100.0]))  # from nearly uniform to saturated
    seed = draw(st.integers(0, 2**16))
    return b, h, t, d, lengths, causal, temperature, seed


def _attention(b, h, t, d, lengths, causal, temperature, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, d, generator=g) * temperature
    k = torch.randn(b, h, t, d, generator=g)
    v = torch.randn(b, h, t, d, generator=g)
    valid = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]  # [B, T]
    mask = valid[:, None, None, :]  # keys
    _, w = scaled_dot_product_attention_with_weights(q, k, v, mask, is_causal=causal)
    return w, valid


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attention_batches())
def test_random_attention_rows_and_metric_bounds(params):
    b, h, t, d, lengths, causal, temperature, seed = params
    w, valid = _attention(*params)
    assert torch.isfinite(w).all()
    rows = valid[:, None, :].expand(b, h, t)
    sums = (w * valid[:, None, None, :]).sum(-1)
    assert torch.allclose(sums[rows], torch.ones(()), atol=1e-5)  # every real row sums to 1 over real keys
    assert (w * ~valid[:, None, None, :]).abs().max() == 0  # padding keys get exactly 0
    if causal:
        assert (w.triu(1) == 0).all()
    m = sentence_metrics(w, valid, special=valid & (torch.arange(t) == 0), punctuation=valid & (torch.arange(t) % 3 == 1), causal=causal)
    for k, val in m.items():
        assert torch.isfinite(val).all(), k
        assert val.shape == (b, h)
    eps = 1e-5
    assert (m["entropy"] >= -eps).all() and (m["entropy"] <= m["max_entropy"] + eps).all()
    assert (m["max_entropy"] <= torch.log(torch.tensor(lengths, dtype=torch.float32))[:, None] + eps).all()
    for k in SHARES:
        assert ((m[k] >= -eps) & (m[k] <= 1 + eps)).all(), k
    n = torch.tensor(lengths, dtype=torch.float32)[:, None]
    assert (m["max_weight"] >= 1 / n - eps).all()  # a row's maximum is at least the uniform weight
    assert ((m["mean_distance"] >= -eps) & (m["mean_distance"] <= (n - 1) + eps)).all()
    assert ((m["weight_std"] >= 0) & (m["weight_std"] <= 0.5 + eps)).all()


@settings(max_examples=50, deadline=None)
@given(attention_batches(), st.integers(1, 6), st.floats(0.0, 1.0))
def test_metrics_ignore_padding_contents(params, extra, garbage):
    """Padding a sentence (with any garbage in the padding rows/columns) does not change its metrics."""
    b, h, t, d, lengths, causal, temperature, seed = params
    w, valid = _attention(*params)
    big = torch.full((b, h, t + extra, t + extra), garbage)
    big[..., :t, :t] = w
    big_valid = torch.zeros(b, t + extra, dtype=torch.bool)
    big_valid[:, :t] = valid
    small = head_metrics(w[:, None], valid, causal=causal, per_sentence=True)
    padded = head_metrics(big[:, None], big_valid, causal=causal, per_sentence=True)
    np.testing.assert_allclose(padded[list(METRICS)].to_numpy(), small[list(METRICS)].to_numpy(), atol=1e-6)
    # and the same holds sentence by sentence against the unpadded single sentence
    for i, n in enumerate(lengths):
        alone = head_metrics(w[i, None, :, :n, :n][:, None], causal=causal, per_sentence=True)
        np.testing.assert_allclose(
            padded[padded["sentence"] == i][list(METRICS)].to_numpy(), alone[list(METRICS)].to_numpy(), atol=1e-5
        )
        assert (classify_heads(big[i, None][:, None], big_valid[i, None], causal=causal)["pattern"].to_numpy()
                == classify_heads(w[i, None, :, :n, :n][:, None], causal=causal)["pattern"].to_numpy()).all()


WORDS = ["the", "cat", "sat", "on", "a", "mat", ",", ".", "attention", "heads", "tokens", "read", "!", "why", "42"]
texts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map(" ".join)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=texts, other=texts)
def test_real_attention_is_invariant_to_padding(inspector, text, other):
    """The embedded model: a text's attention and metrics are the same alone and padded next to a longer text."""
    longer = other + " " + " ".join(WORDS)
    alone = inspector(text)
    padded, _ = inspector([text, longer])
    w = alone.attentions
    assert torch.isfinite(w).all()
    assert torch.allclose(w.sum(-1), torch.ones(()), atol=1e-5)
    assert torch.allclose(padded.attentions, w, atol=1e-5)
    np.testing.assert_allclose(head_metrics(padded)[list(METRICS)].to_numpy(), head_metrics(alone)[list(METRICS)].to_numpy(),
                               atol=1e-5)
    m = head_metrics(alone)
    assert ((m["entropy"] >= 0) & (m["entropy"] <= m["max_entropy"] + 1e-5)).all()
    for k in SHARES:
        assert m[k].between(0, 1 + 1e-6).all(), k
