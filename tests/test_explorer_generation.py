"""The explorer's generation mode in headless Chromium: the values it shows are the captured rows."""

from __future__ import annotations

import numpy as np
import pytest

from hf_attn_inspect import AttentionInspector
from hf_attn_inspect.core.tokens import clean_token
from hf_attn_inspect.views.explorer import LEVELS, write_explorer
from test_explorer import Page, browser  # noqa: F401  (the shared headless-Chromium fixture)


def _shown(pg: Page, selector: str) -> np.ndarray:
    return np.array([float(v) for v in pg.page.eval_on_selector_all(selector, "els => els.map(e => e.dataset.weight)")])


def _close(shown: np.ndarray, want: np.ndarray) -> None:
    assert shown.shape == want.shape
    bound = want.max() / (2 * LEVELS) + 1e-6  # the explorer's per-row quantisation
    assert np.abs(shown - want).max() <= bound, np.abs(shown - want).max()


@pytest.fixture(scope="module")
def gpt2_generation(tiny_model, tiny_tokenizer):
    return AttentionInspector(tiny_model("gpt2"), tiny_tokenizer).generate("the cat sat on the mat", max_new_tokens=8)


def test_generation_mode_shows_each_steps_row(browser, gpt2_generation, tmp_path):  # noqa: F811
    res = gpt2_generation
    pg = Page(browser, write_explorer(res, tmp_path / "g.html"))
    try:
        assert not pg.page.locator("#view-generation").is_hidden()
        probs = pg.page.eval_on_selector_all("#gen-text .gen-tok", "els => els.map(e => Number(e.dataset.prob))")
        assert np.allclose(probs, res.probabilities, atol=1e-7)
        assert pg.texts("#gen-text .gen-tok") == [clean_token(t) for t in res.generated_tokens]
        pg.page.click("#gen-text .gen-tok[data-step='3']")
        pg.settle()
        p = res.prompt_length
        row = res.step_rows(0, 0)[3].numpy()[: p + 3]  # the query of position p + 2 sees positions 0..p+2
        _close(_shown(pg, "#gen-context .gen-tok"), row)
        assert len(pg.texts("#gen-context .gen-prompt")) == p and len(pg.texts("#gen-context .gen-generated")) == 3
        assert "rollout" not in pg.page.locator("#gen-what").text_content()
        pg.check("#average")
        _close(_shown(pg, "#gen-context .gen-tok"), res.step_rows(0)[3].numpy()[: p + 3])
        pg.set("#layer", "1")
        _close(_shown(pg, "#gen-context .gen-tok"), res.step_rows(1)[3].numpy()[: p + 3])
        pg.page.fill("#gen-step", "7")
        pg.page.dispatch_event("#gen-step", "input")
        pg.settle()
        _close(_shown(pg, "#gen-context .gen-tok"), res.step_rows(1)[7].numpy()[: p + 7])
        assert pg.texts("#gen-alts tbody td:first-child") == [clean_token(t) for t, _ in res.alternatives[7]]
        pg.page.screenshot(path=str(tmp_path / "generation.png"), full_page=True)
        pg.assert_clean()
    finally:
        pg.close()


def test_generation_mode_cross_attention(browser, tiny_model, tiny_tokenizer, tmp_path):  # noqa: F811
    res = AttentionInspector(tiny_model("bart"), tiny_tokenizer).generate("the cat sat on the mat", max_new_tokens=5)
    pg = Page(browser, write_explorer(res, tmp_path / "b.html"))
    try:
        pg.page.click("#gen-text .gen-tok[data-step='2']")
        pg.settle()
        assert not pg.page.locator("#gen-cross-wrap").is_hidden()
        _close(_shown(pg, "#gen-cross .gen-tok"), res.step_rows(0, 0, "cross")[2].numpy())
        _close(_shown(pg, "#gen-context .gen-tok"), res.step_rows(0, 0)[2].numpy()[: res.prompt_length + 2])
        pg.assert_clean()
    finally:
        pg.close()
