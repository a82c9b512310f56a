"""The explorer's image mode (issue 22 item 2) in headless Chromium: the image with the [CLS] row over its patches,
hovering a patch draws that patch's row; the numbers shown are the captured ones."""

from __future__ import annotations

from dataclasses import replace

import matplotlib.cbook as cbook
import numpy as np
import pytest

from hf_attn_inspect import AttentionInspector
from hf_attn_inspect.views.explorer import explorer_html, write_explorer
from test_explorer import Page, browser  # noqa: F401 - the shared headless-Chromium fixture
from tiny_vision import save_vision

GRACE = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A DeiT result over the grace_hopper photo whose layer 1, head 0 [CLS] row is set by hand onto patch (2, 1)."""
    ins = AttentionInspector.from_pretrained(save_vision("deit", tmp_path_factory.mktemp("deit")), device="cpu")
    r = ins(GRACE)
    att = r.attentions.clone()
    att[1, 0, 0] = 0.0
    att[1, 0, 0, r.grid.unit(2, 1)] = 1.0
    return replace(r, attentions=att)


def test_text_pages_carry_no_image_mode(inspector):
    page = explorer_html(inspector("The cat sat."))
    assert "hfAttnModes.image" not in page.replace(" ", "") and '"image":' not in page


def test_image_mode_draws_the_row_and_follows_the_hovered_patch(browser, planted, tmp_path):  # noqa: F811
    path = write_explorer(planted, tmp_path / "image.html")
    p = Page(browser, path)
    page = p.page
    assert page.locator("#tabs button[data-view=image]").get_attribute("class") == "active"
    p.set("#layer", "1")
    info = page.locator("#im-info")
    grid = planted.grid
    assert info.get_attribute("data-query") == "0" and info.get_attribute("data-best") == str(grid.unit(2, 1))
    assert "query [CLS] (layer 1, head 0): strongest patch p(2,1) 1.000" in info.text_content()
    # the brightest cell of the overlay canvas is patch (2, 1)
    cells = page.evaluate("""() => {
        const c = document.getElementById('im-canvas'), ctx = c.getContext('2d'), n = 4, s = c.width / n, out = [];
        for (let r = 0; r < n; r++) for (let k = 0; k < n; k++) {
            const d = ctx.getImageData(k * s + s / 2, r * s + s / 2, 1, 1).data; out.push(d[0] + d[1] + d[2]); }
        return out; }""")
    assert int(np.argmax(cells)) == 2 * grid.cols + 1
    page.screenshot(path=str(tmp_path / "image_mode.png"))
    # hover patch (3, 3): its own row is drawn and described
    box = page.locator("#im-canvas").bounding_box()
    cell = box["width"] / grid.cols
    page.mouse.move(box["x"] + 3.5 * cell, box["y"] + 3.5 * cell)
    p.settle()
    q = grid.unit(3, 3)
    row = planted.attentions[1, 0, q].numpy()
    shown = int(info.get_attribute("data-best"))
    assert info.get_attribute("data-query") == str(q) and shown >= grid.lead
    # the page holds weights quantised per row (255 levels of the row's maximum): its strongest patch is the
    # captured strongest up to one level
    assert row[shown] >= row[grid.patches].max() - row.max() / 255 - 1e-6
    assert float(page.locator("#hover-info").get_attribute("data-value")) == pytest.approx(row[grid.patches].max(), abs=row.max() / 255 + 1e-6)
    assert "query p(3,3) (layer 1, head 0)" in info.text_content()
    assert f"[CLS] {row[0]:.3f}, [DIST] {row[1]:.3f}" in info.text_content()
    page.click("#im-cls")
    p.settle()
    assert info.get_attribute("data-query") == "0"
    p.view("matrix")  # the other views still work on an image
    assert p.errors == [] and all(u.startswith(("file:", "data:", "blob:")) for u in p.requests)
    page.close()
