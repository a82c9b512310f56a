"""AttentionResult as data: save/load round trip, index errors, and what show()/to_html() hand to the user."""

from __future__ import annotations

import html
import json
import re

import pytest
import torch

from hf_attn_inspect import AttentionResult, InputError


def _result(n: int = 4) -> AttentionResult:
    w = torch.softmax(torch.randn(2, 3, n, n, generator=torch.Generator().manual_seed(0)), -1)
    tokens = ["[CLS]"] + [f"t{i}" for i in range(n - 2)] + ["[SEP]"]
    return AttentionResult(tokens=tokens, attentions=w, special_tokens_mask=[True] + [False] * (n - 2) + [True],
                           model_name="tiny", text="t0 t1")


def _page_data(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="hai-data">(.*?)</script>', page, re.S)
    assert match, "the explorer page embeds its data as JSON"
    return json.loads(match.group(1))


def test_save_load_round_trip(tmp_path):
    r = _result()
    path = r.save(tmp_path / "r.safetensors")
    back = AttentionResult.load(path)
    assert torch.equal(back.attentions, r.attentions)
    assert back.tokens == r.tokens and back.special_tokens_mask == r.special_tokens_mask
    assert [p.name for p in tmp_path.iterdir()] == ["r.safetensors"]  # no temporary file left behind


def test_bad_indices_and_files_are_input_errors(tmp_path):
    r = _result()
    with pytest.raises(InputError, match="valid layers: 0..1"):
        r.head(5, 0)
    with pytest.raises(InputError, match="valid heads: 0..2"):
        r.head(0, 3)
    with pytest.raises(InputError, match="no saved result"):
        AttentionResult.load(tmp_path / "missing.safetensors")
    with pytest.raises(InputError, match="layers, heads, query, key"):
        AttentionResult(tokens=["a"], attentions=torch.ones(1, 1))


def test_show_in_a_notebook_displays_a_sandboxed_iframe(monkeypatch):
    """In IPython, show() displays (and returns) one HTML object: an <iframe srcdoc> holding the whole page."""
    import IPython
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    r = _result()
    frame = r.show(height=500)
    assert shown == [frame]
    markup = frame.data
    assert markup.startswith("<iframe srcdoc=") and 'sandbox="allow-scripts"' in markup and "height:500px" in markup
    page = html.unescape(re.search(r'srcdoc="(.*?)"', markup, re.S).group(1))
    assert page == r.to_html()
    assert "t0" in json.dumps(_page_data(page))  # the tokens travel as data inside the page


def test_show_outside_a_notebook_opens_a_complete_file(monkeypatch, tmp_path):
    import IPython
    import webbrowser

    opened = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    monkeypatch.setattr(webbrowser, "open", lambda uri: opened.append(uri))
    r = _result()
    path = r.show()
    assert len(opened) == 1 and opened[0].endswith(".html")
    from pathlib import Path

    assert Path(path).read_text(encoding="utf-8") == r.to_html()


def test_show_outside_a_notebook_leaves_no_folder_and_clears_old_pages(monkeypatch, tmp_path):
    """In a plain script show() writes one page file straight into the temporary folder (no folder of its
    own), and a later call removes pages older than an hour."""
    import os
    import tempfile
    import time
    import webbrowser
    from pathlib import Path

    import IPython

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    monkeypatch.setattr(webbrowser, "open", lambda uri: True)
    r = _result()
    first = Path(r.show())
    assert first.parent == tmp_path and [p for p in tmp_path.iterdir() if p.is_dir()] == []
    old = time.time() - 2 * 3600
    os.utime(first, (old, old))
    second = Path(r.show())
    assert sorted(tmp_path.iterdir()) == [second]


def test_to_html_writes_what_it_returns(tmp_path):
    r = _result()
    text = r.to_html(tmp_path / "a.html")
    assert (tmp_path / "a.html").read_text(encoding="utf-8") == text
    assert "<html" in text.lower() and "Content-Security-Policy" in text
