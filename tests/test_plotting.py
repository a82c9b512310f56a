"""Figures are valid images of the right size, labels are thinned, values are annotated only when readable."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from hf_attn_inspect import InputError  # noqa: E402
from hf_attn_inspect.views.plotting import (  # noqa: E402
    plot_attention_heatmap,
    plot_model_view,
    plot_multi_head_attention,
    save_figure,
)


def rows(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(*shape, generator=g), -1)


def test_heatmap_returns_axes_with_annotations_for_small_input():
    fig, ax = plt.subplots()
    w = rows(5, 5)
    out = plot_attention_heatmap(w, list("abcde"), list("vwxyz"), ax=ax)
    assert out is ax
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 25 and texts[0] == f"{w[0, 0].item():.2f}"
    assert [t.get_text() for t in ax.get_xticklabels()] == list("abcde")
    assert [t.get_text() for t in ax.get_yticklabels()] == list("vwxyz")
    plt.close(fig)


def test_heatmap_long_input_thins_labels_and_skips_numbers():
    tokens = [f"tok{i}" for i in range(64)]
    ax = plot_attention_heatmap(rows(64, 64), tokens, tokens)
    assert len(ax.texts) == 0
    shown = [t.get_text() for t in ax.get_xticklabels()]
    assert 20 <= len(shown) <= 40 and shown[0] == "tok0" and shown[1] == "tok2"
    # labels do not overlap: their rendered extents are disjoint
    fig = ax.figure
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in ax.get_xticklabels()]
    assert all(a.x1 <= b.x0 + 1e-6 for a, b in zip(boxes, boxes[1:]))
    plt.close(fig)


def test_labels_must_match_positions():
    with pytest.raises(InputError, match="labels"):
        plot_attention_heatmap(rows(3, 3), ["a", "b"], None)
    with pytest.raises(InputError, match="2 dimensions"):
        plot_attention_heatmap(rows(2, 3, 3))


def test_multi_head_grid_and_model_view(tmp_path):
    fig = plot_multi_head_attention(rows(6, 7, 7), [f"t{i}" for i in range(7)], head_ids=[0, 2, 4, 6, 8, 10], ncols=4)
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert titles[:6] == ["head 0", "head 2", "head 4", "head 6", "head 8", "head 10"]
    path = save_figure(fig, tmp_path / "heads.png", dpi=50)
    img = Image.open(path)
    img.verify()
    fig = plot_model_view(rows(3, 4, 9, 9), layer_ids=[1, 2, 3])
    w, h = fig.get_size_inches()
    path = save_figure(fig, tmp_path / "model.png", dpi=40)
    with Image.open(path) as img:
        assert img.format == "PNG"
        # bbox_inches="tight" trims margins, never grows the picture beyond the figure size
        assert 0.5 * w * 40 < img.size[0] <= w * 40 + 2 and 0.5 * h * 40 < img.size[1] <= h * 40 + 2


@pytest.mark.parametrize("fmt,magic", [("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_vector_formats(tmp_path, fmt, magic):
    ax = plot_attention_heatmap(rows(4, 4), title="x")
    path = save_figure(ax.figure, tmp_path / f"h.{fmt}")
    assert path.read_bytes().startswith(magic)


def test_save_refuses_unknown_format_and_unwritable_dir(tmp_path):
    ax = plot_attention_heatmap(np.eye(3))
    with pytest.raises(InputError, match="format"):
        save_figure(ax.figure, tmp_path / "h.bmp")
    from hf_attn_inspect import OutputError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    ax = plot_attention_heatmap(np.eye(3))
    with pytest.raises(OutputError, match="cannot write"):
        save_figure(ax.figure, blocker / "sub" / "h.png")


def test_long_input_heatmap_uses_a_colour_range_that_shows_its_weights():
    """Issue 23: a 400-token head's weights (about 1/400 each) were drawn on 0..1, nearly white. With
    ``vmax="auto"`` the range ends at the 99.5th percentile, the title names it, the colour bar shows the clip,
    and the median weight gets a visible colour; short inputs keep 0..1 and their title."""
    from hf_attn_inspect.views.plotting import weight_range

    torch.manual_seed(0)
    w = torch.softmax(torch.randn(400, 400), -1)
    top = float(np.quantile(w.numpy(), 0.995))
    assert weight_range(w) == pytest.approx(top) and 2 / 400 < top < 0.05
    uniform = np.full((400, 400), 1 / 400, dtype=np.float32)
    assert weight_range(uniform) == pytest.approx(2 / 400)  # never below twice the uniform weight
    ax = plot_attention_heatmap(w, scale="sqrt", vmax="auto", title="layer 0, head 0 (cut from 4,271 tokens to 400)")
    norm = ax.images[0].norm
    assert norm.vmax == pytest.approx(top)
    median = float(np.median(w.numpy()))
    assert float(norm(median)) > 0.25 and float(norm(median)) > 5 * median ** 0.5  # on 0..1: 0.04 of the range, white
    assert ax.get_title() == (f"layer 0, head 0 (cut from 4,271 tokens to 400)\n"
                              f"colour 0-{top:.3g} (square-root colour scale; brighter cells clipped)")
    bar = ax.figure.axes[-1]
    ticks = [t for t in bar.get_yticks() if 0 <= t <= top]
    assert ticks[0] == 0 and top * 0.8 <= ticks[-1] <= top  # the top of the range is labelled, inside the bar
    plt.close(ax.figure)
    short = plot_attention_heatmap(torch.softmax(torch.randn(20, 20), -1), vmax="auto", title="layer 0, head 0")
    assert short.images[0].norm.vmax == 1.0 and short.get_title() == "layer 0, head 0"
    plt.close(short.figure)
