"""head_metrics against an independent numpy computation; pattern classes; head detectors."""

from __future__ import annotations

import math
import unicodedata

import numpy as np
import pandas as pd
import pytest
import torch

from hf_attn_inspect import AttentionInspector, InputError
from hf_attn_inspect.runs.detectors import DETECTOR_KINDS, detect_heads, pattern_mask, repeated_random_tokens
from hf_attn_inspect.stats.chapter import analyze_attention_pattern, format_attention_analysis
from hf_attn_inspect.stats.patterns import PatternThresholds, classify_heads, head_table
from hf_attn_inspect.stats.tables import format_head_table, head_metrics
from hf_attn_inspect.stats.metrics import METRICS, column_share, entropy_ratio
import tiny_models
from conftest import SENTENCES

EXTRA = [
    "Padding must never change what a head does.",
    "Why?",
    "Numbers like 3.14 and 42 appear, too; so do semicolons.",
    "She said: \"attention!\" and left.",
    "One two three four five six seven eight nine ten eleven twelve thirteen.",
    "Ok",
    "The model reads the [SEP] token as a place to park attention.",
    "Heads, layers and tokens.",
]
TEXTS_64 = [f"{s} ({i})" if i >= 16 else s for i, s in enumerate((SENTENCES + EXTRA) * 4)]


def test_head_metrics_on_one_captured_batch_tensor(inspector, results_64):
    """The engine path: one padded batch of 64 captured as [B, L, H, T, T] with its mask, no per-sentence work,
    gives the same table as the list of results."""
    from hf_attn_inspect.capture.recorders import WeightsRecorder

    batch = inspector.encode(TEXTS_64)
    probe = WeightsRecorder()
    inspector.run(batch, probe)
    weights = torch.stack([probe.weights["self"][l] for l in range(6)], 1)  # [B, L, H, T, T]
    assert weights.shape[0] == 64 and not batch.valid.all()
    table = head_metrics(weights, batch.valid)
    ref = head_metrics(results_64)
    cols = [c for c in METRICS if c not in ("special_tokens", "punctuation")]  # no token masks given here
    np.testing.assert_allclose(table[cols].to_numpy(), ref[cols].to_numpy(), atol=1e-5)


def _is_punct(token: str) -> bool:
    text = token[2:] if token.startswith("##") else token
    return bool(text) and all(unicodedata.category(c).startswith("P") for c in text)


