"""Fonts for every script: which installed font draws each character of a figure's labels.

matplotlib draws a text with the fonts of its family list, glyph by glyph: a character the first font lacks
comes from the next one that has it. :func:`readable_text` builds that list for a figure's labels from
the fonts installed on the machine (the default font first, then, greedily, the font that covers most of
the remaining characters, preferring Noto Sans), and writes each character no installed font covers as
its code point (``U+6CE8``) instead of letting it become a box. It then warns once per process and
script (:class:`MissingFontWarning`; the command line prints it as one ``warning:`` line) naming the
Debian package that adds a font for it. Nothing here draws: the figure functions of
:mod:`hf_attn_inspect.views` pass their token labels through it before setting them
(``set_xticklabels(r.texts, **r.style())``; tick label artists are rebuilt at draw time, so the text must be
right when it is set).
"""

from __future__ import annotations

import unicodedata
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

__all__ = ["InstalledFont", "MissingFontWarning", "ReadableText", "installed_fonts", "readable_text", "script_of"]


class MissingFontWarning(UserWarning):
    """No installed font draws some characters of a figure; they show as code points (``U+6CE8``)."""


class InstalledFont(NamedTuple):
    """One installed font face: its family name as matplotlib knows it, its file, the face's index in a
    collection (``.ttc``), and the Unicode code points its character map covers."""

    family: str
    path: str
    index: int
    codes: frozenset[int]


class ReadableText(NamedTuple):
    """Texts ready to draw: ``texts`` with uncovered characters written as code points, and the font
    ``family`` list to draw them with (None: the default fonts draw every character)."""

    texts: list[str]
    family: list[str] | None

    def style(self) -> dict[str, list[str]]:
        """Keyword arguments for matplotlib's text functions (``set_xticklabels(texts, **style())``): the
        ``fontfamily`` list, or nothing when the default fonts draw every character."""
        return {} if self.family is None else {"fontfamily": self.family}


#: (first, last) code point ranges of the CJK scripts (Han, kana, Hangul, CJK symbols and full-width forms).
_CJK = ((0x1100, 0x11FF), (0x2E80, 0x2FDF), (0x2FF0, 0x31FF), (0x3200, 0x4DBF), (0x4E00, 0x9FFF),
        (0xA960, 0xA97F), (0xAC00, 0xD7FF), (0xF900, 0xFAFF), (0xFE30, 0xFE4F), (0xFF00, 0xFFEF),
        (0x20000, 0x3FFFF))
#: Emoji and pictographic symbols.
_EMOJI = ((0x2300, 0x23FF), (0x2600, 0x27BF), (0x2B00, 0x2BFF), (0x1F000, 0x1FAFF))
#: Preferred CJK regional variant when several cover the same characters (simplified Chinese glyph shapes first).
_CJK_ORDER = ("SC", "TC", "JP", "KR", "HK")
#: Style names of a family's regular face, most regular first.
_REGULAR = ("Regular", "Book", "Normal", "Roman", "Medium")
#: Families never used for fallback: matplotlib's Last Resort font draws every character as a placeholder box.
_EXCLUDED = ("Last Resort",)

#: Scripts already named in a notice in this process (one notice per script per process).
_noticed: set[str] = set()


def script_of(char: str) -> tuple[str, str]:
    """The script of ``char`` as a notice names it, and the Debian package whose fonts draw it.

    CJK ideographs, kana and Hangul: ``fonts-noto-cjk``; emoji and pictographs: ``fonts-symbola`` (a
    monochrome font; matplotlib cannot draw colour emoji fonts); every other script (Arabic, Hebrew,
    Devanagari, Thai, ...) by the first word of its Unicode name: ``fonts-noto-core``.
    """
    code = ord(char)
    if any(lo <= code <= hi for lo, hi in _CJK):
        return "CJK", "fonts-noto-cjk"
    if any(lo <= code <= hi for lo, hi in _EMOJI):
        return "emoji", "fonts-symbola"
    name = unicodedata.name(char, "")
    return (name.split()[0].capitalize() if name else "unassigned"), "fonts-noto-core"


def _mpl_data_dir() -> str:
    import matplotlib

    return str(Path(matplotlib.get_data_path()).resolve())


def _faces(path: str) -> Iterable[tuple[int, object]]:
    """Each face of a font file (several in a ``.ttc`` collection) as ``(index, FT2Font)``."""
    from matplotlib import ft2font

    first = ft2font.FT2Font(path)
    yield 0, first
    for index in range(1, first.num_faces):
        yield index, ft2font.FT2Font(path, face_index=index)


def _rank(font: InstalledFont) -> tuple:
    """Order of preference among fonts that cover as many characters: sans, proportional, Noto, SC, short names."""
    name = font.family
    cjk = next((i for i, tag in enumerate(_CJK_ORDER) if name.endswith(" " + tag)), len(_CJK_ORDER))
    return ("Sans" not in name, "Mono" in name, not name.startswith("Noto"), cjk, " UI" in name, len(name), name)


