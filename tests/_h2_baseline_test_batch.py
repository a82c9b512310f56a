"""Dataset analysis: exact statistics against an independent computation, resume, bad data, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from hf_attn_inspect import AttentionInspector, InputError, OutputError

from hf_attn_inspect.stats.analysis import head_metrics
from hf_attn_inspect.runs.dataset import (
    PATTERN_CLASSES,
    SentenceStatsProbe,
    ShardStats,
    analyze_dataset,
)
from hf_attn_inspect.capture.interface import use_implementation
from hf_attn_inspect.cli import main
from hf_attn_inspect.runs.sources import load_dataset_texts, sample_dataset_path, sample_sentences
from hf_attn_inspect.stats.metrics import METRICS
from hf_attn_inspect.core.tokens import punctuation_mask

N = 1000
BAD_ROWS = [None, "", "   ", 42]


# ----------------------------------------------------------------------------- independent reference
def numpy_metrics(a: np.ndarray, special: np.ndarray, punct: np.ndarray, threshold: float = 0.3) -> dict:
    """The metric definitions written out in numpy for one unpadded sentence: ``a`` is [L, H, n, n]."""
    a = a.astype(np.float64)
    n = a.shape[-1]
    i = np.arange(n)
    out = {
        "entropy": (-(a * np.log(a + 1e-10)).sum(-1)).mean(-1),
        "max_entropy": np.full(a.shape[:2], np.log(n)),
        "diagonal": a[..., i, i].mean(-1),
        "previous_token": a[..., i[1:], i[1:] - 1].mean(-1) if n > 1 else np.zeros(a.shape[:2]),
        "next_token": a[..., i[:-1], i[:-1] + 1].mean(-1) if n > 1 else np.zeros(a.shape[:2]),
        "first_token": a[..., :, 0].mean(-1),
        "special_tokens": a[..., :, special].sum(-1).mean(-1),
        "punctuation": a[..., :, punct].sum(-1).mean(-1),
        "max_weight": a.max(-1).mean(-1),
        "weight_std": a.reshape(*a.shape[:2], -1).std(-1),
        "sparsity": (a <= threshold).reshape(*a.shape[:2], -1).mean(-1),
        "mean_distance": (a * np.abs(i[:, None] - i[None, :])).sum(-1).mean(-1),
        "local_window": (a * (np.abs(i[:, None] - i[None, :]) <= 4)).sum(-1).mean(-1),
        "column_share": a.mean(-2).max(-1),
    }
    return out


def numpy_classes(m: dict) -> np.ndarray:
    """The documented class rules, written independently with numpy."""
    scores = np.stack([m["previous_token"] / 0.5, m["next_token"] / 0.5, m["diagonal"] / 0.5,
                       m["column_share"] / 0.6], -1)
    ratio = np.where(m["max_entropy"] > 0, m["entropy"] / np.maximum(m["max_entropy"], 1e-12), 1.0)
    names = np.array(PATTERN_CLASSES)
    fallback = np.where(ratio >= 0.95, "uniform", np.where(ratio >= 0.78, "broad",
                        np.where(m["max_weight"] >= 0.6, "sparse", "mixed")))
    pattern = np.where(scores.max(-1) >= 1.0, names[scores.argmax(-1)], fallback)
    return np.vectorize(PATTERN_CLASSES.index)(pattern)


@pytest.fixture(scope="module")
def big_dataset():
    texts = sample_sentences(N)
    return texts, texts[:500] + BAD_ROWS + texts[500:]


@pytest.fixture(scope="module")
def big_run(inspector, big_dataset):
    _, rows = big_dataset
    df = analyze_dataset(inspector, rows, batch_size=64, shard_size=400)
    return df


@pytest.fixture(scope="module")
def reference(inspector, big_dataset):
    """Eager attention, one sentence at a time, with transformers' own output_attentions; numpy metrics."""
    texts, _ = big_dataset
    model, tok = inspector.model, inspector.tokenizer
    per: dict[str, list] = {k: [] for k in METRICS + ("column_share",)}
    with use_implementation(model, "eager"), torch.no_grad():
        for text in texts:
            enc = tok(text, return_tensors="pt", return_special_tokens_mask=True, truncation=True, max_length=512)
            special = enc.pop("special_tokens_mask")[0].numpy().astype(bool)
            out = model(**enc, output_attentions=True)
            a = torch.stack([x[0] for x in out.attentions]).numpy()
            punct = punctuation_mask(tok.convert_ids_to_tokens(enc["input_ids"][0])).numpy()
            for k, v in numpy_metrics(a, special, punct).items():
                per[k].append(v)
    return {k: np.stack(v) for k, v in per.items()}  # each [N, L, H]


