"""Every ```python block of README.md runs as written, in order, in one namespace (the embedded model, offline).

Generic on purpose: a block added to the README is executed too, so the README cannot rot. Blocks run in
a temporary working directory; the explorer's ``show()`` outside a notebook would open a web browser,
which is replaced by a stub that records the page it was given. The documentation pages (docs/**/*.md)
are held to the same rule, page by page (each page's blocks in order, in one namespace of their own).
The README is the landing page: at most about 250 lines, pictures that exist, an example of every command.
"""

from __future__ import annotations

import re
import webbrowser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: Documentation pages with Python blocks (the generated reference pages have none).
DOC_PAGES = sorted(p for p in (ROOT / "docs").rglob("*.md") if "```python" in p.read_text(encoding="utf-8"))


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The ```python blocks of a Markdown text as (line number of the opening fence, code)."""
    blocks = []
    for m in re.finditer(r"^```python[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
        blocks.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    return blocks


def test_python_blocks_are_found():
    blocks = python_blocks("x\n```python\na = 1\n```\ntext\n```bash\nls\n```\n```python\nb = a\n```\n")
    assert blocks == [(2, "a = 1\n"), (9, "b = a\n")]


@pytest.mark.heavy
def test_every_python_block_of_the_readme_runs(tmp_path, monkeypatch):
    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url, *a, **k: opened.append(url) or True)
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 6
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for line, code in blocks:
        try:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
        except Exception as exc:  # name the block that failed
            raise AssertionError(f"README.md block at line {line} fails: {type(exc).__name__}: {exc}") from exc
    # what the blocks promise, checked where it is cheap
    assert namespace["result"].attentions.shape == (6, 12, 9, 9)
    assert Path("attention.html").read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")
    assert opened, "result.show() outside a notebook opens the page in a browser"
    assert (tmp_path / "cmp" / "divergence_map.png").is_file() and (tmp_path / "runs/sample/report.md").is_file()


def run_blocks(path: Path, namespace: dict[str, object]) -> None:
    """Execute every ```python block of ``path`` in order in ``namespace``; a failure names the block's line."""
    name = path.relative_to(ROOT)
    for line, code in python_blocks(path.read_text(encoding="utf-8")):
        try:
            exec(compile(code, f"{name}:{line}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"{name} block at line {line} fails: {type(exc).__name__}: {exc}") from exc


def test_the_docs_have_python_blocks():
    names = {p.relative_to(ROOT).as_posix() for p in DOC_PAGES}
    assert {"docs/guides/inspect.md", "docs/guides/long.md", "docs/guides/importance.md"} <= names


@pytest.mark.heavy
@pytest.mark.parametrize("page", DOC_PAGES, ids=[p.relative_to(ROOT).as_posix() for p in DOC_PAGES])
def test_every_python_block_of_the_docs_runs(page, tmp_path, monkeypatch):
    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url, *a, **k: opened.append(url) or True)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    run_blocks(page, namespace)


def test_readme_is_a_landing_page():
    from hf_attn_inspect.cli import build_parser

    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    images = re.findall(r'<img src="([^"]+)"|!\[[^\]]*\]\(([^)]+)\)', text)
    paths = [a or b for a, b in images]
    assert len(set(paths)) >= 6
    for path in paths:
        assert (ROOT / path).is_file(), f"README shows a missing picture: {path}"
    commands = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for command in commands:
        assert re.search(rf"^ *(?:torchrun .*-m hf_attn_inspect|hf-attn-inspect) {command}\b", text, re.M), (
            f"README has no example of `hf-attn-inspect {command}`")
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).exists(), f"README links to a missing page: {link}"
def test_no_resume_example_follows_a_run_into_the_same_folder():
    """A ``--resume`` command line of a ```bash block (README and docs pages) does not follow a command that
    finishes a run into the same ``--out`` (it would answer "holds a finished run"): examples run as written."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in [README, *sorted((ROOT / "docs").rglob("*.md"))])
    checked = 0
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        earlier: set[str] = set()
        for raw in block.splitlines():
            line, _, comment = raw.partition("#")
            m = re.search(r"--out\s+(\S+)", line)
            if not line.startswith("hf-attn-inspect") or m is None:
                continue
            if "--resume" in line.split():
                checked += 1
                assert m.group(1) not in earlier, line
            if not re.search(r"ctrl-c|interrupt", comment, re.I):  # a run shown stopped may be resumed
                earlier.add(m.group(1))
    assert checked >= 1
