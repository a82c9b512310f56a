"""What a new user sees in the figures and the printed analysis (issue 15, items 9, 10, 13-16).

Each test runs the issue's command on the embedded model and reads the figures back from the matplotlib
objects that were saved (titles, tick labels, colour-bar limits), besides checking the PNG files.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from hf_attn_inspect import AttentionResult  # noqa: E402
from hf_attn_inspect.cli import main  # noqa: E402
from hf_attn_inspect.stats.patterns import head_table  # noqa: E402
from hf_attn_inspect.stats.streaming import DISTANCE_BUCKETS  # noqa: E402
from hf_attn_inspect.views.comparison import plot_divergence_map, plot_head_diffs  # noqa: E402
from hf_attn_inspect.views.plotting import plot_model_view  # noqa: E402

WORDS = ("the cat sat on a mat while long documents about attention models keep going and going with many "
         "words").split()


@pytest.fixture
def saved(monkeypatch) -> dict[str, Figure]:
    """Every figure saved during the test, by the final file name (atomic writes save to ``.NAME.xxx.tmp``)."""
    figures: dict[str, Figure] = {}
    original = Figure.savefig

    def spy(self, fname, *args, **kwargs):
        name = Path(str(getattr(fname, "name", fname))).name
        m = re.fullmatch(r"\.(.+)\.[^.]+\.tmp", name)
        figures[m.group(1) if m else name] = self
        return original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return figures


def colorbars(fig: Figure) -> list:
    return [im.colorbar for ax in fig.axes for im in ax.images + ax.collections if getattr(im, "colorbar", None)]


def drawn(fig: Figure):
    """Draw ``fig`` (closed after saving, so give it an Agg canvas again) and return its renderer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
        return im.size


