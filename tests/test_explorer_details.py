"""Explorer details a user trips on (issue 15, items 17-19), checked in headless Chromium.

The head view's hover line must not outlive the pointer or a redraw, a hovered token must show lines on
long inputs whose weights are all small, and a truncated input must show only what the model read.
"""

from __future__ import annotations

import torch

from test_explorer import Page, browser, planted_result  # noqa: F401  (browser is a fixture)
from hf_attn_inspect import AttentionResult, TruncationWarning
from hf_attn_inspect.views.explorer import write_explorer

import pytest

NBSP = "\u00a0"


def hover_token(pg: Page, side: str, pos: int) -> str:
    pg.page.locator(f"#hv-{side} span").nth(pos).hover()
    return pg.page.locator("#hover-info").text_content()


# ------------------------------------------------------------------ item 17
def test_head_view_info_clears_on_leave_and_redraw(browser, tmp_path):  # noqa: F811
    r = planted_result(["[CLS]", "the", "cat", "sat", "[SEP]"], layers=2, heads=3)
    path = tmp_path / "p.html"
    write_explorer(r, path)
    pg = Page(browser, path)
    try:
        assert hover_token(pg, "left", 2).startswith("head 0: strongest key")
        pg.page.mouse.move(5, 5)  # the pointer leaves the token
        assert pg.page.locator("#hover-info").text_content() == NBSP
        assert hover_token(pg, "left", 1).startswith("head 0: strongest key")
        pg.page.hover("#layer")  # the user goes to the layer control and switches layer
        pg.set("#layer", "1")
        assert pg.page.locator("#hover-info").text_content() == NBSP
        # a redraw under a pointer resting on a token: the line, if any, describes the layer now drawn
        hover_token(pg, "left", 1)
        pg.page.evaluate("() => { window.hfAttnExplorer.state.layer = 0; return window.hfAttnExplorer.render(); }")
        pg.settle()
        w = r.head(0, 0)[1]
        fresh = f'head 0: strongest key "{r.tokens[int(w.argmax())]}" {float(w.max()):.4f}'
        assert pg.page.locator("#hover-info").text_content() in (NBSP, fresh)
        pg.assert_clean()
    finally:
        pg.close()


# ------------------------------------------------------------------ item 18
def faint_result(t: int = 200) -> tuple[AttentionResult, list[int]]:
    """Rows whose largest weight is 0.018 (on key ``best[i]``), the rest spread evenly: all below 0.025."""
    best = [(7 * i + 3) % t for i in range(t)]
    att = torch.full((1, 1, t, t), (1 - 0.018) / (t - 1))
    att[0, 0, torch.arange(t), torch.tensor(best)] = 0.018
    tokens = [f"w{i}" for i in range(t)]
    return AttentionResult(tokens=tokens, attentions=att, model_name="planted", text=" ".join(tokens)), best


def test_hovered_token_shows_lines_when_every_weight_is_small(browser, tmp_path):  # noqa: F811
    r, best = faint_result()
    assert float(r.attentions.max()) < 0.025
    path = tmp_path / "faint.html"
    write_explorer(r, path, metrics=False, rollout=False)
    pg = Page(browser, path)
    try:
        pg.view("head")  # 200 tokens open on the matrix view
        q = 40
        info = hover_token(pg, "left", q)
        assert f'strongest key "w{best[q]}" 0.01' in info
        # the strongest key's line arrives at the right edge at its row; count drawn pixels in the canvas
        alpha = pg.page.evaluate(
            """([k]) => { const c = document.getElementById('hv-canvas');
                 const d = c.getContext('2d').getImageData(c.width - 2, k * 18 + 6, 1, 6).data;
                 let m = 0; for (let i = 3; i < d.length; i += 4) m = Math.max(m, d[i]); return m; }""",
            [best[q]],
        )
        assert alpha >= 0.5 * 255  # a clearly visible line (opacity at least 0.6 x weight / row max)
        painted = pg.page.evaluate(
            """() => { const c = document.getElementById('hv-canvas');
                 const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                 let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }""")
        assert painted > 1000  # every key of the row is above 5% of its maximum: lines to all of them
        pg.page.screenshot(path=str(tmp_path / "faint.png"))
        pg.assert_clean()
    finally:
        pg.close()


# ------------------------------------------------------------------ item 19
def test_truncated_input_shows_only_the_kept_text(browser, inspector, tmp_path):  # noqa: F811
    # an emoji (one [UNK] token, two UTF-16 units in the browser) before the cut: offsets count code points
    text = "The \U0001F431 cat sat on the mat and looked at the dog who sat on the rug near the door all day long."
    with pytest.warns(TruncationWarning):
        r = inspector(text, max_length=12)
    assert r.truncated and r.seq_len == 12
    kept = r.kept_chars[0]
    assert text[:kept] == "The \U0001F431 cat sat on the mat and looked at"  # the 10 tokens between [CLS] and [SEP]
    assert inspector(text[:kept]).tokens == r.tokens
    assert not inspector(text).truncated and inspector(text).kept_chars is None
    path = tmp_path / "cut.html"
    write_explorer(r, path)
    pg = Page(browser, path)
    try:
        header = pg.page.locator("#input-text").text_content()
        assert f"looked at \u2026 [cut: {len(text) - kept} more characters were not analysed]" in header
        assert "dog" not in header and "\U0001F431" in header
        note = pg.page.locator("#truncation-note").text_content()
        assert "cut to 12 tokens" in note
        pg.page.screenshot(path=str(tmp_path / "cut.png"))
        pg.assert_clean()
    finally:
        pg.close()
    # saved and loaded results keep it
    loaded = AttentionResult.load(r.save(tmp_path / "r.safetensors"))
    assert loaded.truncated and loaded.kept_chars == r.kept_chars


def test_truncated_pair_keeps_both_offsets(inspector):
    a, b = "One two three four five six seven.", "Eight nine ten eleven twelve thirteen fourteen fifteen."
    with pytest.warns(TruncationWarning):
        r = inspector(a, b, max_length=12)
    ka, kb = r.kept_chars
    assert 0 < ka <= len(a) and 0 < kb < len(b)
    assert inspector(a[:ka], b[:kb]).tokens == r.tokens