def test_head_stats_equal_independent_eager_numpy(big_run, reference):
    df = big_run
    nl, nh = reference["entropy"].shape[1:]
    assert len(df) == nl * nh
    assert (df["n_sentences"] == N).all()
    assert df[["layer", "head"]].to_numpy().tolist() == [[l, h] for l in range(nl) for h in range(nh)]
    for k in METRICS + ("column_share",):
        np.testing.assert_allclose(df[f"{k}_mean"].to_numpy(), reference[k].mean(0).ravel(), atol=1e-5, rtol=0,
                                   err_msg=k)
        np.testing.assert_allclose(df[f"{k}_std"].to_numpy(), reference[k].std(0).ravel(), atol=1e-5, rtol=0,
                                   err_msg=k)
    # class shares: independent rules on the independent values (a borderline sentence may flip)
    cls = numpy_classes(reference)
    for c, name in enumerate(PATTERN_CLASSES):
        share = (cls == c).mean(0).ravel()
        np.testing.assert_allclose(df[f"share_{name}"].to_numpy(), share, atol=3 / N, err_msg=name)
    shares = df[[f"share_{c}" for c in PATTERN_CLASSES]].to_numpy()
    np.testing.assert_allclose(shares.sum(1), 1.0, atol=1e-12)


def test_bad_rows_skipped_and_counted(big_run):
    counts = big_run.attrs["counts"]
    assert counts["rows"] == N + len(BAD_ROWS)
    assert counts["analysed"] == N
    assert counts["skipped"] == {"empty": 2, "non_string": 2}


def test_truncation_counted(inspector):
    texts = ["one two three", "a much longer sentence that will not fit into eight tokens at all", "fine."]
    df = analyze_dataset(inspector, texts, max_length=8)
    assert df.attrs["counts"]["truncated"] == 1
    assert df.attrs["counts"]["analysed"] == 3


def test_missing_column_lists_available(inspector):
    with pytest.raises(InputError, match="available columns: text, label"):
        analyze_dataset(inspector, None, column="sentence")