# ------------------------------------------------------------------ item 9: one verdict in inspect
def test_inspect_prints_one_verdict_from_the_classification(tmp_path, capsys, inspector):
    assert main(["inspect", "The cat sat on the mat.", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    row = head_table(inspector("The cat sat on the mat.")).query("layer == 0 and head == 0").iloc[0]
    assert row["pattern"] != "uniform"  # the heatmap shows 0.42 vs 0.01: not uniform, and debug agrees
    assert f"layer 0, head 0 pattern: {row['pattern']} (entropy {row['entropy_ratio']:.2f} of its maximum" in out
    assert "uniform: yes" not in out and "dominant:" not in out  # the chapter's yes/no flags are not a second verdict
    assert "the chapter's raw fields" in out and "weight_std 0.093" in out


def test_verdict_names_the_deciding_number():
    from hf_attn_inspect.stats.patterns import describe_pattern

    base = {"previous_token": 0.1, "next_token": 0.1, "diagonal": 0.1, "column_share": 0.2, "column_target": "[SEP]",
            "entropy_ratio": 0.5, "max_weight": 0.3}
    assert describe_pattern({**base, "pattern": "previous", "previous_token": 0.93}).startswith(
        "previous (0.93 of its attention on the previous token; threshold 0.5")
    assert "[SEP]" in describe_pattern({**base, "pattern": "column", "column_share": 0.7})
    assert "entropy 0.97 of its maximum" in describe_pattern({**base, "pattern": "uniform", "entropy_ratio": 0.97})
    assert describe_pattern({**base, "pattern": "mixed"}).startswith("mixed (no rule applies: largest share 0.20 on one key")


# ------------------------------------------------------------------ item 10 and 16: long says it cut the text
def test_long_says_the_text_was_cut_everywhere(tmp_path, capsys, monkeypatch, saved):
    import hf_attn_inspect.runs.long_context as engine

    doc = tmp_path / "doc.txt"
    rng = random.Random(0)
    doc.write_text(" ".join(rng.choice(WORDS) for _ in range(2000)) + ".", encoding="utf-8")
    said_before_work = []
    real = engine.long_context_report

    def spy(*args, **kwargs):
        said_before_work.append(capsys.readouterr().err)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "long_context_report", spy)
    out = tmp_path / "report"
    assert main(["long", str(doc), "--out", str(out), "--layers", "0", "5"]) == 0
    captured = capsys.readouterr()
    # at the start, on stderr, once (no second generic warning later)
    assert said_before_work and "note: the text has 2,003 tokens; only the first 512" in said_before_work[0]
    assert "truncated" not in captured.err and "note:" not in captured.err
    # in the printed report
    assert "512 tokens (cut from 2,003: the rest of the text was not analysed)" in captured.out
    # in every figure's title
    for name in ("sinks.png", "distance.png", "first_token_heads.png"):
        assert "input cut to 512 of 2,003 tokens" in saved[name].axes[0].get_title(), name
        assert png_size(out / name)[0] >= 600
    # no distance bucket a 512-token input cannot reach (distances are at most 511)
    drawn = [t.get_text() for t in saved["distance.png"].axes[0].get_xticklabels()]
    assert drawn == ["0", "1", "2-4", "5-16", "17-64", "65-256", "257-1024"]
    assert "511" in saved["distance.png"].axes[0].get_xlabel()
    csv = pd.read_csv(out / "distance.csv")
    assert list(dict.fromkeys(csv["bucket"].astype(str))) == drawn and (csv["low"] <= 511).all()
    np.testing.assert_allclose(csv.groupby(["layer", "head"])["mass"].sum(), 1.0, atol=1e-5)
    # item 16: the first-token figure speaks words, not a column name
    title = saved["first_token_heads.png"].axes[0].get_title()
    assert "first_token" not in title and title.startswith("Share of attention on the first token per head")
    assert colorbars(saved["first_token_heads.png"])[0].ax.get_ylabel() == "share of attention on the first token"


def test_long_report_of_a_short_text_is_not_marked_cut(inspector):
    from hf_attn_inspect.runs.long_context import long_context_report

    report = long_context_report(inspector, " ".join(WORDS * 3), layers=[0])
    assert not report.truncated and report.truncation_note == "" and report.n_input_tokens == report.n_tokens
    assert report.n_tokens == 59  # 57 words + [CLS], [SEP]: distances up to 58
    assert list(dict.fromkeys(report.distance["bucket"])) == list(DISTANCE_BUCKETS[:5])  # up to 17-64


# ------------------------------------------------------------------ item 13: batch figures
def test_batch_figures_are_readable(tmp_path, capsys, saved):
    out = tmp_path / "r"
    assert main(["batch", "--limit", "10", "--out", str(out)]) == 0
    classes = saved["classes.png"]
    ax = classes.axes[0]
    stats = pd.read_csv(out / "head_stats.csv")
    cells = [t.get_text() for t in ax.texts]
    assert len(cells) == 72
    # full class names in the cells and on the colour bar, not 4-letter stubs
    names = [c.split("\n")[0] for c in cells]
    assert sorted(names) == sorted(stats.sort_values(["layer", "head"])["pattern"])
    bar = colorbars(classes)[0]
    assert [t.get_text() for t in bar.ax.get_yticklabels()] == [
        "previous", "next", "diagonal", "column", "uniform", "broad", "sparse", "mixed"]
    # cell text fits its cell and is readable; the legend (colour bar) lies beside the cells, not over them
    renderer = drawn(classes)
    cell_w = ax.get_window_extent().width / 12
    for t in ax.texts:
        assert t.get_fontsize() >= 8
        assert t.get_window_extent(renderer).width < cell_w
    assert bar.ax.get_window_extent().x0 > ax.get_window_extent().x1
    assert png_size(out / "figures" / "classes.png")[0] >= 1000
    for name in ("entropy", "special_tokens", "previous_token"):
        fig = saved[f"{name}.png"]
        assert min(t.get_fontsize() for t in fig.axes[0].texts) >= 8
        assert png_size(out / "figures" / f"{name}.png")[0] >= 1000


# ------------------------------------------------------------------ item 14: compare figures
def test_compare_of_identical_models_scales_from_zero(tmp_path, capsys, saved):
    out = tmp_path / "cmp"
    assert main(["compare", "default", "default", "--text", "Customer support kept me on hold.", "--out", str(out),
                 "--top", "2"]) == 0
    ax = saved["divergence_map.png"].axes[0]
    norm = ax.images[0].norm
    assert norm.vmin == 0.0 and norm.vmax == pytest.approx(math.log(2))  # not -0.1..0.1 for a quantity >= 0
    assert "identical" in ax.get_title()
    fig = saved["head_diffs.png"]
    drawn(fig)
    a, b, diff = fig.axes[0], fig.axes[1], fig.axes[2]  # first row: A, B, B - A (colour bars come after)
    assert (a.get_ylabel(), b.get_ylabel(), diff.get_ylabel()) == ("query", "", "")
    assert diff.get_title() == "B - A  L0 H0 (identical)"
    for bar in colorbars(fig):
        assert bar.ax.yaxis.get_offset_text().get_text() == ""  # no 1e-12 crowding the title
    png_size(out / "divergence_map.png")


def test_divergence_map_and_diffs_of_different_heads(tmp_path):
    df = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "js_divergence": [0.0, 0.02, 0.3, 0.0]})
    ax = plot_divergence_map(df)
    assert ax.images[0].norm.vmin == 0.0 and ax.images[0].norm.vmax == pytest.approx(0.3)
    assert "identical" not in ax.get_title()
    g = torch.Generator().manual_seed(0)
    att = torch.softmax(torch.randn(2, 2, 5, 5, generator=g), -1)
    ra = AttentionResult(tokens=list("abcde"), attentions=att)
    rb = AttentionResult(tokens=list("abcde"), attentions=att + 1e-7 * torch.arange(5.0))
    fig = plot_head_diffs(ra, rb, [(1, 0)])
    fig.canvas.draw()
    bar = colorbars(fig)[-1]
    assert bar.ax.yaxis.get_offset_text().get_text() == ""
    assert bar.mappable.norm.vmax == pytest.approx(4e-7, rel=0.1) and bar.mappable.norm.vmin == -bar.mappable.norm.vmax
    assert any("e-07" in t.get_text().replace("\u2212", "-") for t in bar.ax.get_yticklabels())
    fig.savefig(tmp_path / "d.png")


