"""Figures in every script: labels drawn with an installed font that has their glyphs, code points where none has.

The glyph checks are independent of :mod:`hf_attn_inspect.views.fonts`: they ask matplotlib which file each
family of a label resolves to and FreeType whether that file has a glyph for the character. The tests that
need a CJK (or Devanagari, emoji) font skip where none is installed; ``.ci/run`` installs them.
"""

from __future__ import annotations

import warnings

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager as fm  # noqa: E402
from matplotlib import ft2font  # noqa: E402

from hf_attn_inspect.cli import main  # noqa: E402
from hf_attn_inspect.core.tokens import clean_token  # noqa: E402
from hf_attn_inspect.views import fonts  # noqa: E402
from hf_attn_inspect.views.fonts import MissingFontWarning, readable_text, script_of  # noqa: E402
from hf_attn_inspect.views.plotting import plot_attention_heatmap, plot_multi_head_attention  # noqa: E402

CJK = "注意力机制是变压器的核心。"


def _has_glyph(family: str, char: str) -> bool:
    """True when the font matplotlib resolves ``family`` to has a glyph for ``char`` (FreeType's cmap)."""
    path = fm.findfont(fm.FontProperties(family=[family]), fallback_to_default=False)
    font = ft2font.FT2Font(str(getattr(path, "path", path)), face_index=getattr(path, "face_index", 0))
    return font.get_char_index(ord(char)) != 0


def _installed(char: str) -> bool:
    return any(ord(char) in f.codes for f in fonts.installed_fonts())


def _draw(fig) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.canvas.draw()
    plt.close(fig)
    return caught


def _glyph_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "missing from font" in str(w.message)]


@pytest.fixture
def fresh_notices(monkeypatch):
    """Each test starts with no script noticed yet (the notice is once per process otherwise)."""
    monkeypatch.setattr(fonts, "_noticed", set())


@pytest.fixture
def without(monkeypatch):
    """Hide every installed font that has any of the given characters (the font finder lacks them)."""
    def hide(chars: str) -> None:
        kept = tuple(f for f in fonts.installed_fonts() if not any(ord(c) in f.codes for c in chars))
        monkeypatch.setattr(fonts, "installed_fonts", lambda: kept)
    return hide


def _cjk_tokens() -> list[str]:
    import tiny_models

    tokens = tiny_models.tokenizer().tokenize(CJK)
    return ["[CLS]"] + [clean_token(t) for t in tokens] + ["[SEP]"]


@pytest.mark.skipif(not _installed("注"), reason="no CJK font installed (apt install fonts-noto-cjk)")
def test_cjk_heatmap_labels_render_with_their_glyphs_and_no_warning(fresh_notices):
    tokens = _cjk_tokens()
    drawn = [t for t in tokens if any(ord(c) > 0x2E80 for c in t)]
    assert drawn, "the tokenizer kept no CJK token; the test would check nothing"
    w = np.random.default_rng(0).dirichlet(np.ones(len(tokens)), len(tokens))
    ax = plot_attention_heatmap(w, tokens, tokens)
    labels = ax.get_xticklabels()
    assert [t.get_text() for t in labels] == tokens  # the characters themselves, no code points
    families = labels[0].get_fontfamily()
    for token in drawn:
        for ch in token:
            assert any(_has_glyph(f, ch) for f in families), (ch, families)
    caught = _draw(ax.figure)
    assert _glyph_warnings(caught) == [] and not [w for w in caught if w.category is MissingFontWarning]


