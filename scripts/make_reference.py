#!/usr/bin/env python
"""Write the API reference: one page per public module of the package, and its part of mkdocs.yml's nav.

Each module ``hf_attn_inspect.a.b`` gets ``docs/reference/a.b.md`` with a mkdocstrings ``:::`` block (a
package's page shows its docstring and links to its modules; their members are documented on the modules'
own pages, so no name has two pages). The nav between the ``# reference: begin`` / ``# reference: end``
lines of mkdocs.yml lists the pages by layer, lowest first. A public module is every ``.py`` file of the
package whose name does not start with ``_`` (packages count by their ``__init__.py``).

Run after adding or removing a module: ``python scripts/make_reference.py``; ``--check`` changes nothing and
exits 1 when a page or the nav is missing or stale (tests/test_docs.py runs it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "hf_attn_inspect"
REFERENCE = ROOT / "docs" / "reference"
MKDOCS = ROOT / "mkdocs.yml"
BEGIN, END = "# reference: begin", "# reference: end"
#: The package's layers, lowest first (pyproject.toml's import-linter contract), then the top level.
LAYERS = ("core", "capture", "stats", "runs", "checks", "views", "commands", "cli")


def public_modules() -> list[str]:
    """Dotted names of the package's public modules and packages, sorted."""
    names = []
    for path in (ROOT / PACKAGE).rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        elif parts[-1].startswith("_"):
            continue
        if any(p.startswith("_") for p in parts[1:]):
            continue
        names.append(".".join(parts))
    return sorted(names)


def page_name(module: str) -> str:
    """``hf_attn_inspect.capture.inspector`` -> ``capture.inspector.md``; the package itself -> ``hf_attn_inspect.md``."""
    return (module.partition(".")[2] or module) + ".md"


def page_text(module: str, modules: list[str]) -> str:
    """The Markdown of ``module``'s reference page."""
    children = [m for m in modules if m.rpartition(".")[0] == module]
    lines = [f"# `{module}`", "", f"::: {module}"]
    if children:  # a package: its docstring here, its modules on their own pages
        lines += ["    options:", "      members: false", "", "Modules:", ""]
        lines += [f"- [`{c}`]({page_name(c)})" for c in children]
    return "\n".join(lines) + "\n"


def nav_block(modules: list[str]) -> str:
    """The nav lines of the reference section (indented for mkdocs.yml's ``nav:``, under ``API reference``)."""
    lines = ["      - reference/index.md", f"      - {PACKAGE}: reference/{page_name(PACKAGE)}"]
    for layer in LAYERS:
        group = [m for m in modules if m == f"{PACKAGE}.{layer}" or m.startswith(f"{PACKAGE}.{layer}.")]
        if len(group) == 1:
            lines.append(f"      - {layer}: reference/{page_name(group[0])}")
            continue
        lines.append(f"      - {layer}:")
        lines += [f"          - {m.partition('.')[2]}: reference/{page_name(m)}" for m in group]
    return "\n".join(lines) + "\n"


def with_nav(text: str, block: str) -> str:
    """mkdocs.yml's text with the lines between the two markers replaced by ``block``."""
    head, sep, rest = text.partition(BEGIN + "\n")
    old, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"mkdocs.yml needs the lines {BEGIN!r} and {END!r} around the reference nav")
    return head + sep + block + old.rsplit("\n", 1)[-1] + END + tail  # the end marker keeps its indentation


def planned() -> dict[Path, str]:
    """Every file this script writes, with its text."""
    modules = public_modules()
    files = {REFERENCE / page_name(m): page_text(m, modules) for m in modules}
    files[MKDOCS] = with_nav(MKDOCS.read_text(encoding="utf-8"), nav_block(modules))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when anything is stale")
    args = parser.parse_args(argv)
    files = planned()
    stale = [p for p, text in files.items() if not p.is_file() or p.read_text(encoding="utf-8") != text]
    keep = set(files) | {REFERENCE / "index.md"}
    extra = [p for p in REFERENCE.glob("*.md") if p not in keep]
    if args.check:
        for p in stale:
            print(f"stale: {p.relative_to(ROOT)}")
        for p in extra:
            print(f"no such module: {p.relative_to(ROOT)}")
        return 1 if stale or extra else 0
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(files[p], encoding="utf-8")
        print(f"wrote {p.relative_to(ROOT)}")
    for p in extra:
        p.unlink()
        print(f"removed {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
