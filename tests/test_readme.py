"""Every ```python block of README.md runs as written, in order, in one namespace (the embedded model, offline).

Generic on purpose: a block added to the README is executed too, so the README cannot rot. Blocks run in
a temporary working directory; the explorer's ``show()`` outside a notebook would open a web browser,
which is replaced by a stub that records the page it was given.
"""

from __future__ import annotations

import re
import webbrowser
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


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


def test_no_resume_example_follows_a_run_into_the_same_folder():
    """A ``--resume`` command line of a ```bash block does not follow a command that finishes a run into
    the same ``--out`` (it would answer "holds a finished run"): the README's examples run as written."""
    text = README.read_text(encoding="utf-8")
    checked = 0
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        earlier: set[str] = set()
        for line in block.splitlines():
            line = line.split("#", 1)[0]
            m = re.search(r"--out\s+(\S+)", line)
            if not line.startswith("hf-attn-inspect") or m is None:
                continue
            if "--resume" in line.split():
                checked += 1
                assert m.group(1) not in earlier, line
            earlier.add(m.group(1))
    assert checked >= 1
