"""Image statistics and views (issue 22 item 2): CLS maps, rollout, patch queries, mean attention distance and
artifact patches, each against an independent computation; the overlay is brightest where a head looks."""

from __future__ import annotations

from dataclasses import replace

import matplotlib

matplotlib.use("Agg")
import matplotlib.cbook as cbook  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from hf_attn_inspect import AttentionInspector, InputError  # noqa: E402
from hf_attn_inspect.capture.images import output_norms  # noqa: E402
from hf_attn_inspect.stats.patterns import head_table  # noqa: E402
from hf_attn_inspect.stats.vision import (  # noqa: E402
    artifact_patches, attention_distance, cls_attention, image_rollout, patch_query, top_mass_mask,
)
from hf_attn_inspect.views.vision import (  # noqa: E402
    plot_attention_distance, plot_cls_attention, plot_cls_attention_heads, plot_image_rollout, plot_patch_query,
)
from tiny_vision import save_vision  # noqa: E402

GRACE = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)


@pytest.fixture(scope="module")
def deit(tmp_path_factory):
    return AttentionInspector.from_pretrained(save_vision("deit", tmp_path_factory.mktemp("deit")), device="cpu")


@pytest.fixture(scope="module")
def photo(deit):
    return deit(GRACE)


def _vit_explain_rollout(w: np.ndarray, fusion: str, discard: float) -> np.ndarray:
    """The rollout written out from its definition with numpy loops (rows renormalised one by one)."""
    t = w.shape[-1]
    r = np.eye(t)
    for layer in w:
        fused = {"mean": layer.mean(0), "max": layer.max(0), "min": layer.min(0)}[fusion].astype(np.float64)
        flat = fused.ravel().copy()
        k = int(flat.size * discard)
        for idx in np.argsort(flat, kind="stable")[:k]:
            if idx != 0:
                flat[idx] = 0.0
        a = 0.5 * flat.reshape(t, t) + 0.5 * np.eye(t)
        for i in range(t):
            a[i] = a[i] / a[i].sum()
        r = a @ r
    return r


@pytest.mark.parametrize("fusion,discard", [("mean", 0.0), ("max", 0.0), ("min", 0.5), ("mean", 0.9)])
def test_rollout_equals_the_written_out_formula(photo, fusion, discard):
    grid = photo.grid
    expect = _vit_explain_rollout(photo.attentions.double().numpy(), fusion, discard)[0, grid.patches]
    got = image_rollout(photo, fusion, discard)
    assert got.shape == (grid.rows, grid.cols)
    np.testing.assert_allclose(got.ravel(), expect, rtol=1e-4, atol=1e-6)
    with pytest.raises(InputError, match="unknown head fusion 'median'"):
        image_rollout(photo, "median")


def test_cls_map_patch_query_and_top_mass(photo):
    grid = photo.grid
    maps = cls_attention(photo, 1)
    a = photo.attentions.numpy()
    for h in range(4):
        for r in range(grid.rows):
            for c in range(grid.cols):
                assert maps[h, r, c] == pytest.approx(a[1, h, 0, 2 + r * grid.cols + c])
                assert patch_query(photo, 0, h, 1, 2)[r, c] == pytest.approx(a[0, h, 2 + grid.cols + 2, 2 + r * grid.cols + c])
    # top x % of the mass: the fewest largest patches reaching that share
    m = maps[0]
    keep = top_mass_mask(m, 0.6)
    order = np.sort(m.ravel())[::-1]
    need = int(np.searchsorted(np.cumsum(order) / order.sum(), 0.6 - 1e-12) + 1)
    assert keep.sum() == need and m[keep].min() >= m[~keep].max()
    assert top_mass_mask(m, 1.0).all()


def test_overlay_is_brightest_over_the_patch_a_head_attends(photo):
    result = replace(photo, attentions=photo.attentions.clone())
    grid = result.grid
    target = (1, 2)
    # set head 3 of the last layer by hand: [CLS] puts all its attention on patch (1, 2)
    result.attentions[-1, 3, 0] = 0.0
    result.attentions[-1, 3, 0, grid.unit(*target)] = 1.0
    ax = plot_cls_attention(result, head=3)
    shown = np.asarray(ax.images[0].get_array(), dtype=float)  # the overlay, in image pixels
    assert shown.shape[:2] == (grid.height, grid.width)
    p = grid.patch
    brightness = shown.mean(-1).reshape(grid.rows, p, grid.cols, p).mean((1, 3))
    assert np.unravel_index(brightness.argmax(), brightness.shape) == target
    x0, y0, x1, y1 = grid.boxes()[target[0] * grid.cols + target[1]]
    inside = shown[y0:y1, x0:x1].mean()
    outside = np.delete(shown.mean(-1).reshape(grid.rows, p, grid.cols, p).mean((1, 3)).ravel(), target[0] * grid.cols + target[1])
    assert inside > outside.max() + 0.2
    plt.close("all")


def test_attention_distance_against_a_loop(photo):
    grid = photo.grid
    d = attention_distance(photo)
    a = photo.attentions.double().numpy()
    centers = [((c + 0.5) * grid.patch, (r + 0.5) * grid.patch) for r in range(grid.rows) for c in range(grid.cols)]
    for layer in range(2):
        for h in range(4):
            per_query = []
            for i in range(grid.n_patches):
                row = a[layer, h, 2 + i, 2:]
                dist = [np.hypot(centers[i][0] - cx, centers[i][1] - cy) for cx, cy in centers]
                per_query.append(float(np.dot(row, dist) / row.sum()))
            assert d["pixels"][layer, h] == pytest.approx(np.mean(per_query), rel=1e-5)
            assert d["to_class"][layer, h] == pytest.approx(a[layer, h, 2:, 0].mean(), rel=1e-5)
            assert d["to_distillation"][layer, h] == pytest.approx(a[layer, h, 2:, 1].mean(), rel=1e-5)
    assert np.allclose(d["patches"], d["pixels"] / grid.patch)
    table = head_table(photo)
    assert table["attention_distance_px"].to_numpy() == pytest.approx(d["pixels"].ravel(), rel=1e-6)
    assert "to_register" not in table.columns


def test_artifact_patches_and_output_norms(deit, photo):
    batch = deit.encode_images([GRACE])
    norms = output_norms(deit, batch)
    with torch.no_grad():
        hidden = deit.model(pixel_values=batch.inputs["pixel_values"]).last_hidden_state
    assert torch.allclose(norms, hidden.norm(dim=-1), atol=1e-5)
    grid = photo.grid
    fake = torch.ones(grid.n_units)
    fake[grid.unit(2, 3)] = 5.0
    fake[0] = 50.0  # [CLS] is not a patch: never flagged
    flags = artifact_patches(fake, grid)
    assert flags.sum() == 1 and flags[2, 3]


def test_views_draw_and_refuse_text(photo, inspector):
    fig = plot_cls_attention_heads(photo, 0, top_mass=0.6)
    assert len([a for a in fig.axes if a.images]) == 5
    assert plot_image_rollout(photo, "max", 0.5).get_title() == "rollout (max of heads, 50% discarded)"
    ax = plot_patch_query(photo, 1, 1, layer=0, head=2)
    assert len(ax.patches) == 1  # the query patch's outline
    ax = plot_attention_distance(photo)
    assert sum(len(c.get_offsets()) for c in ax.collections) == 8
    with pytest.raises(InputError, match="needs the attention of an image"):
        plot_image_rollout(inspector("A cat."))
    plt.close("all")
