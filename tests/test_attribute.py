"""The ``attribute`` command, token shares, the disagreement report and the measures' figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hf_attn_inspect import AttentionResult, InputError
from hf_attn_inspect.cli import main
from hf_attn_inspect.core.mixing import row_normalise
from hf_attn_inspect.stats.attribution import GROUPS, disagreement_report, token_groups, token_shares
from hf_attn_inspect.views.measures import plot_measure_map, plot_measures

TEXT = "The cat sat on the mat, and it purred."
NAMES = ["weights", "norm", "alti", "rollout"]


@pytest.fixture(scope="module")
def result(inspector):
    return inspector(TEXT, measures=NAMES)


def test_token_groups_and_shares(result):
    groups = token_groups(result)
    assert groups[0] == "first" and groups[-1] == "special" and groups[result.tokens.index(",")] == "punctuation"
    table = token_shares(result, NAMES)
    assert set(table["group"]) == set(GROUPS)
    sums = table.groupby(["measure", "layer", "head"])["share"].sum()
    assert ((sums - 1).abs() < 1e-5).all()
    assert set(table[table.measure == "alti"]["head"]) == {-1}
    # the first token's share by weight in layer 2 head 3 equals the mean of its column of normalised rows
    row = table[(table.measure == "weights") & (table.layer == 2) & (table["head"] == 3) & (table.group == "first")]
    assert row["share"].item() == pytest.approx(result.head(2, 3)[:, 0].mean().item(), abs=1e-6)
    norm_first = table[(table.measure == "norm") & (table.group == "first")]["share"].mean()
    weight_first = table[(table.measure == "weights") & (table.group == "first")]["share"].mean()
    assert norm_first < 0.5 * weight_first  # Kobayashi et al. 2020: [CLS]'s big weights carry small vectors


def test_report_says_where_the_measures_disagree(result):
    report = disagreement_report(result, NAMES)
    assert "| weights |" in report and "| alti |" in report
    assert "disagree most" in report and "mix the most" in report


def test_figures(result, tmp_path):
    ax = plot_measures(result, "cat", ["weights", "norm", "alti"])
    image = np.asarray(ax.images[0].get_array())
    assert image.shape == (result.seq_len, 3)
    i = result.tokens.index("cat")
    np.testing.assert_allclose(image[:, 2], result.measure("alti")[-1, i].numpy(), atol=1e-6)
    np.testing.assert_allclose(image[:, 0], result.attentions[-1, :, i].mean(0).numpy(), atol=1e-6)
    with pytest.raises(InputError, match="not in the input"):
        plot_measures(result, "dog")
    ax = plot_measure_map(result, "norm", layer=1)
    expected = row_normalise(result.measure("norm")[1]).mean(0)
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), expected.numpy(), atol=1e-6)
    bars = [a.get_ylabel() for a in ax.figure.axes if a is not ax]
    assert bars and bars[0].startswith("norm share of the row")  # the colour bar names the measure, not "weight"


def test_attribute_command_writes_its_files(tmp_path, capsys):
    out = tmp_path / "attr"
    assert main(["attribute", TEXT, "--measures", "weights,norm,alti", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == ["alti.png", "measures.safetensors", "norm.png", "report.md", "token_shares.csv", "weights.png"]
    saved = AttentionResult.load(out / "measures.safetensors")
    assert set(saved.measures) == {"norm", "alti"} and saved.measure("alti").dim() == 3
    table = pd.read_csv(out / "token_shares.csv")
    assert list(table.columns) == ["measure", "layer", "head", "group", "share"]
    assert "wrote" in capsys.readouterr().out
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "report.md").write_text("mine")
    assert main(["attribute", TEXT, "--measures", "weights", "--out", str(foreign)]) == 2  # not ours, no --overwrite
    assert (foreign / "report.md").read_text() == "mine"
    assert main(["attribute", TEXT, "--measures", "weights,nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown measure 'nope'" in capsys.readouterr().err


def test_inspect_draws_a_measure(tmp_path, capsys, monkeypatch):
    import hf_attn_inspect.views.plotting as plotting

    drawn = []
    real = plotting.plot_attention_heatmap
    monkeypatch.setattr(plotting, "plot_attention_heatmap", lambda w, *a, **k: drawn.append((w, k)) or real(w, *a, **k))
    out = tmp_path / "insp"
    assert main(["inspect", TEXT, "--measure", "alti", "--layer", "2", "--head", "3", "--out", str(out)]) == 0
    assert (out / "head_L2_H0.png").is_file()  # a per-layer measure is drawn as head 0
    assert main(["inspect", TEXT, "--measure", "bogus", "--out", str(out)]) == 2
    assert "unknown measure 'bogus'" in capsys.readouterr().err
    (weights, kwargs), = drawn
    assert weights.shape[0] == weights.shape[1] and kwargs["quantity"] == "alti share of the row"
    np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, atol=1e-5)


def test_batch_norm_shares_equal_the_per_text_measure(inspector):
    from hf_attn_inspect.runs.dataset import analyze_dataset
    from hf_attn_inspect.runs.measure_stats import norm_shares_factory

    texts = ["The cat sat on the mat, and it purred.", "Hello, world!", "A longer sentence; with punctuation."]
    df = analyze_dataset(inspector, texts, probe=norm_shares_factory(inspector.model), batch_size=2)
    per_text = [token_shares(r, ["norm"]) for r in inspector(texts, measures=["norm"])]
    expected = pd.concat(per_text).groupby(["layer", "head", "group"])["share"].mean()
    for group in GROUPS:
        got = df.set_index(["layer", "head"])[f"norm_{group}_mean"]
        want = expected.xs(group, level="group")
        np.testing.assert_allclose(got.sort_index().to_numpy(), want.sort_index().to_numpy(), atol=1e-5)
    plain = analyze_dataset(inspector, texts, batch_size=2)
    np.testing.assert_allclose(plain["first_token_mean"], df["first_token_mean"], atol=1e-6)
    assert (df["norm_first_mean"].mean() < 0.5 * df["first_token_mean"].mean())  # Kobayashi et al. 2020
