"""The HTML explorer: encoding, safety, CLI, and real headless-Chromium checks (Debian chromium + playwright)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hf_attn_inspect import AttentionResult, OutputError
from hf_attn_inspect.stats.aggregate import attention_rollout, words
from hf_attn_inspect.stats.tables import head_metrics
from hf_attn_inspect.cli import main
from hf_attn_inspect.views.explorer import LEVELS, dequantize_rows, explorer_html, quantize_rows, write_explorer

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
XSS_SCRIPT = "</script><script>alert(1)</script>"
XSS_IMG = "<img src=x onerror=alert(1)>"


def planted_result(tokens: list[str], layers=2, heads=3, seed=0, special=None, segments=None, word_ids=None) -> AttentionResult:
    g = torch.Generator().manual_seed(seed)
    t = len(tokens)
    att = (torch.randn(layers, heads, t, t, generator=g) * 2).softmax(-1)
    return AttentionResult(tokens=tokens, attentions=att, model_name="planted", text=" ".join(tokens),
                           special_tokens_mask=special, segment_ids=segments, word_ids=word_ids)


# ------------------------------------------------------------------ python side
def test_quantisation_error_bound():
    w = torch.rand(3, 4, 9, 11) ** 4
    w[0, 0, 0] = 0.0  # an all-zero (fully masked) row
    levels, step = quantize_rows(w)
    assert levels.dtype == np.uint8 and levels.max() <= LEVELS
    err = np.abs(dequantize_rows(levels, step) - w.numpy())
    bound = w.numpy().max(-1, keepdims=True) / 255
    assert np.all(err <= bound + 1e-7)
    assert np.all(dequantize_rows(levels, step)[0, 0, 0] == 0)


def test_tokens_cannot_break_out_of_the_data_block(tmp_path):
    r = planted_result(["[CLS]", XSS_SCRIPT, XSS_IMG, "<!--", "a&b", "\u2028", "[SEP]"])
    r.text_pair = "</SCRIPT >"
    page = explorer_html(r)
    assert page.lower().count("<script") == 2 and page.lower().count("</script") == 2
    data = page.split('id="hai-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data and ">" not in data and "\u2028" not in data
    assert "<img" not in page


def test_to_html_writes_file_and_classes(tmp_path):
    r = planted_result(["[CLS]", "a", "b", "[SEP]"])
    classes = pd.DataFrame({"layer": [0, 1], "head": [2, 0], "class": ["diagonal", "broad"]})
    out = tmp_path / "x.html"
    text = r.to_html(out, classes=classes)
    assert out.read_text(encoding="utf-8") == text and text.startswith("<!DOCTYPE html>")
    assert '"classes":["","","diagonal","broad","",""]' in text
    with pytest.raises(OutputError):
        write_explorer(r, tmp_path)  # a directory is not a file name
    assert [p.name for p in tmp_path.iterdir()] == ["x.html"]


def test_rollout_left_out_for_non_consecutive_layers():
    r = planted_result(["[CLS]", "a", "b", "[SEP]"], layers=2)
    assert '"rollout":{"levels"' in explorer_html(r)
    r.layer_ids = [0, 2]
    page = explorer_html(r)
    assert '"rollout":null' in page and '"layer_ids":[0,2]' in page


def test_view_cli(tmp_path, capsys):
    out = tmp_path / "a.html"
    assert main(["view", "The cat sat.", "--pair", "It did.", "-o", str(out)]) == 0
    assert out.stat().st_size > 1000 and "wrote" in capsys.readouterr().out
    assert main(["view", "The cat sat.", "-o", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    assert main(["view", "   ", "-o", str(out)]) == 2


# ------------------------------------------------------------------ browser side
@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser tests: .ci/run should have installed Debian chromium")
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    if os.environ.get("CI"):
        import playwright.sync_api as sync_api
    else:
        sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Page:
    """One loaded explorer page with every console error, request and dialog recorded."""

    def __init__(self, browser, path: Path):
        self.url = path.resolve().as_uri()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.reload()

    def reload(self) -> None:
        """(Re)load the page: every control back to its start (layer 0, head 0, head view)."""
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready='1']", state="attached", timeout=30000)

    def settle(self) -> None:
        self.page.wait_for_selector("body[data-rendering='0']", state="attached", timeout=30000)

    def view(self, name: str) -> None:
        self.page.click(f"#tabs button[data-view={name}]")
        self.settle()

    def set(self, selector: str, value: str) -> None:
        self.page.select_option(selector, value)
        self.settle()

    def check(self, selector: str, on: bool = True) -> None:
        self.page.locator(selector).set_checked(on)
        self.settle()

    def canvas(self, selector: str) -> str:
        return self.page.evaluate(f"() => document.querySelector('{selector}').toDataURL()")

    def hover(self, r: int, c: int) -> tuple[int, int, float, str]:
        canvas = self.page.locator("#mx-canvas")
        cell = int(canvas.get_attribute("data-cell"))
        canvas.hover(position={"x": (c + 0.5) * cell, "y": (r + 0.5) * cell})
        info = self.page.locator("#hover-info")
        return (int(info.get_attribute("data-row")), int(info.get_attribute("data-col")),
                float(info.get_attribute("data-value")), info.text_content())

    def texts(self, selector: str) -> list[str]:
        return self.page.locator(selector).all_text_contents()

    def assert_clean(self) -> None:
        assert self.errors == []
        assert self.dialogs == []
        others = [u for u in self.requests if u != self.url and not u.startswith(("data:", "blob:"))]
        assert others == []

    def close(self) -> None:
        self.page.close()


def assert_hover_matches(pg: Page, weights: np.ndarray, cells) -> None:
    for r, c in cells:
        row, col, value, text = pg.hover(r, c)
        assert (row, col) == (r, c)
        assert abs(value - weights[r, c]) <= weights[r].max() / 255 + 1e-7, (r, c, value, weights[r, c])
        assert f"[{r}]" in text and f"[{c}]" in text


@pytest.fixture(scope="module")
def pair_page(browser, inspector, tmp_path_factory):
    r = inspector("The tokenizer splits unbelievably long words.", "Short answer here.")
    path = tmp_path_factory.mktemp("explorer") / "pair.html"
    r.to_html(path)
    pg = Page(browser, path)
    yield r, pg
    pg.close()


def test_page_loads_clean_and_draws(pair_page, tmp_path):
    r, pg = pair_page
    pg.reload()
    pg.assert_clean()
    assert pg.texts("#hv-left span") == r.display_tokens
    pg.page.screenshot(path=str(tmp_path / "head.png"), full_page=True)
    from PIL import Image

    with Image.open(tmp_path / "head.png") as im:
        assert im.format == "PNG" and im.size[0] == 1400 and im.size[1] >= 600
        assert len(set(im.convert("L").getdata())) > 20  # not a blank page


def test_selecting_layer_and_head_changes_drawing(pair_page):
    r, pg = pair_page
    pg.reload()
    pg.view("matrix")
    before = pg.canvas("#mx-canvas")
    pg.set("#layer", "3")
    after_layer = pg.canvas("#mx-canvas")
    assert after_layer != before
    assert pg.page.get_attribute("#mx-canvas", "data-drawn") == "layer 3 head 0"
    pg.check("#heads input[data-head='5']")
    pg.check("#heads input[data-head='0']", False)
    assert pg.page.get_attribute("#mx-canvas", "data-drawn") == "layer 3 head 5"
    assert pg.canvas("#mx-canvas") != after_layer
    pg.view("head")
    lines_one = pg.canvas("#hv-canvas")
    pg.check("#heads input[data-head='7']")
    assert pg.canvas("#hv-canvas") != lines_one
    assert pg.page.get_attribute("#hv-canvas", "data-drawn") == "layer 3 head 5;head 7"
    pg.page.click("#heads-none")
    pg.settle()
    pg.set("#layer", "0")
    pg.assert_clean()


def test_hovered_values_match_python(pair_page):
    r, pg = pair_page
    pg.reload()
    pg.view("matrix")
    pg.set("#layer", "2")
    pg.page.click("#heads-none")
    pg.settle()
    pg.check("#heads input[data-head='4']")
    pg.check("#heads input[data-head='0']", False)
    w = r.head(2, 4).numpy()
    t = w.shape[0]
    cells = [(0, 0), (t - 1, t - 1), (3, int(w[3].argmax())), (5, 2), (t // 2, t - 2)]
    assert_hover_matches(pg, w, cells)
    # average of several heads
    pg.check("#heads input[data-head='7']")
    pg.check("#average")
    mean = (r.head(2, 4).numpy() + r.head(2, 7).numpy()) / 2
    assert pg.page.get_attribute("#mx-canvas", "data-drawn") == "layer 2 mean of heads 4, 7"
    bound = max(r.head(2, 4).numpy().max(-1, keepdims=True).max(), 0)
    for rr, cc in cells:
        _, _, value, _ = pg.hover(rr, cc)
        assert abs(value - mean[rr, cc]) <= bound / 255 + 1e-7
    pg.check("#average", False)
    assert pg.page.get_attribute("#mx-canvas", "data-drawn") == "layer 2 head 7"  # the last head clicked
    pg.check("#heads input[data-head='7']", False)
    assert pg.page.get_attribute("#mx-canvas", "data-drawn") == "layer 2 head 4"
    # rollout
    pg.check("#rollout")
    roll = attention_rollout(r).numpy()[2]
    assert_hover_matches(pg, roll, cells)
    pg.check("#rollout", False)
    # word level: pieces merged (sum over keys, mean over queries)
    pg.set("#level", "word")
    wr = words(r)
    ww = wr.head(2, 4).numpy()
    assert int(pg.page.get_attribute("#mx-canvas", "data-rows")) == wr.seq_len < r.seq_len
    n = ww.shape[0]
    for rr, cc in [(0, 0), (2, 3), (n - 1, 1), (n // 2, n // 2)]:
        row, col, value, _ = pg.hover(rr, cc)
        assert (row, col) == (rr, cc)
        assert abs(value - ww[rr, cc]) <= 3 * w.max() / 255 + 1e-6
    assert "unbelievably" in " ".join(pg.texts("#mx-rows span"))
    pg.set("#level", "token")
    pg.assert_clean()


def test_filters_model_view_and_metrics(pair_page):
    r, pg = pair_page
    pg.reload()
    pg.view("matrix")
    special = np.array(r.special_tokens_mask)
    seg = np.array([-1 if s is None else s for s in r.segment_ids])
    pg.check("#hide-special")
    assert int(pg.page.get_attribute("#mx-canvas", "data-rows")) == r.seq_len - special.sum()
    pg.check("#hide-special", False)
    pg.set("#pair", "AB")
    assert int(pg.page.get_attribute("#mx-canvas", "data-rows")) == ((seg == 0) & ~special).sum()
    assert int(pg.page.get_attribute("#mx-canvas", "data-cols")) == ((seg == 1) & ~special).sum()
    row, col, value, _ = pg.hover(0, 0)
    assert r.segment_ids[row] == 0 and r.segment_ids[col] == 1
    assert abs(value - r.head(0, 0)[row, col].item()) <= r.head(0, 0)[row].max().item() / 255 + 1e-7
    pg.set("#pair", "all")
    pg.view("model")
    pg.page.wait_for_selector("#model-grid canvas[data-layer='5'][data-head='11'][data-drawn='1']", state="attached")
    assert pg.page.locator("#model-grid canvas").count() == 72
    pg.page.click("#model-grid canvas[data-layer='4'][data-head='9']")
    pg.settle()
    assert pg.page.get_attribute("#mx-canvas", "data-drawn") == "layer 4 head 9"
    pg.view("metrics")
    df = head_metrics(r)
    pg.set("#metric", "diagonal")
    cells = pg.texts("#metrics-grid td")
    assert len(cells) == 72
    expect = df.sort_values(["layer", "head"])["diagonal"].to_numpy()
    np.testing.assert_allclose([float(c) for c in cells], expect, atol=6e-4)
    pg.page.click("#theme")
    pg.settle()
    assert "dark" in (pg.page.get_attribute("body", "class") or "")
    pg.view("matrix")
    pg.page.click("#theme")
    pg.settle()
    pg.assert_clean()


def test_xss_strings_are_text_in_every_view(browser, tmp_path):
    tokens = ["[CLS]", XSS_SCRIPT, "ab", "##cd", XSS_IMG, "<!--", "[SEP]"]
    r = planted_result(tokens, special=[True, False, False, False, False, False, True],
                       word_ids=[None, 0, 1, 1, 2, 3, None])
    r.text, r.text_pair = f"A {XSS_SCRIPT}", XSS_IMG
    path = tmp_path / "xss.html"
    r.to_html(path)
    pg = Page(browser, path)
    try:
        body = pg.page.locator("#input-text").text_content()
        assert XSS_SCRIPT in body and XSS_IMG in body
        assert pg.texts("#hv-left span") == tokens and pg.texts("#hv-right span") == tokens
        pg.set("#level", "word")
        assert pg.texts("#hv-left span") == ["[CLS]", XSS_SCRIPT, "abcd", XSS_IMG, "<!--", "[SEP]"]
        pg.view("matrix")
        words_ = ["[CLS]", XSS_SCRIPT, "abcd", XSS_IMG, "<!--", "[SEP]"]
        assert pg.texts("#mx-rows span") == words_ and pg.texts("#mx-cols span") == words_
        assert [pg.page.locator("#mx-rows span").nth(i).get_attribute("title") for i in range(6)] == words_
        _, _, _, text = pg.hover(1, 3)
        assert XSS_SCRIPT in text and XSS_IMG in text
        for view in ("model", "metrics", "head"):
            pg.view(view)
        assert pg.page.locator("img").count() == 0
        assert pg.page.locator("script").count() == 2
        assert pg.page.evaluate("() => typeof window.alert") == "function"
        pg.assert_clean()
    finally:
        pg.close()


def test_encoder_decoder_views(browser, tiny_model, tiny_tokenizer, tmp_path):
    from hf_attn_inspect import AttentionInspector

    insp = AttentionInspector(tiny_model("bart"), tiny_tokenizer, name="tiny-bart")
    r = insp("Tokenization is unbelievable here.", "Decoding it now.")
    path = tmp_path / "bart.html"
    write_explorer(r, path)
    pg = Page(browser, path)
    try:
        options = pg.page.locator("#stack option").all_text_contents()
        assert len(options) == 3 and "cross" in options[2]
        pg.view("matrix")
        pg.set("#stack", "cross")
        rows, cols = (int(pg.page.get_attribute("#mx-canvas", k)) for k in ("data-rows", "data-cols"))
        assert (rows, cols) == (len(r.decoder_tokens), len(r.tokens))
        assert_hover_matches(pg, r.head(0, 0, "cross").numpy(), [(0, 0), (rows - 1, cols - 1), (1, 2)])
        pg.set("#stack", "decoder")
        assert_hover_matches(pg, r.head(0, 0, "decoder").numpy(), [(1, 0), (rows - 1, rows - 1)])
        pg.view("metrics")
        pg.view("model")
        pg.assert_clean()
    finally:
        pg.close()


def long_natural_text() -> str:
    """Varied English prose (the package's own docstrings), long enough for 512 tokens."""
    import inspect as pyinspect

    import hf_attn_inspect
    from hf_attn_inspect.capture import inspector, interface, result
    from hf_attn_inspect.core import kernels
    from hf_attn_inspect.stats import aggregate, chapter, metrics, patterns, tables
    from hf_attn_inspect.views import explorer

    docs = [pyinspect.getdoc(m) or "" for m in (hf_attn_inspect, aggregate, tables, patterns, chapter, interface, kernels,
                                                 explorer, inspector, metrics, result)]
    for module in (aggregate, tables, patterns, chapter, explorer, metrics, result):
        docs += [pyinspect.getdoc(f) or "" for _, f in pyinspect.getmembers(module, pyinspect.isfunction)]
    return re.sub(r"\s+", " ", " ".join(docs))


def test_causal_gqa_model(browser, tiny_model, tiny_tokenizer, tmp_path):
    from hf_attn_inspect import AttentionInspector

    r = AttentionInspector(tiny_model("llama"), tiny_tokenizer, name="tiny-llama")("Causal models look back only.")
    path = tmp_path / "llama.html"
    write_explorer(r, path)
    pg = Page(browser, path)
    try:
        pg.view("matrix")
        pg.check("#rollout")
        t = r.seq_len
        roll = attention_rollout(r).numpy()[0]
        assert_hover_matches(pg, roll, [(0, 0), (t - 1, 0), (2, 4), (t - 1, t - 1)])
        _, _, future, _ = pg.hover(1, t - 1)
        assert future == 0.0
        pg.assert_clean()
    finally:
        pg.close()


def test_512_tokens_file_size_and_browser(browser, inspector, tmp_path):
    from hf_attn_inspect import TruncationWarning

    with pytest.warns(TruncationWarning):
        r = inspector(long_natural_text(), max_length=512)
    assert r.seq_len == 512 and r.num_layers * r.num_heads == 72
    path = tmp_path / "long.html"
    write_explorer(r, path)
    size = path.stat().st_size
    assert size <= 10_000_000, f"{size / 1e6:.2f} MB"
    pg = Page(browser, path)
    try:
        pg.view("matrix")
        w = r.head(0, 0).numpy()
        assert_hover_matches(pg, w, [(0, 0), (511, 511), (100, int(w[100].argmax())), (300, 17)])
        pg.view("model")
        pg.page.wait_for_selector("#model-grid canvas[data-layer='5'][data-head='11'][data-drawn='1']",
                                  state="attached", timeout=60000)
        pg.view("head")
        assert len(pg.texts("#hv-left span")) == 512
        pg.assert_clean()
    finally:
        pg.close()


def test_notebook_iframe_runs_the_page(browser, tmp_path):
    from hf_attn_inspect.views.explorer import iframe_html

    r = planted_result(["[CLS]", XSS_IMG, "b", "[SEP]"])
    host = tmp_path / "host.html"
    host.write_text("<!DOCTYPE html><html><body>" + iframe_html(explorer_html(r), 600) + "</body></html>", encoding="utf-8")
    page = browser.new_page()
    errors, dialogs = [], []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(host.resolve().as_uri())
    frame = page.frame_locator("iframe")
    frame.locator("body[data-ready='1']").wait_for(state="attached", timeout=30000)
    assert frame.locator("#hv-left span").all_text_contents() == ["[CLS]", XSS_IMG, "b", "[SEP]"]
    assert errors == [] and dialogs == []
    page.close()


def test_long_input_page_draws_pooled_layers(browser, inspector, tmp_path):
    """`view` above the memory budget: pooled layers draw as block heatmaps with the note, chosen layer full."""
    import random

    rng = random.Random(3)
    vocab = "the cat sat on a mat , and dog ran to park with big red ball in sun .".split()
    text = " ".join(rng.choice(vocab) for _ in range(300))  # 302 tokens: over a 60 MB budget in full
    path = tmp_path / "pooled.html"
    assert main(["view", text, "--layers", "2", "--max-memory", "60MB", "-o", str(path)]) == 0
    pg = Page(browser, path)
    try:
        page = pg.page
        note = page.locator("#pooled-note")
        assert note.is_visible() and "pooled" in note.text_content() and "blocks of 2 tokens" in note.text_content()
        assert page.locator("#tabs button.active").get_attribute("data-view") == "matrix"  # a pooled layer opens here
        canvas = page.locator("#mx-canvas")
        assert (canvas.get_attribute("data-rows"), canvas.get_attribute("data-cols")) == ("151", "151")
        assert "layer 0 (pooled)" in page.locator("#layer option").first.text_content() or \
            page.locator("#layer option").first.text_content() == "0 (pooled)"
        blank = page.evaluate("() => { const c = document.createElement('canvas'); c.width = 302; c.height = 302; return c.toDataURL(); }")
        assert pg.canvas("#mx-canvas") != blank
        colours = page.evaluate("""() => { const c = document.querySelector('#mx-canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; const s = new Set();
            for (let i = 0; i < d.length; i += 4 * 7) s.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2]); return s.size; }""")
        assert colours > 20  # a heatmap, not an empty canvas
        row, col, value, text_ = pg.hover(10, 10)
        assert (row, col) == (10, 10) and value > 0 and "query tokens 20\u201321" in text_ and "pooled block" in text_
        assert "pooled" in page.locator("#mx-legend").text_content()
        for sel in ("#level", "#hide-special", "#rollout"):  # token-level interactions are off, and say why
            assert page.locator(sel).is_disabled()
        page.screenshot(path=str(tmp_path / "pooled_matrix.png"), full_page=True)
        pg.view("head")
        assert "is pooled" in page.locator("#hv-left").text_content()
        pg.set("#layer", "2")  # the chosen layer: token-level weights, token labels, head view lines
        assert not page.locator("#level").is_disabled()
        assert len(pg.texts("#hv-left span")) == 302
        pg.view("model")
        page.wait_for_selector("#model-grid canvas[data-layer='5'][data-head='11'][data-drawn='1']",
                               state="attached", timeout=60000)
        assert "layer 0 (pooled)" in pg.texts("#model-grid .lab")
        page.screenshot(path=str(tmp_path / "pooled_model.png"), full_page=True)
        pg.view("metrics")
        assert len(page.locator("#metrics-grid td").all()) == 72
        pg.assert_clean()
        if os.environ.get("HAI_SCREENSHOTS"):
            import shutil

            for name in ("pooled_matrix.png", "pooled_model.png"):
                shutil.copy(tmp_path / name, Path(os.environ["HAI_SCREENSHOTS"]) / name)
    finally:
        pg.close()


@pytest.mark.parametrize("family", ["bart", "llama"])
def test_pooled_page_encoder_decoder_and_causal(browser, tiny_model, tiny_tokenizer, tmp_path, family):
    """Every stack of an encoder-decoder model (and a causal GQA model) pools and draws: layer 1 full, layer 0 pooled."""
    from hf_attn_inspect import AttentionInspector
    from hf_attn_inspect.capture.pooled import pool_blocks
    from hf_attn_inspect.runs.planner import capture_for_explorer

    ins = AttentionInspector(tiny_model(family), tiny_tokenizer, name=family)
    text, pair = "the cat sat on the mat and the dog ran to the park " * 3, "a short reply here" if family == "bart" else None
    full = ins(text, pair)
    cap = capture_for_explorer(ins, text, pair, layers=[1], max_memory="1GB", max_blocks=8)
    stacks = ["self", "decoder", "cross"] if family == "bart" else ["self"]
    assert sorted(cap.pooled) == sorted(stacks) and cap.result.layer_ids == [1]
    for which in stacks:
        ps = cap.pooled[which]
        assert ps.layer_ids == [0] and ps.sums.shape[-2:] == (len(ps.q_edges) - 1, len(ps.k_edges) - 1)
        ref = pool_blocks(full.stack(which)[0][0], ps.q_edges, ps.k_edges)
        assert torch.allclose(ps.sums[0], ref, atol=1e-6), which
    path = write_explorer(cap.result, tmp_path / "p.html", pooled=cap)
    pg = Page(browser, path)
    try:
        for which in stacks:
            pg.set("#stack", which) if len(stacks) > 1 else None
            pg.view("matrix")
            assert pg.page.locator("#pooled-note").is_visible()
            assert pg.page.locator("#mx-canvas").get_attribute("data-rows") == str(len(cap.pooled[which].q_edges) - 1)
            pg.set("#layer", "1")
            assert pg.page.locator("#mx-canvas").get_attribute("data-rows") == str(full.stack(which)[0].shape[-2])  # tokens
            pg.view("model")
            pg.view("metrics")
        pg.assert_clean()
    finally:
        pg.close()