@lru_cache(maxsize=1)
def installed_fonts() -> tuple[InstalledFont, ...]:
    """Every scalable font family installed on the machine (one regular face per family), best first.

    Scans the system's font folders (through fontconfig where present) and fonts added to matplotlib's
    font manager, so fonts installed after matplotlib built its font cache count too; matplotlib's own
    fonts (Computer Modern, STIX, Last Resort) are left out. Read once per process (about a second with
    the Noto fonts installed), and only when a label holds a character the default font lacks.
    """
    from matplotlib import font_manager as fm, ft2font

    data = _mpl_data_dir()
    paths = {str(Path(p).resolve()) for p in fm.findSystemFonts()}
    paths |= {str(Path(e.fname).resolve()) for e in fm.fontManager.ttflist}
    best: dict[str, tuple[tuple, str, int]] = {}  # FreeType family -> (how far from regular, path, face index)
    for path in sorted(p for p in paths if not p.startswith(data)):
        try:
            for index, face in _faces(path):
                style = face.style_name
                if not face.scalable:  # bitmap colour emoji: matplotlib cannot draw them
                    continue
                regular = _REGULAR.index(style) if style in _REGULAR else len(_REGULAR)
                fit = ("Italic" in style or "Oblique" in style, "Condensed" in style, regular, style)
                if face.family_name not in best or fit < best[face.family_name][0]:
                    best[face.family_name] = (fit, path, index)
        except (OSError, RuntimeError, ValueError):  # unreadable or unsupported font files
            continue
    fonts = []
    for _, path, index in best.values():
        face = ft2font.FT2Font(path, face_index=index)
        name = fm.ttfFontProperty(face).name  # the family name matplotlib's font manager uses
        if not any(name.startswith(x) for x in _EXCLUDED):
            fonts.append(InstalledFont(name, path, index, frozenset(face.get_charmap())))
    return tuple(sorted(fonts, key=_rank))


def _default_codes() -> frozenset[int]:
    """The code points the default fonts (``rcParams["font.family"]``) draw."""
    import matplotlib
    from matplotlib import font_manager as fm

    found = []
    for family in matplotlib.rcParams["font.family"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found.append(fm.findfont(fm.FontProperties(family=[family])))
    return _codes_of(tuple(str(getattr(p, "path", p)) + f"#{getattr(p, 'face_index', 0)}" for p in found))


@lru_cache(maxsize=8)
def _codes_of(keys: tuple[str, ...]) -> frozenset[int]:
    from matplotlib import ft2font

    codes: set[int] = set()
    for key in keys:
        path, _, index = key.rpartition("#")
        codes |= ft2font.FT2Font(path, face_index=int(index)).get_charmap().keys()
    return frozenset(codes)


def _fallbacks(needed: set[int]) -> tuple[list[InstalledFont], set[int]]:
    """Greedy cover of ``needed``: the font covering most of what is left (ties: :func:`_rank`), until none helps."""
    chosen: list[InstalledFont] = []
    todo = set(needed)
    fonts = list(installed_fonts())
    while todo and fonts:
        best = max(fonts, key=lambda f: len(todo & f.codes))  # max keeps the first (best-ranked) of equals
        gain = todo & best.codes
        if not gain:
            break
        chosen.append(best)
        todo -= gain
        fonts.remove(best)
    return chosen, todo


def _register(fonts: Sequence[InstalledFont]) -> None:
    """Make matplotlib's font manager know each family (it may not, when its cache predates the font)."""
    from matplotlib import font_manager as fm

    known = {e.name for e in fm.fontManager.ttflist}
    for font in fonts:
        if font.family not in known:
            fm.fontManager.addfont(font.path)
            known = {e.name for e in fm.fontManager.ttflist}


def _code_points(text: str, missing: set[int]) -> str:
    """``text`` with each character of ``missing`` written ``U+XXXX`` (a space between neighbouring codes);
    invisible format and control characters that no font has are dropped."""
    out: list[str] = []
    prev_code = False
    for ch in text:
        if ord(ch) not in missing:
            out.append(ch)
            prev_code = False
        elif unicodedata.category(ch) in ("Cf", "Cc"):
            continue
        else:
            out.append((" " if prev_code else "") + f"U+{ord(ch):04X}")
            prev_code = True
    return "".join(out)


def _notice(missing: set[int]) -> None:
    """Warn once per script (per process) about characters no installed font draws."""
    scripts: dict[str, tuple[str, list[int]]] = {}
    for code in sorted(missing):
        ch = chr(code)
        if unicodedata.category(ch) in ("Cf", "Cc"):
            continue
        script, package = script_of(ch)
        scripts.setdefault(script, (package, []))[1].append(code)
    new = {s: v for s, v in scripts.items() if s not in _noticed}
    if not new:
        return
    _noticed.update(new)
    names = " and ".join(f"{s} (e.g. {chr(codes[0])} U+{codes[0]:04X})" for s, (_, codes) in new.items())
    packages = " ".join(dict.fromkeys(p for p, _ in new.values()))
    warnings.warn(f"no installed font draws {names} characters: the figures show them as code points; "
                  f"install a font for them, e.g. 'apt install {packages}' (see docs/guides/fonts.md)",
                  MissingFontWarning, stacklevel=3)


def readable_text(texts: Sequence[str]) -> ReadableText:
    """``texts`` (e.g. a figure's token labels) made drawable with the installed fonts.

    Returns the texts, with every character that no installed font covers written as its code point
    (``"注意"`` becomes ``"U+6CE8 U+610F"``), and the font family list to draw them with: the default
    families of ``rcParams["font.family"]`` followed by the installed fonts that cover the other
    characters (:func:`installed_fonts`), or None when the default fonts cover everything (the
    texts and their drawing are then unchanged). Uncovered characters raise one
    :class:`MissingFontWarning` per script and process, naming the Debian package that adds a font.
    """
    import matplotlib

    texts = [str(t) for t in texts]
    needed = {ord(c) for t in texts for c in t if c != "\n"} - _default_codes()
    if not needed:
        return ReadableText(texts, None)
    fonts, missing = _fallbacks(needed)
    if missing:
        _notice(missing)
        texts = [_code_points(t, missing) for t in texts]
    if not fonts:
        return ReadableText(texts, None)
    _register(fonts)
    return ReadableText(texts, list(matplotlib.rcParams["font.family"]) + [f.family for f in fonts])
