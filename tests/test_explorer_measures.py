"""The explorer's measure selector in headless Chromium: flipping to a measure draws that measure."""

from __future__ import annotations

import numpy as np
import pytest

from hf_attn_inspect.core.mixing import row_normalise
from test_explorer import Page, assert_hover_matches, browser  # noqa: F401 - the module's browser fixture


@pytest.fixture(scope="module")
def measures_page(browser, inspector, tmp_path_factory):  # noqa: F811
    result = inspector("The cat sat on the mat, and it purred.", measures=["norm", "alti"])
    path = tmp_path_factory.mktemp("explorer_measures") / "page.html"
    result.to_html(path)
    pg = Page(browser, path)
    yield result, pg
    pg.close()


def test_measure_selector_flips_the_drawing(measures_page, tmp_path):
    r, pg = measures_page
    options = pg.page.eval_on_selector_all("#measure option", "els => els.map(e => e.value)")
    assert options == ["weights", "norm", "alti"]
    pg.view("matrix")
    pg.set("#layer", "3")
    t = r.seq_len
    cells = [(0, 0), (2, 1), (t - 1, t - 1), (4, int(r.head(3, 0)[4].argmax()))]
    assert_hover_matches(pg, r.head(3, 0).numpy(), cells)
    pg.set("#measure", "norm")
    assert_hover_matches(pg, row_normalise(r.measure("norm")[3, 0]).numpy(), cells)
    pg.set("#measure", "alti")  # per layer: every head shows the layer's map
    alti = r.measure("alti")[3].numpy()
    assert_hover_matches(pg, alti, cells)
    assert not np.allclose(alti, r.head(3, 0).numpy(), atol=0.05)
    pg.page.screenshot(path=str(tmp_path / "alti.png"))
    pg.set("#measure", "weights")
    assert_hover_matches(pg, r.head(3, 0).numpy(), cells)
    pg.view("model")
    pg.set("#measure", "alti")
    pg.assert_clean()


def test_pages_without_measures_have_no_selector(browser, inspector, tmp_path):  # noqa: F811
    path = tmp_path / "plain.html"
    inspector("The cat sat.").to_html(path)
    pg = Page(browser, path)
    assert pg.page.locator("#measure").count() == 0
    pg.assert_clean()
    pg.close()


def test_strip_shows_one_token_across_measures(measures_page):
    r, pg = measures_page
    pg.reload()
    pg.set("#layer", "2")
    pg.page.select_option("#strip-token", "2")
    pg.page.wait_for_selector("#strip-table[data-drawn='layer 2 token 2']", state="attached")
    header = pg.page.eval_on_selector_all("#strip-table tr:first-child td", "els => els.map(e => e.textContent)")
    assert header == ["key", "weights", "norm", "alti"]
    values = np.array(pg.page.eval_on_selector_all(
        "#strip-table tr:not(:first-child)",
        "rows => rows.map(r => Array.from(r.cells).slice(1).map(c => Number(c.dataset.value)))"))
    expected = np.stack([r.attentions[2, :, 2].mean(0).numpy(),
                         row_normalise(r.measure("norm")[2, :, 2]).mean(0).numpy(),
                         r.measure("alti")[2, 2].numpy()], 1)
    np.testing.assert_allclose(values, expected, atol=expected.max() / 255 + 1e-6)
    pg.assert_clean()
