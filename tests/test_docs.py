"""The documentation site's sources: an API page per public module, a nav that lists every page, and the
executed-notebook cache of scripts/docs_notebooks.py. The build itself (`mkdocs build --strict`) runs in .ci/run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_module_has_a_current_reference_page(capsys):
    reference = load("make_reference")
    modules = reference.public_modules()
    assert "hf_attn_inspect.capture.inspector" in modules and "hf_attn_inspect.core.kernels" in modules
    assert not any(part.startswith("_") for m in modules for part in m.split("."))
    assert reference.main(["--check"]) == 0, capsys.readouterr().out  # run scripts/make_reference.py
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for m in modules:
        page = ROOT / "docs" / "reference" / reference.page_name(m)
        assert f"::: {m}\n" in page.read_text(encoding="utf-8")
        assert f": reference/{page.name}\n" in nav


def test_reference_nav_is_rewritten_between_its_markers():
    reference = load("make_reference")
    text = "nav:\n  - API reference:\n    # reference: begin\n      - old.md\n    # reference: end\nplugins: []\n"
    out = reference.with_nav(text, "      - new.md\n")
    assert out == "nav:\n  - API reference:\n    # reference: begin\n      - new.md\n    # reference: end\nplugins: []\n"


def test_every_page_and_notebook_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in (ROOT / "docs").glob("*.md"):
        assert f" {page.name}\n" in nav, page.name
    for page in (ROOT / "docs" / "guides").glob("*.md"):
        assert f": guides/{page.name}\n" in nav, page.name
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        assert f"- notebooks/{notebook.name}\n" in nav, notebook.name


def test_an_executed_notebook_is_reused_until_its_source_changes(tmp_path):
    hook = load("docs_notebooks")
    source, target = tmp_path / "a.ipynb", tmp_path / "out" / "a.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")]), source)
    assert not hook.is_current(source, target)
    hook.execute(source, target, timeout=120)
    executed = nbformat.read(target, as_version=4)
    assert executed.cells[0].outputs[0]["data"]["text/plain"] == "2"
    assert hook.is_current(source, target)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("2 + 2")]), source)
    assert not hook.is_current(source, target)


def test_sphinx_roles_become_plain_code():
    roles = load("docs_roles")
    html = ('returns an :class:<code>AttentionResult</code>; see :func:<code>~hf_attn_inspect.stats.metrics.reduce_rows</code>'
            ' and <code>:class:</code>')
    assert roles.strip_roles(html) == ('returns an <code>AttentionResult</code>; see <code>reduce_rows</code>'
                                       ' and <code>:class:</code>')
