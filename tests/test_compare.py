"""compare: per-head JS divergence and metric deltas between two checkpoints, the compare command."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import tiny_models
from conftest import SENTENCES
from hf_attn_inspect import AttentionInspector, DataSpec, InputError, OutputError
from hf_attn_inspect.stats.tables import head_metrics
from hf_attn_inspect.cli import main
from hf_attn_inspect.runs.compare import compare_models, js_divergence_rows
from hf_attn_inspect.stats.metrics import METRICS
from hf_attn_inspect.views.comparison import comparison_report, describe_changes, write_comparison

TEXTS = SENTENCES[:4]
ALTERED = [(1, 4), (3, 9)]


def _alter(inspector: AttentionInspector, heads) -> AttentionInspector:
    """A copy of the model whose chosen heads have their query weights and bias zeroed (-> uniform attention)."""
    model = copy.deepcopy(inspector.model)
    d = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        for layer, head in heads:
            query = model.encoder.layer[layer].attention.self.query
            query.weight[head * d : (head + 1) * d] = 0
            query.bias[head * d : (head + 1) * d] = 0
    return AttentionInspector(model, inspector.tokenizer)


@pytest.fixture(scope="module")
def altered(inspector):
    return _alter(inspector, ALTERED)


def test_js_rows_known_values():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.25, 0.75]])
    q = torch.tensor([[0.0, 1.0], [0.5, 0.5], [0.75, 0.25]])
    js = js_divergence_rows(p, q)
    expect = 0.5 * (0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)) * 2
    assert js[0].item() == pytest.approx(math.log(2), abs=1e-7)
    assert js[1].item() == 0.0
    assert js[2].item() == pytest.approx(expect, abs=1e-7)
    # the mixture m = (p + q) / 2 is taken per row: rows with different mixtures in one call give each
    # row's own divergence (symmetric in p and q), the same as the plain-loop definition
    rng = np.random.default_rng(0)
    pa = rng.dirichlet(np.ones(7), size=5)
    pb = rng.dirichlet(np.full(7, 0.3), size=5)
    pa[0, :3] = 0.0
    pa[0] /= pa[0].sum()  # zero entries count as 0 ln 0 = 0
    rows = js_divergence_rows(torch.from_numpy(pa), torch.from_numpy(pb))
    np.testing.assert_array_equal(rows.numpy(), js_divergence_rows(torch.from_numpy(pb), torch.from_numpy(pa)).numpy())
    for i in range(5):
        assert rows[i].item() == pytest.approx(_numpy_js(pa[i : i + 1], pb[i : i + 1]), abs=1e-6)


def test_model_against_itself_is_zero(inspector):
    same = compare_models(inspector, inspector, TEXTS, classes=False)
    assert len(same) == 72 and (same["js_divergence"] == 0).all()
    assert (same.filter(like="delta_").to_numpy() == 0).all()
    # a separate copy of the same weights (a second model object run separately) gives 0 as well
    twin = AttentionInspector(copy.deepcopy(inspector.model), inspector.tokenizer)
    df = compare_models(inspector, twin, TEXTS, classes=False)
    assert df["js_divergence"].abs().max() < 1e-9


def test_altered_heads_rank_first(inspector, altered):
    df = compare_models(inspector, altered, TEXTS, batch_size=3, classes=False)
    top = {(int(r.layer), int(r.head)) for r in df.head(2).itertuples()}
    assert top == set(ALTERED)
    assert df["js_divergence"].iloc[1] > df["js_divergence"].iloc[2:].max()
    assert list(df["js_divergence"]) == sorted(df["js_divergence"], reverse=True)
    # zeroed queries make those heads uniform over the real keys: B's entropy reaches its maximum
    for layer, head in ALTERED:
        row = df[(df["layer"] == layer) & (df["head"] == head)].iloc[0]
        assert row["b_entropy"] == pytest.approx(row["b_max_entropy"], abs=1e-4)
        assert row["delta_entropy"] > 0
    # heads before the first altered layer cannot change
    assert (df[df.layer < 1]["js_divergence"] == 0).all()


def _numpy_js(pa: np.ndarray, pb: np.ndarray) -> float:
    """Mean over rows of JS(pa_i, pb_i), plain loops."""
    total = 0.0
    for i in range(pa.shape[0]):
        js = 0.0
        for j in range(pa.shape[1]):
            m = 0.5 * (pa[i, j] + pb[i, j])
            if pa[i, j] > 0:
                js += 0.5 * pa[i, j] * math.log(pa[i, j] / m)
            if pb[i, j] > 0:
                js += 0.5 * pb[i, j] * math.log(pb[i, j] / m)
        total += js
    return total / pa.shape[0]


def test_values_match_independent_computation(tiny_tokenizer):
    a = AttentionInspector(tiny_models.build("bert", seed=0), tiny_tokenizer)
    b = AttentionInspector(tiny_models.build("bert", seed=1), tiny_tokenizer)
    texts = SENTENCES[:5]
    df = compare_models(a, b, texts, batch_size=2, classes=False).sort_values(["layer", "head"]).reset_index(drop=True)
    ra, rb = a(texts), b(texts)
    for row in df.itertuples():
        expect = np.mean([_numpy_js(x.head(row.layer, row.head).numpy().astype(np.float64),
                                    y.head(row.layer, row.head).numpy().astype(np.float64)) for x, y in zip(ra, rb)])
        assert row.js_divergence == pytest.approx(expect, abs=1e-6)
    ma, mb = head_metrics(ra), head_metrics(rb)
    for k in METRICS:
        np.testing.assert_allclose(df[f"delta_{k}"], mb[k] - ma[k], atol=1e-5)
        np.testing.assert_allclose(df[f"a_{k}"], ma[k], atol=1e-5)


def test_padding_does_not_change_the_numbers(tiny_tokenizer):
    a = AttentionInspector(tiny_models.build("bert", seed=0), tiny_tokenizer)
    b = AttentionInspector(tiny_models.build("bert", seed=1), tiny_tokenizer)
    together = compare_models(a, b, SENTENCES[:6], batch_size=6, classes=False).sort_values(["layer", "head"])
    alone = compare_models(a, b, SENTENCES[:6], batch_size=1, classes=False).sort_values(["layer", "head"])
    np.testing.assert_allclose(together["js_divergence"], alone["js_divergence"], atol=1e-6)


def test_causal_gqa_model(tiny_tokenizer):
    a = AttentionInspector(tiny_models.build("llama", seed=0), tiny_tokenizer)
    b = AttentionInspector(tiny_models.build("llama", seed=1), tiny_tokenizer)
    df = compare_models(a, b, TEXTS, classes=False)
    assert len(df) == 8 and (df["js_divergence"] > 0).all() and (df["js_divergence"] <= math.log(2)).all()


def test_shape_mismatch_refused(inspector, tiny_tokenizer):
    tiny = AttentionInspector(tiny_models.build("bert"), tiny_tokenizer)
    with pytest.raises(InputError, match="same layers and heads"):
        compare_models(inspector, tiny, TEXTS)


def test_tokenizer_mismatch_says_where(inspector):
    from transformers import AutoTokenizer

    from hf_attn_inspect import default_model_path

    cased = AutoTokenizer.from_pretrained(default_model_path(), do_lower_case=False)
    other = AttentionInspector(inspector.model, cased)
    with pytest.raises(InputError, match=r"split text 1 \('The cat sat.'\) differently at token 1: A has 'the', B has"):
        compare_models(inspector, other, ["The cat sat.", "hello"])


def test_dataset_mode_skips_empty_rows(tmp_path, tiny_tokenizer):
    a = AttentionInspector(tiny_models.build("bert", seed=0), tiny_tokenizer)
    b = AttentionInspector(tiny_models.build("bert", seed=1), tiny_tokenizer)
    path = tmp_path / "d.csv"
    pd.DataFrame({"sentence": ["The cat sat.", "", "Hello there, world!", "A dog."], "x": [1, 2, 3, 4]}).to_csv(path, index=False)
    df = compare_models(a, b, str(path), column="sentence", classes=False)
    assert df.attrs["counts"]["analysed"] == 3 and df.attrs["counts"]["skipped_total"] == 1
    lst = compare_models(a, b, ["The cat sat.", "Hello there, world!", "A dog."], classes=False)
    pd.testing.assert_frame_equal(df, lst)
    spec = DataSpec(str(path), column="sentence", batch_size=2)
    by_spec = compare_models(a, b, data=spec, classes=False)
    pd.testing.assert_frame_equal(by_spec, df, atol=1e-6)  # same numbers (to float32 rounding) whatever the batch size
    assert by_spec.attrs["run"]["parameters"]["batch_size"] == 2 and df.attrs["run"]["parameters"]["batch_size"] == 16
    with pytest.raises(InputError, match="column"):
        compare_models(a, b, data=spec, column="x")
    assert (df["n_sentences"] == 3).all()
    with pytest.raises(InputError, match="available columns"):
        compare_models(a, b, str(path), column="nope")


def test_shipped_dataset_pairs(tiny_tokenizer, tmp_path):
    a = AttentionInspector(tiny_models.build("bert", seed=0), tiny_tokenizer)
    b = AttentionInspector(tiny_models.build("bert", seed=1), tiny_tokenizer)
    df = compare_models(a, b, None, limit=6, classes=False)
    assert df.attrs["counts"]["analysed"] == 6
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"p": f"premise {i}.", "h": f"hypothesis {i}?"}) for i in range(3)))
    pairs = compare_models(a, b, str(path), column="p,h", classes=False)
    assert pairs.attrs["counts"]["analysed"] == 3 and (pairs["js_divergence"] > 0).all()


def test_resume_from_shards(tmp_path, tiny_tokenizer):
    a = AttentionInspector(tiny_models.build("bert", seed=0), tiny_tokenizer)
    b = AttentionInspector(tiny_models.build("bert", seed=1), tiny_tokenizer)
    out = tmp_path / "run"
    opts = {"batch_size": 2, "shard_size": 3, "classes": False}
    full = compare_models(a, b, SENTENCES, out=out, **opts)
    csv = (out / "head_divergence.csv").read_text()
    shards = sorted((out / "shards").glob("shard-*.npz"))
    assert len(shards) == 3
    with pytest.raises(OutputError, match="--overwrite"):
        compare_models(a, b, SENTENCES, out=out, **opts)
    # simulate a run killed after two shards: the last shard and the outputs are missing
    shards[-1].unlink()
    (out / "head_divergence.csv").unlink()
    run = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**run, "status": "running"}))
    with pytest.raises(OutputError, match="--resume"):
        compare_models(a, b, SENTENCES, out=out, **opts)
    resumed = compare_models(a, b, SENTENCES, out=out, resume=True, **opts)
    pd.testing.assert_frame_equal(full, resumed)
    assert (out / "head_divergence.csv").read_text() == csv
    assert json.loads((out / "run.json").read_text())["shards_resumed"] == 2
    # the kept shards really are reused: poison one and the resumed result shows it
    (out / "run.json").write_text(json.dumps({**run, "status": "running"}))
    with np.load(shards[0]) as data:
        poisoned = dict(data)
    poisoned["sums"] = poisoned["sums"] + 10.0
    np.savez(shards[0], **poisoned)
    again = compare_models(a, b, SENTENCES, out=out, resume=True, **opts)
    assert (again["js_divergence"].to_numpy() > full["js_divergence"].to_numpy().max()).all()
    (out / "run.json").write_text(json.dumps({**run, "status": "running"}))
    with pytest.raises(OutputError, match="different settings"):
        compare_models(a, b, SENTENCES[:5], out=out, resume=True, **opts)
    overwritten = compare_models(a, b, SENTENCES, out=out, overwrite=True, **opts)
    pd.testing.assert_frame_equal(full, overwritten)


def test_pattern_classes_of_both_models(tiny_tokenizer):
    from hf_attn_inspect.stats.patterns import classify_heads

    a = AttentionInspector(tiny_models.build("bert", seed=0), tiny_tokenizer)
    b = AttentionInspector(tiny_models.build("bert", seed=1), tiny_tokenizer)
    df = compare_models(a, b, TEXTS).sort_values(["layer", "head"])
    for side, ins in (("a", a), ("b", b)):
        expected = classify_heads(ins(list(TEXTS)[:16])).sort_values(["layer", "head"])
        assert list(df[f"class_{side}"]) == list(expected["class"])


def test_compare_to_dir_outputs(tmp_path, inspector, altered):
    out = tmp_path / "cmp"
    df = compare_models(inspector, altered, TEXTS, out=out, classes=False)
    assert sorted(p.name for p in out.iterdir()) == ["head_divergence.csv", "run.json", "shards"]  # the engine's data
    assert write_comparison(out, df, inspector, altered, top=2) == ["divergence_map.png", "head_diffs.png"]
    csv = pd.read_csv(out / "head_divergence.csv")
    assert list(csv.columns[:3]) == ["layer", "head", "js_divergence"]
    assert [f"delta_{k}" for k in METRICS] == list(csv.columns[3 : 3 + len(METRICS)])
    assert list(csv["js_divergence"]) == sorted(csv["js_divergence"], reverse=True)
    assert len(csv) == len(df) == 72
    for name in ("divergence_map.png", "head_diffs.png"):
        with Image.open(out / name) as im:
            im.verify()
    with Image.open(out / "head_diffs.png") as im:
        assert im.size[1] > im.size[0] * 0.4  # two rows of panels
    report = (out / "report.md").read_text()
    first = report.split("## Heads that changed most")[1]
    for layer, head in ALTERED:
        assert f"layer {layer} head {head}: JS" in first.split("\n3.")[0]
    assert "max weight" in first.split("\n2.")[0] and "-> 0.000" in first.split("\n2.")[0]  # weight std -> 0
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["counts"]["analysed"] == 4 and run["first_text"] == TEXTS[0]
    assert run["figures"] == ["divergence_map.png", "head_diffs.png"]


def test_describe_changes_ranks_by_spread_over_heads():
    """Changes count relative to each metric's spread over A's heads, not in raw units."""
    base = {f"{side}_{k}": 0.0 for k in METRICS for side in ("a", "b", "delta")}
    rows = []
    for h in range(4):
        row = dict(base, layer=0, head=h, js_divergence=0.1 * (4 - h))
        row["a_entropy"] = 1.0 + h  # entropy spreads over 1..4 nats across heads: std 1.29
        row["a_first_token"] = 0.1 + 0.01 * h  # first-token share spreads over 0.10..0.13: std 0.0129
        row["b_entropy"], row["b_first_token"] = row["a_entropy"], row["a_first_token"]
        rows.append(row)
    rows[0].update(b_entropy=1.5, delta_entropy=0.5, b_first_token=0.2, delta_first_token=0.1, b_max_weight=0.3,
                   delta_max_weight=0.3)
    df = pd.DataFrame(rows)
    # max weight has no spread over heads (std 0 counts as 1): 0.3; first-token 0.1 / 0.0129 = 7.7; entropy 0.39
    assert describe_changes(df.iloc[0], df) == [
        "first-token share 0.100 -> 0.200", "entropy (nats) 1.000 -> 1.500", "max weight 0.000 -> 0.300"]
    assert describe_changes(df.iloc[0], df, n=1) == ["first-token share 0.100 -> 0.200"]
    df.attrs.update(model_a="a", model_b="b", n_sentences=3)
    report = comparison_report(df, top=1)
    assert "1. layer 0 head 0: JS 0.4000; first-token share 0.100 -> 0.200; entropy (nats) 1.000 -> 1.500" in report
    with pytest.raises(InputError, match="missing a_entropy"):
        describe_changes(df.iloc[0].drop("a_entropy"), df)


def test_cli(tmp_path, tiny_tokenizer, capsys):
    dirs = []
    for seed in (0, 1):
        d = tmp_path / f"m{seed}"
        tiny_models.build("bert", seed=seed).save_pretrained(d)
        tiny_tokenizer.save_pretrained(d)
        dirs.append(str(d))
    out = tmp_path / "out"
    code = main(["compare", *dirs, "--text", "The cat sat on the mat.", "--text", "Hello, world!", "--out", str(out),
                 "--top", "2", "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    csv = pd.read_csv(out / "head_divergence.csv")
    top = csv.iloc[0]
    assert f"layer {int(top.layer):2d} head {int(top['head']):2d}  {top.js_divergence:.4f}" in printed
    assert main(["compare", *dirs, "--text", "x", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--overwrite" in err and "\n" not in err
    assert main(["compare", dirs[0], str(tmp_path / "missing"), "--text", "x", "--out", str(tmp_path / "o2")]) == 2
    assert capsys.readouterr().err.startswith(f"error: model directory '{tmp_path / 'missing'}' does not exist")
    assert not (tmp_path / "o2" / "head_divergence.csv").exists()
    assert main(["compare", dirs[0], "default", "--text", "x", "--out", str(tmp_path / "o3"), "--device", "cpu"]) == 2
    assert "same layers and heads" in capsys.readouterr().err


@pytest.mark.parametrize("family,stack", [("bart", "encoder"), ("bart", "decoder"), ("deberta", None), ("gpt2", None)])
def test_other_families(tiny_tokenizer, family, stack):
    a = AttentionInspector(tiny_models.build(family, seed=0), tiny_tokenizer)
    b = AttentionInspector(tiny_models.build(family, seed=1), tiny_tokenizer)
    texts = SENTENCES[:3]
    df = compare_models(a, b, texts, stack=stack, batch_size=2, classes=False).sort_values(["layer", "head"])
    which = {"decoder": "decoder"}.get(stack, "self")
    ra, rb = a(texts), b(texts)
    for row in df.itertuples():
        expect = np.mean([_numpy_js(x.head(row.layer, row.head, which).numpy().astype(np.float64),
                                    y.head(row.layer, row.head, which).numpy().astype(np.float64)) for x, y in zip(ra, rb)])
        assert row.js_divergence == pytest.approx(expect, abs=1e-7)
    assert (compare_models(a, a, texts, stack=stack, classes=False)["js_divergence"] == 0).all()


def test_identical_models_print_no_most_changed_heads(tmp_path, capsys):
    """Issue 23: compare of a model with itself says that no head changed instead of listing heads at 0.0000;
    head_diffs.png names the text it shows, with readable token labels."""
    import matplotlib.pyplot as plt

    from hf_attn_inspect.runs.compare import head_pair_results
    from hf_attn_inspect.views.comparison import plot_head_diffs

    d = tiny_models.save("bert", tmp_path / "bert")
    rc = main(["compare", str(d), str(d), "--text", "The cat sat on the mat.", "--out", str(tmp_path / "c"), "-q"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "no head changed (every JS divergence is below 1e-06 nats" in out
    assert "most changed" not in out and "0.0000" not in out
    assert "No head changed" in (tmp_path / "c" / "report.md").read_text()
    inspector = AttentionInspector.from_pretrained(str(d), device="cpu")
    ra, rb = head_pair_results(inspector, inspector, "The cat sat on the mat.", None, [(0, 1)])
    fig = plot_head_diffs(ra, rb, [(0, 1)], text="The cat sat on the mat.")
    assert fig._suptitle.get_text() == f'A and B on the first text ({len(ra.tokens)} tokens): "The cat sat on the mat."'
    sizes = {label.get_fontsize() for ax in fig.axes[:4] for label in ax.get_xticklabels() if label.get_text()}
    assert sizes and min(sizes) >= 8
    plt.close(fig)