def numpy_metrics(a: np.ndarray, tokens: list[str], special: list[bool]) -> dict[str, float]:
    """The issue's definitions for one head's [n, n] weights, written out with plain numpy."""
    n = a.shape[0]
    idx = np.arange(n)
    ent = -(a * np.log(a + 1e-10)).sum(1)
    out = {
        "entropy": ent.mean(),
        "max_entropy": math.log(n),
        "diagonal": a[idx, idx].mean(),
        "previous_token": np.mean([a[i, i - 1] for i in range(1, n)]) if n > 1 else 0.0,
        "next_token": np.mean([a[i, i + 1] for i in range(n - 1)]) if n > 1 else 0.0,
        "first_token": a[:, 0].mean(),
        "special_tokens": a[:, np.array(special, bool)].sum(1).mean(),
        "punctuation": a[:, np.array([_is_punct(t) for t in tokens], bool)].sum(1).mean(),
        "max_weight": a.max(1).mean(),
        "weight_std": a.std(),
        "sparsity": (a <= 0.3).mean(),
        "mean_distance": (a * np.abs(idx[:, None] - idx[None, :])).sum(1).mean(),
        "local_window": np.mean([a[i, max(0, i - 4) : i + 5].sum() for i in range(n)]),
    }
    return {k: float(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def results_64(inspector):
    return inspector(TEXTS_64, batch_size=64)


def test_head_metrics_equal_numpy_on_padded_batch_of_64(results_64):
    assert len({r.seq_len for r in results_64}) > 5  # really a padded batch of different lengths
    per = head_metrics(results_64, per_sentence=True)
    table = head_metrics(results_64)
    assert len(table) == 6 * 12 and list(table.columns[:2]) == ["layer", "head"]
    assert set(METRICS) <= set(table.columns)
    per = per.set_index(["sentence", "layer", "head"])
    expected_rows = []
    for b, r in enumerate(results_64):
        att = r.to_numpy().astype(np.float64)
        for l in range(att.shape[0]):
            for h in range(att.shape[1]):
                ref = numpy_metrics(att[l, h], r.tokens, r.special_tokens_mask)
                got = per.loc[(b, l, h)]
                for k, v in ref.items():
                    assert abs(got[k] - v) <= 1e-5, (b, l, h, k, got[k], v)
                expected_rows.append({"sentence": b, "layer": l, "head": h, **ref})
    mean = pd.DataFrame(expected_rows).groupby(["layer", "head"])[list(METRICS)].mean().reset_index()
    np.testing.assert_allclose(table[list(METRICS)].to_numpy(), mean[list(METRICS)].to_numpy(), atol=1e-5)
    # punctuation and special tokens are non-trivial on this batch
    assert table["special_tokens"].max() > 0.5 and table["punctuation"].max() > 0.05


def _head(n: int, kind: str) -> np.ndarray:
    a = np.full((n, n), 0.02 / (n - 1))
    if kind == "previous":
        a[np.arange(1, n), np.arange(n - 1)] = 0.98
        a[0] = 0.0
        a[0, 0] = 1.0
    elif kind == "next":
        a[np.arange(n - 1), np.arange(1, n)] = 0.98
        a[-1] = 0.0
        a[-1, -1] = 1.0
    elif kind == "diagonal":
        a[np.arange(n), np.arange(n)] = 0.98
    elif kind == "column":
        a[:, -1] = 0.98
    elif kind == "uniform":
        a = np.full((n, n), 1.0 / n)
    elif kind == "sparse":  # one sharp key per row, scattered
        rng = np.random.default_rng(0)
        a = np.zeros((n, n))
        keys = rng.permutation(n)
        keys[keys == np.arange(n)] = (keys[keys == np.arange(n)] + 3) % n
        a[np.arange(n), keys] = 1.0
        a = 0.7 * a + 0.3 * np.full((n, n), 1.0 / n)
    elif kind == "broad":  # smooth but not flat: decays slowly with distance
        d = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])
        a = np.exp(-d / 4.0)
    elif kind == "mixed":
        a = 0.35 * np.eye(n) + 0.35 * np.eye(n, k=-1) + 0.3 / n
        a[0, 0] += 0.35
    a = a / a.sum(1, keepdims=True)
    return a


@pytest.mark.parametrize("kind", ["previous", "next", "diagonal", "column", "uniform", "broad", "sparse", "mixed"])
def test_classify_synthetic_heads(kind):
    w = torch.tensor(_head(24, kind), dtype=torch.float32)
    df = classify_heads(w)
    assert df["pattern"].tolist() == [kind]
    if kind == "column":
        assert df["class"].iloc[0] == "column pos 23"


def test_classify_thresholds_are_configurable():
    w = torch.tensor(_head(24, "previous"), dtype=torch.float32)
    assert classify_heads(w)["pattern"].iloc[0] == "previous"
    assert classify_heads(w, previous=0.99)["pattern"].iloc[0] != "previous"
    assert classify_heads(w, thresholds=PatternThresholds(previous=0.99))["pattern"].iloc[0] != "previous"
    with pytest.raises(InputError):
        classify_heads(w, bogus=0.1)