# ------------------------------------------------------------------ item 15: model view scale
def test_inspect_model_view_has_a_colour_bar_and_says_its_scale(tmp_path, capsys, saved):
    assert main(["inspect", "The cat sat on the mat.", "--out", str(tmp_path / "a")]) == 0
    fig = saved["model_view.png"]
    bars = colorbars(fig)
    assert len(bars) == 1
    bar = bars[0]
    assert (bar.mappable.norm.vmin, bar.mappable.norm.vmax) == (0.0, 1.0)
    assert bar.ax.get_ylabel() == "attention weight (linear colour scale)"
    assert "linear colour scale" in fig._suptitle.get_text()
    for name in ("head_L0_H0.png", "layer_0_heads.png"):
        assert colorbars(saved[name])[0].ax.get_ylabel() == "attention weight (linear colour scale)"
    # --scale sqrt: the explorer's square-root scale, on every figure
    assert main(["inspect", "The cat sat on the mat.", "--out", str(tmp_path / "b"), "--scale", "sqrt"]) == 0
    for name in ("head_L0_H0.png", "layer_0_heads.png", "model_view.png"):
        bar = colorbars(saved[name])[0]
        assert bar.ax.get_ylabel() == "attention weight (square-root colour scale)"
        assert bar.mappable.norm(0.25) == pytest.approx(0.5)  # colour ~ sqrt(weight)
    assert "square-root colour scale" in saved["model_view.png"]._suptitle.get_text()
    w, h = png_size(tmp_path / "b" / "model_view.png")
    assert w > 1000 and h > 600


def test_model_view_defaults_to_sqrt_above_150_tokens(tmp_path):
    from hf_attn_inspect.views.plotting import default_scale

    assert (default_scale(150), default_scale(151)) == ("linear", "sqrt")
    g = torch.Generator().manual_seed(0)
    t = 300
    att = torch.softmax(torch.randn(2, 3, t, t, generator=g), -1)
    att[0, 0] = torch.eye(t)  # a one-token-wide diagonal must survive the thumbnail
    fig = plot_model_view(att)
    bar = colorbars(fig)[0]
    assert bar.ax.get_ylabel() == "attention weight (square-root colour scale)"
    assert "max-pooled" in fig._suptitle.get_text()
    grid = np.ma.getdata(fig.axes[0].images[0].get_array())  # 2 x 3 thumbnails of 100 x 100, 6-cell gaps
    assert grid.shape == (2 * 100 + 6, 3 * 100 + 2 * 6)
    thumb = grid[:100, :100]
    assert float(np.diag(thumb).min()) == 1.0
    assert np.isnan(grid[100:106]).all() and np.isnan(grid[:, 100:106]).all()
    fig.savefig(tmp_path / "mv.png")
    assert png_size(tmp_path / "mv.png")[0] > 300


def test_head_metric_figure_speaks_words_not_column_names():
    from hf_attn_inspect.views.long_context import plot_head_metric

    metrics = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "first_token": [0.1, 0.5, 0.2, 0.9],
                            "mean_distance": [1.0, 2.0, 3.0, 4.0]})
    ax = plot_head_metric(metrics, "first_token")
    assert ax.get_title() == "Share of attention on the first token per head (mean over query rows)"
    assert ax.collections[0].colorbar.ax.get_ylabel() == "share of attention on the first token"
    assert "_" not in plot_head_metric(metrics, "mean_distance").get_title()