def test_without_a_cjk_font_labels_are_code_points_and_one_notice(without, fresh_notices):
    without("注意力机")
    tokens = ["[CLS]", "注意力", "##机", "ok", "[SEP]"]
    w = np.full((3, 5, 5), 0.2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ax = plot_attention_heatmap(w[0], tokens, tokens)
        fig = plot_multi_head_attention(w, tokens)  # a second figure of the same tokens: no second notice
        caught += _draw(ax.figure) + _draw(fig)
    expected = ["[CLS]", "U+6CE8 U+610F U+529B", "##U+673A", "ok", "[SEP]"]
    assert [t.get_text() for t in ax.get_xticklabels()] == expected
    assert [t.get_text() for t in ax.get_yticklabels()] == expected
    notices = [str(w.message) for w in caught if w.category is MissingFontWarning]
    assert len(notices) == 1 and "CJK" in notices[0] and "fonts-noto-cjk" in notices[0]
    assert _glyph_warnings(caught) == []


def test_inspect_prints_one_line_notice_and_no_glyph_warnings(without, fresh_notices, tmp_path, capsys, tiny_dir):
    without(CJK)
    assert main(["inspect", CJK, "--model", str(tiny_dir("bert")), "--device", "cpu", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err.splitlines()
    notices = [line for line in err if "no installed font draws" in line]
    assert len(notices) == 1 and notices[0].startswith("warning: ") and "apt install fonts-noto-cjk" in notices[0]
    assert not [line for line in err if "Glyph" in line], err


@pytest.mark.skipif(not all(_installed(c) for c in "注ध🤖"), reason="CJK, Devanagari or emoji font missing")
def test_a_label_mixing_scripts_draws_in_one_figure(fresh_notices):
    label = "mixed 注意 ध्यान 🤖 שלום"
    ax = plot_attention_heatmap(np.eye(2), [label, "ok"], [label, "ok"])
    text = ax.get_xticklabels()[0]
    assert text.get_text() == label
    families = text.get_fontfamily()
    assert len(families) >= 3  # the default, a CJK and a Devanagari font at least, in one family list
    for ch in label.replace(" ", ""):
        assert any(_has_glyph(f, ch) for f in families), (ch, families)
    assert _glyph_warnings(_draw(ax.figure)) == []


@pytest.mark.parametrize("token", ["الانتباه", "תשומת", "ध्यान", "##क", "🤖", "こんにちは", "한국어"])
def test_every_character_is_drawn_or_written_as_its_code_point(token, fresh_notices):
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        got = readable_text([token])
    families = got.family or list(matplotlib.rcParams["font.family"])
    shown = got.texts[0]
    for ch in token:
        if _installed(ch) or _has_glyph(families[0], ch):
            assert ch in shown and any(_has_glyph(f, ch) for f in families), (ch, families)
        else:
            assert f"U+{ord(ch):04X}" in shown and ch not in shown


def test_latin_labels_are_unchanged_and_use_the_default_fonts():
    got = readable_text(["[CLS]", "the", "##cat", "naïve", "[SEP]"])
    assert got.texts == ["[CLS]", "the", "##cat", "naïve", "[SEP]"] and got.family is None and got.style() == {}


def test_script_names_and_packages():
    assert script_of("注") == ("CJK", "fonts-noto-cjk")
    assert script_of("か") == ("CJK", "fonts-noto-cjk") and script_of("한") == ("CJK", "fonts-noto-cjk")
    assert script_of("🤖") == ("emoji", "fonts-symbola")
    assert script_of("ध") == ("Devanagari", "fonts-noto-core")
    assert script_of("ا") == ("Arabic", "fonts-noto-core") and script_of("ש") == ("Hebrew", "fonts-noto-core")


def test_notice_names_each_script_once(without, fresh_notices):
    without("ध्यान🤖")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = readable_text(["ध्यान", "🤖"])
        readable_text(["##ध"])  # a script already named: no second notice
    assert first.texts == ["U+0927 U+094D U+092F U+093E U+0928", "U+1F916"]
    notices = [str(w.message) for w in caught if w.category is MissingFontWarning]
    assert len(notices) == 1
    assert "Devanagari" in notices[0] and "emoji" in notices[0]
    assert "fonts-noto-core" in notices[0] and "fonts-symbola" in notices[0]


@pytest.mark.skipif(not _installed("注"), reason="no CJK font installed (apt install fonts-noto-cjk)")
def test_a_title_quoting_a_cjk_token_draws_its_glyphs(fresh_notices, inspector):
    from hf_attn_inspect.views.measures import plot_measures

    result = inspector("the 日 and α", measures=["norm"])
    ax = plot_measures(result, "日", ["weights", "norm"])
    assert "'日'" in ax.get_title()
    families = ax.title.get_fontfamily()
    assert any(_has_glyph(f, "日") for f in families), families
    caught = _draw(ax.figure)
    assert _glyph_warnings(caught) == []