def test_cli_missing_column_one_line(capsys, tmp_path):
    rc = main(["batch", "--column", "sentence", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0 and err.startswith("error: ") and "text, label" in err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- resume
class Crash(RuntimeError):
    pass


def test_killed_run_resumes_to_identical_results(inspector, tmp_path, monkeypatch):
    texts = sample_sentences(100)
    kw = dict(batch_size=16, shard_size=25, report=False)
    full = tmp_path / "full"
    analyze_dataset(inspector, texts, out=full, **kw)

    part = tmp_path / "part"
    real_save = batch_mod._save_shard
    saved = []

    def crashing_save(out_dir, shard, stats):
        if len(saved) == 2:
            raise Crash("killed")
        real_save(out_dir, shard, stats)
        saved.append(shard)

    monkeypatch.setattr(batch_mod, "_save_shard", crashing_save)
    with pytest.raises(Crash):
        analyze_dataset(inspector, texts, out=part, **kw)
    monkeypatch.setattr(batch_mod, "_save_shard", real_save)
    assert saved == [0, 1]
    assert not (part / "head_stats.csv").exists()
    assert json.loads((part / "run.json").read_text())["status"] == "running"
    # an unfinished run is neither silently restarted nor overwritten
    with pytest.raises(OutputError, match="--resume"):
        analyze_dataset(inspector, texts, out=part, **kw)
    # resume with different settings is refused
    with pytest.raises(OutputError, match="batch_size"):
        analyze_dataset(inspector, texts, out=part, resume=True, batch_size=8, shard_size=25)

    ran = []
    real_run = batch_mod._run_shard
    monkeypatch.setattr(batch_mod, "_run_shard", lambda *a, **k: ran.append(a[2]) or real_run(*a, **k))
    analyze_dataset(inspector, texts, out=part, resume=True, **kw)
    assert ran == [50, 75]  # only the shards that were not finished
    assert (part / "head_stats.csv").read_bytes() == (full / "head_stats.csv").read_bytes()
    run = json.loads((part / "run.json").read_text())
    assert run["status"] == "finished" and run["shards_resumed"] == 2
    # a finished run is never overwritten silently
    with pytest.raises(OutputError, match="--overwrite"):
        analyze_dataset(inspector, texts, out=part, **kw)
    analyze_dataset(inspector, texts[:10], out=part, overwrite=True, **kw)
    assert pd.read_csv(part / "head_stats.csv")["n_sentences"].iloc[0] == 10


def test_shards_combine_exactly(inspector):
    texts = sample_sentences(60)
    one = analyze_dataset(inspector, texts, shard_size=1000, batch_size=16)
    many = analyze_dataset(inspector, texts, shard_size=13, batch_size=16)
    cols = [c for c in one.columns if c != "pattern"]
    np.testing.assert_allclose(many[cols].to_numpy(float), one[cols].to_numpy(float), atol=1e-6, rtol=0)
    # and merging ShardStats by + equals their element-wise sums
    a = ShardStats.empty(2, 3, METRICS, PATTERN_CLASSES)
    b = ShardStats.empty(2, 3, METRICS, PATTERN_CLASSES)
    va, vb = torch.rand(5, 2, 3, len(METRICS)), torch.rand(4, 2, 3, len(METRICS))
    a.add_values(va, torch.zeros(5, 2, 3, dtype=torch.long))
    b.add_values(vb, torch.ones(4, 2, 3, dtype=torch.long))
    ab = a + b
    np.testing.assert_allclose(ab.sums, torch.cat([va, vb]).double().sum(0).numpy(), rtol=1e-12)
    assert ab.n == 9 and ab.class_counts[..., 0].max() == 5 and ab.class_counts[..., 1].max() == 4


# ----------------------------------------------------------------------------- other models, pairs, probes
@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_tiny_models_equal_head_metrics(family, tiny_model, tiny_tokenizer):
    """Causal, GQA (llama 4q/2kv) and eager models: the engine equals head_metrics over captured results."""
    inspector = AttentionInspector(tiny_model(family), tiny_tokenizer)
    texts = sample_sentences(40)
    df = analyze_dataset(inspector, texts, batch_size=7)
    ref = head_metrics(inspector(texts, batch_size=40))
    for k in METRICS:
        np.testing.assert_allclose(df[f"{k}_mean"].to_numpy(), ref[k].to_numpy(), atol=1e-5, rtol=0, err_msg=k)


def test_sentence_pairs_from_csv(inspector, tmp_path):
    texts = sample_sentences(30)
    path = tmp_path / "pairs.csv"
    pd.DataFrame({"premise": texts[:15], "hypothesis": texts[15:]}).to_csv(path, index=False)
    df = analyze_dataset(inspector, str(path), column="premise,hypothesis", batch_size=4)
    ref = head_metrics(inspector(texts[:15], texts[15:]))
    assert df["n_sentences"].iloc[0] == 15
    for k in METRICS:
        np.testing.assert_allclose(df[f"{k}_mean"].to_numpy(), ref[k].to_numpy(), atol=1e-5, rtol=0, err_msg=k)


def test_probe_is_pluggable(inspector):
    made = []

    class CountingProbe(SentenceStatsProbe):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    texts = sample_sentences(20)
    df = analyze_dataset(inspector, texts, batch_size=8, probe=CountingProbe)
    ref = analyze_dataset(inspector, texts, batch_size=8)
    assert len(made) == 3
    pd.testing.assert_frame_equal(df, ref)


# ----------------------------------------------------------------------------- datasets and CLI
def test_sample_dataset_is_balanced_and_varied():
    df = pd.read_csv(sample_dataset_path())
    assert list(df.columns) == ["text", "label"]
    assert 300 <= len(df) <= 400 and df["text"].is_unique
    assert abs(df["label"].mean() - 0.5) < 0.1 and set(df["label"]) == {0, 1}
    words = df["text"].str.split().str.len()
    assert words.min() >= 3 and words.max() >= 40
    assert df["text"].str.contains(r"\?").any() and df["text"].str.contains(r"\d").any()
    assert df["text"].str.contains('"').any()


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "txt", "folder"])
def test_load_local_formats(tmp_path, fmt):
    frame = pd.DataFrame({"text": ["first text.", "second one?", "third!"], "label": [1, 0, 1]})
    if fmt == "csv":
        path = tmp_path / "d.csv"
        frame.to_csv(path, index=False)
    elif fmt == "jsonl":
        path = tmp_path / "d.jsonl"
        frame.to_json(path, orient="records", lines=True)
    elif fmt == "parquet":
        path = tmp_path / "d.parquet"
        frame.to_parquet(path)
    elif fmt == "txt":
        path = tmp_path / "d.txt"
        path.write_text("\n".join(frame["text"]) + "\n")
    else:
        path = tmp_path / "folder"
        path.mkdir()
        frame.iloc[:2].to_csv(path / "a.csv", index=False)
        frame.iloc[2:].to_csv(path / "b.csv", index=False)
    ds, info = load_dataset_texts(str(path), limit=2)
    assert ds["text"] == ["first text.", "second one?"]
    assert info.num_rows == 2 and info.total_rows == 3 and info.columns == ("text",)


