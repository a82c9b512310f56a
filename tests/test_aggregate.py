"""Head averages, rollout and word-level aggregation against plain numpy loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_attn_inspect import AttentionResult, InputError
from hf_attn_inspect.stats.aggregate import (
    aggregate_words,
    attention_rollout,
    head_average,
    word_labels,
    word_units,
    words,
)


def random_attention(layers=3, heads=4, t=7, seed=0, causal=False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(layers, heads, t, t, generator=g) * 2
    if causal:
        s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
    return s.softmax(-1)


def test_head_average_matches_loop():
    w = random_attention()
    got = head_average(w, heads=[0, 2]).numpy()
    a = w.numpy()
    for layer in range(a.shape[0]):
        np.testing.assert_allclose(got[layer], (a[layer, 0] + a[layer, 2]) / 2, atol=1e-6)
    np.testing.assert_allclose(head_average(w).sum(-1).numpy(), 1.0, atol=1e-5)
    with pytest.raises(InputError):
        head_average(w, heads=[])


@pytest.mark.parametrize("causal", [False, True])
def test_rollout_matches_numpy_loop(causal):
    w = random_attention(layers=4, heads=3, t=6, seed=1, causal=causal)
    got = attention_rollout(w).numpy()
    a = w.numpy().astype(np.float64)
    t = a.shape[-1]
    expect = None
    for layer in range(a.shape[0]):
        mean = np.zeros((t, t))
        for h in range(a.shape[1]):
            mean += a[layer, h]
        mean /= a.shape[1]
        aug = 0.5 * mean + 0.5 * np.eye(t)
        for i in range(t):
            aug[i] /= aug[i].sum()
        expect = aug if expect is None else aug @ expect
        np.testing.assert_allclose(got[layer], expect, atol=1e-5)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    if causal:  # information only flows from earlier tokens
        assert np.all(np.triu(got[-1], 1) < 1e-7)


def test_rollout_of_identity_heads_is_identity_and_residual_zero_is_product():
    t = 5
    eye = torch.eye(t).expand(2, 3, t, t)
    np.testing.assert_allclose(attention_rollout(eye).numpy(), np.broadcast_to(np.eye(t), (2, t, t)), atol=1e-6)
    w = random_attention(layers=2, heads=1, t=t, seed=3)
    got = attention_rollout(w, residual=0.0).numpy()
    np.testing.assert_allclose(got[1], w[1, 0].numpy() @ w[0, 0].numpy(), atol=1e-5)


def test_rollout_rejects_non_square():
    with pytest.raises(InputError):
        attention_rollout(torch.rand(2, 2, 3, 4))


def test_word_units_pieces_specials_and_pairs():
    # [CLS] play ##ing ball [SEP] ball ##s [SEP]; word ids restart in the second text
    word_ids = [None, 0, 0, 1, None, 0, 0, None]
    special = [True, False, False, False, True, False, False, True]
    seg = [None, 0, 0, 0, None, 1, 1, None]
    units = word_units(word_ids, special, seg)
    assert units.tolist() == [0, 1, 1, 2, 3, 4, 4, 5]
    tokens = ["[CLS]", "play", "##ing", "ball", "[SEP]", "ball", "##s", "[SEP]"]
    assert word_labels(tokens, units) == ["[CLS]", "playing", "ball", "[SEP]", "balls", "[SEP]"]
    # word 0 of text A and word 0 of text B are different words even if adjacent
    assert word_units([0, 0, 0], [False] * 3, [0, 1, 1]).tolist() == [0, 1, 1]
    assert word_labels(["Ġplay", "ing"], np.array([0, 0])) == ["playing"]


def test_aggregate_words_matches_loop():
    w = random_attention(layers=2, heads=3, t=8, seed=4)
    units = np.array([0, 1, 1, 2, 3, 4, 4, 5])
    got = aggregate_words(w, units).numpy()
    a = w.numpy()
    n = units.max() + 1
    for layer in range(2):
        for h in range(3):
            expect = np.zeros((n, n))
            count = np.zeros(n)
            for i in range(8):
                count[units[i]] += 1
                for j in range(8):
                    expect[units[i], units[j]] += a[layer, h, i, j]
            expect /= count[:, None]
            np.testing.assert_allclose(got[layer, h], expect, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)


def test_words_on_real_pair(inspector):
    r = inspector("Tokenization splits unbelievably long words.", "Embeddings!")
    wr = words(r)
    units = word_units(r.word_ids, r.special_tokens_mask, r.segment_ids)
    assert wr.seq_len == units.max() + 1 < r.seq_len
    np.testing.assert_allclose(wr.attentions.sum(-1).numpy(), 1.0, atol=1e-5)
    assert sum(wr.special_tokens_mask) == sum(r.special_tokens_mask)
    assert "unbelievably" in wr.tokens and "embeddings" in wr.tokens
    assert wr.tokens[0] == "[CLS]" and wr.tokens[-1] == "[SEP]"
    assert wr.segment_ids[wr.tokens.index("embeddings")] == 1
    # a word made of one token keeps its row and column exactly
    i, j = r.tokens.index("long"), wr.tokens.index("long")
    k, m = r.tokens.index("words"), wr.tokens.index("words")
    np.testing.assert_allclose(wr.attentions[..., j, m].numpy(), r.attentions[..., i, k].numpy(), atol=1e-6)


def test_words_encoder_decoder(tiny_model, tiny_tokenizer):
    from hf_attn_inspect import AttentionInspector

    insp = AttentionInspector(tiny_model("bart"), tiny_tokenizer, name="tiny-bart")
    r = insp("Tokenization is unbelievable.", "Decoding unbelievably.")
    wr = words(r)
    assert wr.cross_attentions.shape[-2:] == (len(wr.decoder_tokens), len(wr.tokens))
    np.testing.assert_allclose(wr.cross_attentions.sum(-1).numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(wr.decoder_attentions.sum(-1).numpy(), 1.0, atol=1e-5)
    assert isinstance(wr, AttentionResult)
