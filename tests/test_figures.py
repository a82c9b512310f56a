"""Publication figures: drawn values against independent computations, PNG/SVG/PDF output, long inputs."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from hf_attn_inspect import AttentionResult, InputError  # noqa: E402
from hf_attn_inspect.stats.tables import head_metrics  # noqa: E402
from hf_attn_inspect.views.figures import plot_attention_diff, plot_head_metric_map, plot_head_view, plot_rollout  # noqa: E402
from hf_attn_inspect.views.plotting import MAX_TICK_LABELS, save_figure  # noqa: E402


def planted(t=6, layers=3, heads=4, seed=0, tokens=None) -> AttentionResult:
    g = torch.Generator().manual_seed(seed)
    att = (torch.randn(layers, heads, t, t, generator=g) * 2).softmax(-1)
    return AttentionResult(tokens=tokens or [f"t{i}" for i in range(t)], attentions=att, model_name="planted")


def assert_writes_all_formats(ax_or_fig, tmp_path, name):
    fig = getattr(ax_or_fig, "figure", ax_or_fig)
    for fmt in ("png", "svg", "pdf"):
        fig_path = tmp_path / f"{name}.{fmt}"
        fig.savefig(fig_path, format=fmt)
        data = fig_path.read_bytes()
        if fmt == "png":
            with Image.open(fig_path) as im:
                assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
        elif fmt == "svg":
            assert b"<svg" in data[:2000]
        else:
            assert data.startswith(b"%PDF")
    save_figure(fig, tmp_path / f"{name}-saved.png")
    assert (tmp_path / f"{name}-saved.png").stat().st_size > 0


def test_attention_diff_symmetric_scale(tmp_path):
    a, b = planted(seed=1), planted(seed=2)
    ax = plot_attention_diff(a, b, layer=1, head=2)
    expect = a.head(1, 2).numpy() - b.head(1, 2).numpy()
    drawn = np.asarray(ax.images[0].get_array())
    np.testing.assert_allclose(drawn, expect, atol=1e-6)
    lo, hi = ax.images[0].get_clim()
    assert lo == pytest.approx(-np.abs(expect).max()) and hi == pytest.approx(np.abs(expect).max())
    assert len(ax.texts) == 36  # 6 x 6 numbers
    assert_writes_all_formats(ax, tmp_path, "diff")
    # default: the last layer, mean of heads
    ax2 = plot_attention_diff(a, b)
    mean = a.attentions[-1].mean(0).numpy() - b.attentions[-1].mean(0).numpy()
    np.testing.assert_allclose(np.asarray(ax2.images[0].get_array()), mean, atol=1e-6)
    # plain matrices
    ax3 = plot_attention_diff(np.eye(3), np.full((3, 3), 1 / 3), tokens=["x", "y", "z"])
    assert [t.get_text() for t in ax3.get_xticklabels()] == ["x", "y", "z"]
    with pytest.raises(InputError):
        plot_attention_diff(a, planted(tokens=list("abcdef")))
    with pytest.raises(InputError):
        plot_attention_diff(np.eye(3), np.eye(4))
    plt.close("all")


def test_head_metric_map_values_and_classes(tmp_path):
    r = planted(t=8)
    df = head_metrics(r)
    classes = {(0, 1): "diagonal", (2, 3): "broad"}
    ax = plot_head_metric_map(df, "entropy", classes=classes)
    drawn = np.asarray(ax.collections[0].get_array()).reshape(3, 4)
    np.testing.assert_allclose(drawn, df.pivot(index="layer", columns="head", values="entropy").to_numpy(), atol=1e-6)
    texts = [t.get_text() for t in ax.texts]
    assert f"{df.entropy[1]:.2f}\ndiagonal" in texts and any(t.endswith("\nbroad") for t in texts)
    assert_writes_all_formats(ax, tmp_path, "metric_map")
    df2 = df.assign(**{"class": ["c%d" % (i % 3) for i in range(len(df))]})
    ax2 = plot_head_metric_map(df2, "diagonal", classes=True, annotate=False)
    assert [t.get_text() for t in ax2.texts][:3] == ["c0", "c1", "c2"]
    with pytest.raises(InputError):
        plot_head_metric_map(df, "no_such_metric")
    plt.close("all")


def test_head_view_lines_match_weights(tmp_path):
    r = planted(t=7, heads=3)
    ax = plot_head_view(r, layer=2, heads=[0, 2], threshold=0.05)
    lines = ax.collections[0]
    w = r.layer(2).numpy()[[0, 2]]
    expect = []
    for h in range(2):
        for i in range(7):
            for j in range(7):
                if w[h, i, j] >= 0.05:
                    expect.append((i, j, w[h, i, j]))
    segs = lines.get_segments()
    assert len(segs) == len(expect)
    got = sorted((int(s[0][1]), int(s[1][1]), round(float(c[3]), 5)) for s, c in zip(segs, lines.get_colors()))
    assert got == sorted((i, j, round(float(v), 5)) for i, j, v in expect)
    assert [t.get_text() for t in ax.get_yticklabels()] == r.tokens
    assert_writes_all_formats(ax, tmp_path, "head_view")
    plt.close("all")


def test_rollout_figure_matches_aggregate(tmp_path, inspector):
    from hf_attn_inspect.stats.aggregate import attention_rollout, head_average, words

    r = inspector("Rollout multiplies unbelievably many layers.")
    ax = plot_rollout(r, layer=3)
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), attention_rollout(r)[3].numpy(), atol=1e-6)
    assert_writes_all_formats(ax, tmp_path, "rollout")
    ax2 = plot_rollout(r, kind="mean", level="word")
    wr = words(r)
    np.testing.assert_allclose(np.asarray(ax2.images[0].get_array()), head_average(wr.attentions[-1]).numpy(), atol=1e-5)
    assert "unbelievably" in [t.get_text() for t in ax2.get_xticklabels()]
    with pytest.raises(InputError):
        plot_rollout(r, kind="max")
    plt.close("all")


def test_long_inputs_thin_labels_and_no_cell_numbers(tmp_path):
    r = planted(t=512, layers=2, heads=2)
    for ax in (plot_rollout(r), plot_attention_diff(r, planted(t=512, layers=2, heads=2, seed=5)),
               plot_head_view(r, threshold=0.2)):
        assert [t.get_text() for t in ax.texts if t.get_text() not in ("query", "key")] == []
        assert 0 < len(ax.get_yticklabels()) <= MAX_TICK_LABELS
        ax.figure.savefig(tmp_path / "long.png")
    plt.close("all")
