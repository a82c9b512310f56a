"""Dataset analysis: exact statistics against an independent computation, resume, bad data, CLI."""

from __future__ import annotations

import json
import os
import stat
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from hf_attn_inspect import AttentionInspector, InputError, OutputError, default_model_path
from hf_attn_inspect.cli import main
from hf_attn_inspect.core.tokens import punctuation_mask
from hf_attn_inspect.runs.dataset import SentenceStatsRecorder, analyze_dataset
from hf_attn_inspect.stats.patterns import PATTERN_CLASSES
from hf_attn_inspect.runs.sharded import ShardStats, run_sharded, shard_path
from hf_attn_inspect.runs.sources import load_dataset_texts, sample_dataset_path, sample_documents, sample_sentences
from hf_attn_inspect.stats.metrics import METRICS
from hf_attn_inspect.stats.tables import head_metrics
from hf_attn_inspect.views.reports import write_dataset_report

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


def eager_reference(texts: list[str], batch_size: int = 64, max_length: int = 512) -> dict[str, np.ndarray]:
    """transformers' own eager attention (a fresh model loaded with attn_implementation="eager",
    output_attentions=True), length-sorted padded batches of ``batch_size``; each sentence's unpadded
    [L, H, n, n] block goes to the numpy metrics. Nothing of the package's capture is involved."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_path())
    model = AutoModel.from_pretrained(default_model_path(), attn_implementation="eager").eval()
    per: dict[str, list] = {k: [None] * len(texts) for k in METRICS + ("column_share",)}
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    with torch.no_grad():
        for b0 in range(0, len(texts), batch_size):
            rows = order[b0:b0 + batch_size].tolist()
            enc = tok([texts[i] for i in rows], return_tensors="pt", return_special_tokens_mask=True,
                      truncation=True, max_length=max_length, padding=True)
            special = enc.pop("special_tokens_mask").numpy().astype(bool)
            att = torch.stack(model(**enc, output_attentions=True).attentions, 1).numpy()  # [B, L, H, T, T]
            for j, i in enumerate(rows):
                n = int(enc["attention_mask"][j].sum())
                assert enc["attention_mask"][j, :n].all()  # right padding: the real tokens come first
                punct = punctuation_mask(tok.convert_ids_to_tokens(enc["input_ids"][j, :n])).numpy()
                for k, v in numpy_metrics(att[j, :, :, :n, :n], special[j, :n], punct).items():
                    per[k][i] = v
    return {k: np.stack(v) for k, v in per.items()}  # each [N, L, H], dataset order


@pytest.fixture(scope="module")
def reference(big_dataset):
    """The independent eager/numpy statistics of the big dataset (:func:`eager_reference`)."""
    texts, _ = big_dataset
    return eager_reference(texts, 64)


@pytest.mark.heavy
@pytest.mark.xdist_group("big_run")  # big_run on one worker, computed once
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


@pytest.mark.xdist_group("big_run")
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


def test_killed_run_resumes_to_identical_results(inspector, tmp_path):
    texts = sample_sentences(100)
    kw = dict(batch_size=16, shard_size=25)  # 4 shards of 25 rows, 2 batches (16 + 9) each
    full = tmp_path / "full"
    analyze_dataset(inspector, texts, out=full, **kw)

    made: list[int] = []
    crash = {"at": 4}  # the 5th batch is the first of the third shard (rows 50-75)

    class CrashingRecorder(SentenceStatsRecorder):
        def __init__(self, *args, **kwargs):
            if crash["at"] is not None and len(made) == crash["at"]:
                raise Crash("killed")
            super().__init__(*args, **kwargs)
            made.append(int(self.valid.shape[0]))

    part = tmp_path / "part"
    with pytest.raises(Crash):
        analyze_dataset(inspector, texts, out=part, probe=CrashingRecorder, **kw)
    assert sorted((part / "shards").iterdir()) == [shard_path(part, 0), shard_path(part, 1)]
    assert not (part / "head_stats.csv").exists()
    assert json.loads((part / "run.json").read_text())["status"] == "stopped"
    # an unfinished run is neither silently restarted nor overwritten
    with pytest.raises(OutputError, match="--resume"):
        analyze_dataset(inspector, texts, out=part, probe=CrashingRecorder, **kw)
    # resume with different settings is refused
    with pytest.raises(OutputError, match="batch_size"):
        analyze_dataset(inspector, texts, out=part, resume=True, probe=CrashingRecorder, batch_size=8, shard_size=25)

    kept = {i: shard_path(part, i).stat().st_ino for i in (0, 1)}
    made.clear()
    crash["at"] = None
    analyze_dataset(inspector, texts, out=part, resume=True, probe=CrashingRecorder, **kw)
    assert made == [16, 9, 16, 9]  # only the two shards that were not finished (rows 50-100) ran
    assert {i: shard_path(part, i).stat().st_ino for i in (0, 1)} == kept  # finished shards were not rewritten
    assert (part / "head_stats.csv").read_bytes() == (full / "head_stats.csv").read_bytes()
    run = json.loads((part / "run.json").read_text())
    assert run["status"] == "finished" and run["shards_resumed"] == 2
    # a finished run is never overwritten silently
    with pytest.raises(OutputError, match="--overwrite"):
        analyze_dataset(inspector, texts, out=part, probe=CrashingRecorder, **kw)
    analyze_dataset(inspector, texts[:10], out=part, overwrite=True, **kw)
    assert pd.read_csv(part / "head_stats.csv")["n_sentences"].iloc[0] == 10


# ----------------------------------------------------------------------------- the run loop alone
def _counting(calls: list, fail_at: int | None = None, shard_size: int = 10):
    """A compute function: sentence values = their row numbers, one skipped row in the first shard."""

    def compute(start, stop, bar):
        if fail_at is not None and start // shard_size == fail_at:
            raise Crash(f"killed in shard {fail_at}")
        calls.append((start, stop))
        stats = ShardStats.empty(1, 2, ("row",), ("all",))
        rows = torch.arange(min(start + (start == 0), stop), stop, dtype=torch.float32)  # row 0 is "empty"
        stats.add_values(rows[:, None, None, None].expand(-1, 1, 2, 1), torch.zeros(len(rows), 1, 2, dtype=torch.long))
        stats.rows = stop - start
        stats.skipped = {"empty": int(start == 0)}
        stats.truncated = int(start == 10)
        return stats

    return compute


def test_run_sharded_merges_and_counts():
    calls: list = []
    run = run_sharded(35, 10, _counting(calls), column="text")
    assert calls == [(0, 10), (10, 20), (20, 30), (30, 35)]
    assert run.shards_total == 4 and run.shards_resumed == 0 and run.analysed_now == 34
    assert run.counts == {"rows": 35, "analysed": 34, "skipped": {"empty": 1}, "skipped_total": 1, "truncated": 1}
    np.testing.assert_array_equal(run.total.sums[..., 0], np.full((1, 2), float(sum(range(1, 35)))))
    np.testing.assert_array_equal(run.total.sumsq[..., 0], np.full((1, 2), float(sum(i * i for i in range(1, 35)))))
    assert run.total.class_counts.tolist() == [[[34], [34]]]
    with pytest.raises(InputError, match="no usable text in column 'text'"):
        run_sharded(0, 10, _counting([]))
    with pytest.raises(InputError, match="shard size"):
        run_sharded(5, 0, _counting([]))


def test_run_sharded_writes_atomic_shards_and_resumes(tmp_path):
    out = tmp_path / "run"
    params = {"shard_size": 10, "model": "m"}
    calls: list = []
    with pytest.raises(Crash):
        run_sharded(35, 10, _counting(calls, fail_at=2), out_dir=out, params=params)
    assert calls == [(0, 10), (10, 20)]
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard-000000.npz", "shard-000001.npz"]  # no temp files
    umask = os.umask(0)
    os.umask(umask)
    for i in (0, 1):
        assert stat.S_IMODE(shard_path(out, i).stat().st_mode) == 0o666 & ~umask
        saved = ShardStats.load(shard_path(out, i))
        assert saved.n == (9 if i == 0 else 10) and saved.rows == 10
    running = json.loads((out / "run.json").read_text())
    assert running["status"] == "stopped" and running["shards_total"] == 4 and running["parameters"] == params
    # an unfinished run: refused without resume, and resumed only with the same parameters
    with pytest.raises(OutputError, match="--resume"):
        run_sharded(35, 10, _counting([]), out_dir=out, params=params)
    with pytest.raises(OutputError, match=r"different settings \(model\)"):
        run_sharded(35, 10, _counting([]), out_dir=out, params={**params, "model": "other"}, resume=True)
    calls.clear()
    resumed = run_sharded(35, 10, _counting(calls), out_dir=out, params=params, resume=True)
    assert calls == [(20, 30), (30, 35)]  # the finished shards are read back, not recomputed
    assert resumed.shards_resumed == 2 and resumed.analysed_now == 15
    whole = run_sharded(35, 10, _counting([]))
    np.testing.assert_array_equal(resumed.total.sums, whole.total.sums)
    np.testing.assert_array_equal(resumed.total.sumsq, whole.total.sumsq)
    assert resumed.counts == whole.counts
    # a damaged shard is recomputed on resume
    shard_path(out, 1).write_bytes(b"not a shard")
    calls.clear()
    run_sharded(35, 10, _counting(calls), out_dir=out, params=params, resume=True)
    assert calls == [(10, 20)]


def test_run_sharded_refuses_finished_runs_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    params = {"shard_size": 10}
    run_sharded(25, 10, _counting([]), out_dir=out, params=params)
    # the engine marks the run finished and writes its outputs once the loop returns
    (out / "run.json").write_text(json.dumps({"status": "finished", "parameters": params}))
    (out / "table.csv").write_text("old")
    (out / "keep.txt").write_text("not an output")
    for kw in ({}, {"resume": True}):
        with pytest.raises(OutputError, match="finished run; pass --overwrite"):
            run_sharded(25, 10, _counting([]), out_dir=out, params=params, **kw)
    calls: list = []
    run_sharded(15, 10, _counting(calls), out_dir=out, params=params, overwrite=True, outputs=("table.csv",))
    assert calls == [(0, 10), (10, 15)]
    assert not (out / "table.csv").exists() and (out / "keep.txt").exists()
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard-000000.npz", "shard-000001.npz"]
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        run_sharded(5, 10, _counting([]), out_dir=tmp_path / "file", params=params)


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


def test_api_report_matches_the_command(inspector, tmp_path):
    """analyze_dataset(out=...) writes the data, write_dataset_report the figures and report.md."""
    out = tmp_path / "api"
    df = analyze_dataset(inspector, sample_sentences(12), batch_size=8, out=out)
    assert sorted(p.name for p in out.iterdir()) == ["head_stats.csv", "head_stats.parquet", "layer_stats.csv",
                                                    "run.json", "shards"]
    written = write_dataset_report(out, df)
    assert [p.relative_to(out).as_posix() for p in written] == [
        "figures/entropy.png", "figures/special_tokens.png", "figures/previous_token.png", "figures/classes.png",
        "report.md"]
    assert "12 sentences analysed of 12 rows" in (out / "report.md").read_text()
    bare = df.copy()
    bare.attrs.clear()
    with pytest.raises(InputError, match="run record"):
        write_dataset_report(tmp_path / "x", bare)


# ----------------------------------------------------------------------------- document length: the tiled path
def test_document_length_tiles_equal_independent_eager_numpy(inspector, tmp_path):
    """Paragraphs of 70-260 tokens in padded batches take the tiled CPU kernel (logged in run.json) and
    every metric equals the independent eager/numpy reference at the suite's tolerance; sentences in the
    same run take the materialised weights."""
    texts = sample_documents(inspector.tokenizer, [260, 75, 180, 120, 240, 90, 200]) + sample_sentences(5)
    df = analyze_dataset(inspector, texts, batch_size=4, out=tmp_path / "run")
    ref = eager_reference(texts, 4, max_length=512)
    for k in METRICS + ("column_share",):
        np.testing.assert_allclose(df[f"{k}_mean"].to_numpy(), ref[k].mean(0).ravel(), atol=1e-5, rtol=0, err_msg=k)
        np.testing.assert_allclose(df[f"{k}_std"].to_numpy(), ref[k].std(0).ravel(), atol=1e-5, rtol=0, err_msg=k)
    paths = json.loads((tmp_path / "run" / "run.json").read_text())["attention_paths"]
    assert paths == {"tiles": 2, "weights": 1}, paths  # 12 texts by 4: the shortest four are sentences


def test_tiles_recorder_equals_weights_recorder(inspector):
    """One padded batch through SentenceStatsRecorder, once on the tiles and once on the weights (the
    length threshold moved): the same per-sentence values for every metric."""
    import hf_attn_inspect.runs.dataset as dataset_module
    from hf_attn_inspect.runs.data import sorted_batches

    texts = sample_documents(inspector.tokenizer, [150, 97, 130])
    (_, enc), = list(sorted_batches(inspector, texts, None, batch_size=3, max_length=512))
    m = enc.masks("self")
    values = {}
    for path, threshold in (("tiles", 1), ("weights", 10**6)):
        old = dataset_module.TILE_MIN_LENGTH
        dataset_module.TILE_MIN_LENGTH = threshold
        try:
            p = SentenceStatsRecorder(m.valid, m.special, m.punctuation)
            inspector.run(enc, p)
        finally:
            dataset_module.TILE_MIN_LENGTH = old
        assert p.paths == {path}
        values[path] = p.per_sentence()
    # both are float32 (mean distances of ~50 tokens carry ~4e-6 of rounding each): the independent
    # reference above is the exactness test; here the two paths agree to float32 rounding
    np.testing.assert_allclose(values["tiles"].numpy(), values["weights"].numpy(), atol=1e-5, rtol=1e-6)


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


def test_sorted_batches_cover_every_text_once_shortest_first(inspector):
    from hf_attn_inspect.runs.data import sorted_batches

    texts = sample_sentences(21)
    full = [len(inspector.tokenizer(t)["input_ids"]) for t in texts]
    for kept in (False, True):
        got = list(sorted_batches(inspector, texts, batch_size=8, max_length=12, kept_length=kept))
        assert [len(rows) for rows, _ in got] == [8, 8, 5]
        order = [r for rows, _ in got for r in rows]
        # shortest first by the full (or kept) length; equal lengths keep dataset order (stable)
        assert order == sorted(range(21), key=lambda r: (min(full[r], 12) if kept else full[r], r))
        for rows, batch in got:  # each batch is its texts encoded alone: padded to its own longest
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # truncation warnings
                alone = inspector.encode([texts[r] for r in rows], max_length=12)
            assert torch.equal(batch.inputs["input_ids"], alone.inputs["input_ids"])
            assert batch.truncated == [full[r] > 12 for r in rows]


def test_data_spec_is_the_keywords(inspector):
    from hf_attn_inspect import DataSpec, analyze_dataset as top_level

    assert top_level is analyze_dataset
    texts = sample_sentences(20)
    ref = analyze_dataset(inspector, texts, batch_size=8, max_length=10)
    spec = DataSpec(texts, batch_size=8, max_length=10)
    pd.testing.assert_frame_equal(analyze_dataset(inspector, data=spec), ref)
    pd.testing.assert_frame_equal(analyze_dataset(inspector, spec), ref)
    assert ref.attrs["run"]["parameters"]["batch_size"] == 8 and ref.attrs["counts"]["truncated"] > 0
    with pytest.raises(InputError, match="batch_size"):
        analyze_dataset(inspector, data=spec, batch_size=4)
    with pytest.raises(InputError, match="not both"):
        analyze_dataset(inspector, texts, data=spec)
    with pytest.raises(InputError, match="at least 1"):
        analyze_dataset(inspector, data=DataSpec(texts, batch_size=0))


def test_probe_is_pluggable(inspector):
    made = []

    class CountingRecorder(SentenceStatsRecorder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    texts = sample_sentences(20)
    df = analyze_dataset(inspector, texts, batch_size=8, probe=CountingRecorder)
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
