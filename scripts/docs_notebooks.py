#!/usr/bin/env python
"""Execute the tutorial notebooks into docs/notebooks/ so the documentation site shows their outputs.

The notebooks in ``notebooks/`` are stored without outputs (the tests check that and run them). This
module is an MkDocs hook (``hooks:`` in mkdocs.yml): before each build collects its pages it executes every
notebook offline with nbclient, each in a fresh kernel and an empty temporary working directory, and
writes the executed copy to ``docs/notebooks/`` (ignored by git), where mkdocs-jupyter renders it with
its figures. A copy whose source is unchanged (the SHA-256 of the notebook file, stored in the copy's
metadata) is kept, so ``mkdocs serve`` and a second build do not run them again. A cell that raises fails
the build with the notebook's name and the error.

Run alone: ``python scripts/docs_notebooks.py [--force]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "notebooks"
TARGET = ROOT / "docs" / "notebooks"
KEY = "hf_attn_inspect_docs"
#: Run before a notebook's own cells and removed afterwards: a figure that a cell returns is rendered as a
#: PNG even where the notebook switches matplotlib to its Agg backend (as the tests' notebooks do).
FIRST_CELL = "from matplotlib_inline.backend_inline import set_matplotlib_formats\nset_matplotlib_formats('png')\n"


def source_hash(path: Path) -> str:
    """SHA-256 of a notebook file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_current(source: Path, target: Path) -> bool:
    """Whether ``target`` is an executed copy of ``source`` as it is now."""
    import nbformat

    if not target.is_file():
        return False
    try:
        meta = nbformat.read(target, as_version=4).metadata.get(KEY, {})
    except Exception:  # an unreadable copy is simply made again
        return False
    return meta.get("source_sha256") == source_hash(source)


def execute(source: Path, target: Path, timeout: int = 900) -> None:
    """Execute ``source`` in a fresh python3 kernel in an empty directory and write it, outputs included, to ``target``."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(source, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(FIRST_CELL))
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # the kernel's inline backend draws the figures into the outputs
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the kernel starts with this process's environment
    try:
        with tempfile.TemporaryDirectory(prefix="docs-nb-") as cwd:
            client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": cwd}})
            try:
                client.execute()
            except CellExecutionError as exc:
                raise SystemExit(f"notebook {source.name} failed while building the docs:\n{exc}") from None
    finally:
        os.environ.clear()
        os.environ.update(saved)
    del nb.cells[0]
    for cell in nb.cells:  # number the notebook's own cells from 1 again
        if cell.cell_type == "code" and cell.execution_count:
            cell.execution_count -= 1
            for out in cell.outputs:
                if out.get("execution_count"):
                    out["execution_count"] -= 1
    nb.metadata[KEY] = {"source_sha256": source_hash(source)}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(target)


def build(force: bool = False) -> list[Path]:
    """Execute every notebook whose copy is missing or stale (all with ``force``); returns the copies made."""
    made = []
    sources = sorted(SOURCE.glob("*.ipynb"))
    for source in sources:
        target = TARGET / source.name
        if force or not is_current(source, target):
            print(f"executing {source.relative_to(ROOT)} for the docs", file=sys.stderr, flush=True)
            execute(source, target)
            made.append(target)
    names = {s.name for s in sources}
    for old in TARGET.glob("*.ipynb"):
        if old.name not in names:  # a notebook that was removed or renamed
            old.unlink()
    return made


def on_pre_build(config: Any, **kwargs: Any) -> None:
    """MkDocs hook: the executed notebooks are in docs/notebooks/ before the build collects its files."""
    build()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="execute every notebook even if its copy is current")
    build(parser.parse_args(argv).force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