def test_load_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_dataset_texts(str(tmp_path / "missing.csv"))
    with pytest.raises(InputError, match="could not load dataset"):
        load_dataset_texts("no-such-user/no-such-dataset-xyz")
    with pytest.raises(InputError, match="two separated by a comma"):
        load_dataset_texts(None, column="a,b,c")
    with pytest.raises(InputError, match="'b' not found"):
        load_dataset_texts(None, column="text,b")


def test_cli_batch_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["batch", "--limit", "40", "--batch-size", "16", "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    csv = pd.read_csv(out / "head_stats.csv")
    pq = pd.read_parquet(out / "head_stats.parquet")
    assert len(csv) == 72 and csv["n_sentences"].iloc[0] == 40
    np.testing.assert_allclose(csv["entropy_mean"], pq["entropy_mean"], rtol=1e-8)
    for m in ("entropy", "diagonal", "previous_token", "next_token", "first_token", "special_tokens",
              "punctuation", "max_weight", "mean_distance"):
        assert f"{m}_mean" in csv and f"{m}_std" in csv
    layer = pd.read_csv(out / "layer_stats.csv")
    assert layer["layer"].tolist() == list(range(6))
    np.testing.assert_allclose(layer["entropy_mean"], csv.groupby("layer")["entropy_mean"].mean(), rtol=1e-6)
    for name in ("entropy", "special_tokens", "previous_token", "classes"):
        with Image.open(out / "figures" / f"{name}.png") as img:
            assert img.size[0] > 200 and img.size[1] > 150
    report = (out / "report.md").read_text()
    assert "layer 0 head 2: previous head in 100% of 40 sentences" in report  # MiniLM's well-known previous-token head
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["counts"]["analysed"] == 40
    assert run["parameters"]["dataset"]["source"] == "sample" and "torch" in run["versions"]
    # a second run into the finished directory refuses, with one line
    capsys.readouterr()
    assert main(["batch", "--limit", "40", "--out", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