def test_head_table_names_special_token_columns(inspector):
    results = inspector(SENTENCES)
    df = head_table(results)
    assert len(df) == 72 and df["class"].notna().all()
    columns = df[df["pattern"] == "column"]
    assert len(columns) > 0
    # the embedded MiniLM parks attention on [CLS]: its column heads name it
    assert (columns["column_target"] == "[CLS]").mean() > 0.8
    # the named column really receives that share: check one head against the weights directly
    row = columns.iloc[0]
    shares = [r.head(int(row["layer"]), int(row["head"])).mean(0)[0].item() for r in results]
    assert abs(np.mean(shares) - row["column_share"]) < 1e-5
    text = format_head_table(df)
    lines = text.splitlines()
    assert len(lines) == 73 and "class" in lines[0] and "column [CLS]" in text
    assert len({len(line) for line in lines}) == 1  # fixed width


def test_pattern_mask_definitions():
    toks = torch.tensor([[9, 1, 2, 3, 1, 2, 3]])  # BOS 9 then "1 2 3" twice
    keys, rows = pattern_mask(toks, "induction", start=1)
    # query at position 4 (token 1): the key after the earlier 1 is position 2
    assert keys[0, 4].nonzero().flatten().tolist() == [2]
    assert keys[0, 6].nonzero().flatten().tolist() == [4]  # token 3: after the earlier 3? no: after 3 is pos 4
    assert rows[0].tolist() == [False, False, False, False, True, True, True]
    keys, rows = pattern_mask(toks, "duplicate_token", start=1)
    assert keys[0, 5].nonzero().flatten().tolist() == [2]
    keys, rows = pattern_mask(toks, "previous_token", start=1)
    assert rows[0].tolist() == [False, False, True, True, True, True, True]
    seqs = repeated_random_tokens(50, seq_len=10, num_sequences=3, seed=1, bos=50)
    assert seqs.shape == (3, 21) and (seqs[:, 0] == 50).all() and (seqs[:, 1:11] == seqs[:, 11:]).all()
    assert all(len(set(s[1:11].tolist())) == 10 for s in seqs)
    assert torch.equal(seqs, repeated_random_tokens(50, seq_len=10, num_sequences=3, seed=1, bos=50))


def test_detectors_on_embedded_model(inspector):
    prev = detect_heads(inspector, "previous_token")
    assert list(prev.columns) == ["layer", "head", "score"] and len(prev) == 72
    assert prev["score"].between(0, 1).all()
    # layer 0 head 2 of MiniLM is a previous-token head (head_table above finds it on text too)
    assert prev.loc[prev["score"].idxmax(), ["layer", "head"]].tolist() == [0, 2]
    assert prev["score"].max() > 0.9
    with pytest.raises(InputError):
        detect_heads(inspector, "bogus")


# ------------------------------------------------------------------ the chapter's single-head analysis
HAND = np.array([
    [1.00, 0.00, 0.00, 0.00],
    [0.60, 0.40, 0.00, 0.00],
    [0.10, 0.70, 0.20, 0.00],
    [0.25, 0.25, 0.25, 0.25],
])


@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_analyze_attention_pattern_equals_numpy_on_a_hand_made_head(threshold):
    a = HAND
    n = a.shape[0]
    logs = np.log(np.where(a > 0, a, 1.0))
    want = {
        "diagonal_mean": np.mean(np.diag(a)),
        "first_token_mean": np.mean(a[:, 0]),
        "previous_token_mean": np.mean([a[i, i - 1] for i in range(1, n)]),
        "weight_std": np.std(a),
        "sparsity": np.mean(a <= threshold),
        "mean_entropy": np.mean(-(a * logs).sum(1)),
        "max_entropy": math.log(n),
    }
    # the same values written out by hand, so the numpy above is itself checked
    assert want["diagonal_mean"] == pytest.approx((1.0 + 0.4 + 0.2 + 0.25) / 4)
    assert want["previous_token_mean"] == pytest.approx((0.6 + 0.7 + 0.25) / 3)
    assert want["sparsity"] == pytest.approx((12 if threshold == 0.3 else 13) / 16)
    got = analyze_attention_pattern(torch.tensor(a, dtype=torch.float32), threshold=threshold)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    assert got["is_diagonal_dominant"] is bool(want["diagonal_mean"] > threshold)
    assert got["attends_to_first"] is bool(want["first_token_mean"] > threshold)
    assert got["is_previous_dominant"] is bool(want["previous_token_mean"] > threshold)
    assert got["is_uniform"] is bool(want["weight_std"] < 0.1)
    assert got == analyze_attention_pattern(a.astype(np.float32), threshold=threshold)  # numpy input, same result
    text = format_attention_analysis(got)
    assert f"mean diagonal weight: {got['diagonal_mean']:.3f}" in text
    assert f"sparsity: {want['sparsity']:.1%}" in text
    assert f"{got['mean_entropy']:.3f} / {want['max_entropy']:.3f} nats" in text


def test_analyze_attention_pattern_refuses_non_square_weights():
    with pytest.raises(InputError):
        analyze_attention_pattern(torch.ones(3, 4) / 4)


def test_entropy_ratio_is_one_for_one_token_rows():
    ent = torch.tensor([0.5, math.log(3), 0.0])
    max_ent = torch.tensor([math.log(2), math.log(3), 0.0])
    torch.testing.assert_close(entropy_ratio(ent, max_ent), torch.tensor([0.5 / math.log(2), 1.0, 1.0]))


def test_column_share_is_the_largest_mean_column_over_real_tokens():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(2, 3, 2, 6, 6, generator=g)  # [B, L, H, T, T]
    w = w / w.sum(-1, keepdim=True)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 4:] = False
    w[1, ..., 4:] = 0.0
    w[1, ..., 4:, :] = 0.0
    w[1, ..., :4, 5] = 0.0
    w[1, ..., 4, :] = 5.0  # a padding query row with huge weights must not count
    share, key = column_share(w, valid)
    assert share.shape == key.shape == (2, 3, 2)
    a = w.double().numpy()
    for b, n in ((0, 6), (1, 4)):
        cols = a[b, :, :, :n, :n].mean(-2)  # [L, H, n]: mean over the n real query rows
        np.testing.assert_allclose(share[b].numpy(), cols.max(-1), atol=1e-6)
        assert (key[b].numpy() == cols.argmax(-1)).all()
    # 4-D weights [B, H, T, T] (one layer, as in the dataset probe) give the same as that layer of the 5-D call
    s4, k4 = column_share(w[:, 1], valid)
    torch.testing.assert_close(s4, share[:, 1])
    assert torch.equal(k4, key[:, 1])


# ------------------------------------------------------------------ a tiny decoder learns induction
# (the trained model is the session fixture ``trained_decoder`` of conftest.py, shared with test_importance.py)
V, T = tiny_models.INDUCTION_V, tiny_models.INDUCTION_T
_tiny_decoder = tiny_models.induction_decoder


@pytest.mark.xdist_group("induction_decoder")  # with test_importance's: trained once
def test_trained_tiny_decoder_has_induction_head_in_layer_2(trained_decoder):
    inspector = AttentionInspector(trained_decoder, None)
    scores = detect_heads(inspector, "induction", seq_len=T, num_sequences=32, seed=123)
    by_layer = scores.groupby("layer")["score"].max()
    assert by_layer[1] > 0.5, scores
    assert by_layer[0] < 0.3, scores
    assert scores.loc[scores["score"].idxmax(), "layer"] == 1


def test_random_init_decoder_has_no_induction_head():
    scores = detect_heads(AttentionInspector(_tiny_decoder(0), None), "induction", seq_len=T, num_sequences=32, seed=123)
    assert scores["score"].max() < 0.15, scores  # about 1/(i+1) of an untrained causal head: ~0.05
    # the detector is not blind: the same random model scores > 0 (about 1/i) everywhere
    assert (scores["score"] > 0.005).all()
