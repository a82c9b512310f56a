#!/usr/bin/env python
"""Make the documentation's pictures: one small PNG per view and report, offline, on the embedded model.

Every picture comes from the real program: the commands are run in-process through ``cli.main`` (``inspect``,
``view``, ``batch``, ``importance``, ``long``) or through the Python API (``compare_models`` +
``write_comparison``, with a copy of the embedded all-MiniLM-L6-v2 whose layer-3 queries are doubled standing
in for a fine-tuned checkpoint). The explorer is screenshotted per view in headless Debian Chromium with the
explorer tests' launch settings. Each figure is shrunk to at most ``--width`` pixels and stored as a
palette PNG in ``--out`` (default ``docs/images``), so a picture is tens of kilobytes.

Run: ``PYTHONPATH=$PWD python scripts/make_gallery.py`` (about a minute on 2 cores); ``--quick`` makes only
the head heatmap and the explorer's head view (the test suite runs it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHROMIUM = "/usr/bin/chromium"
#: The explorer tests' launch arguments (tests/test_explorer.py): no sandbox, no GPU, no network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
TEXT = "The cat sat on the mat because it was tired."
PAIR = "It slept there all afternoon."
#: What ``--quick`` makes (the test checks these).
QUICK = ("head_heatmap.png", "explorer_head.png")
#: Every picture of a full run, in the order the gallery page shows them.
ALL = ("head_heatmap.png", "layer_heads.png", "model_view.png", "explorer_head.png", "explorer_matrix.png",
       "explorer_model.png", "explorer_metrics.png", "dataset_classes.png", "dataset_entropy.png",
       "compare_divergence.png", "compare_head_diffs.png", "importance_map.png", "pruning_curve.png",
       "long_sinks.png", "long_distance.png")


def shrink(src: Path, dst: Path, width: int) -> Path:
    """Copy the PNG ``src`` to ``dst`` at most ``width`` pixels wide, as an optimised 256-colour palette PNG."""
    from PIL import Image, ImageChops

    with Image.open(src) as im:
        im = im.convert("RGB")
        # crop the empty margin of page screenshots (and of figures): keep what differs from the corner colour
        box = ImageChops.difference(im, Image.new("RGB", im.size, im.getpixel((im.width - 1, im.height - 1)))).getbbox()
        if box:
            pad = 8
            im = im.crop((max(box[0] - pad, 0), max(box[1] - pad, 0), min(box[2] + pad, im.width),
                          min(box[3] + pad, im.height)))
        if im.width > width:
            im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
        im.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)
    return dst


def run_cli(*args: str) -> None:
    """Run one command of the program in-process; a non-zero exit code is an error."""
    from hf_attn_inspect.cli import main

    code = main(list(args))
    if code != 0:
        raise SystemExit(f"hf-attn-inspect {' '.join(args)} exited with {code}")


def inspect_images(work: Path, quick: bool) -> dict[str, Path]:
    """The ``inspect`` command's head heatmap, layer view and model view (layer 0, head 2: previous token)."""
    out = work / "inspect"
    run_cli("inspect", TEXT, "--layer", "0", "--head", "2", "--out", str(out))
    images = {"head_heatmap.png": out / "head_L0_H2.png"}
    if not quick:
        images |= {"layer_heads.png": out / "layer_0_heads.png", "model_view.png": out / "model_view.png"}
    return images


def explorer_images(work: Path, quick: bool) -> dict[str, Path]:
    """Screenshots of the explorer page (``view``), one per view: head, matrix, model and metrics."""
    from playwright.sync_api import sync_playwright

    page_path = work / "explorer.html"
    run_cli("view", TEXT, "--pair", PAIR, "-o", str(page_path))
    views = ("head",) if quick else ("head", "matrix", "model", "metrics")
    images = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 500})
            page.goto(page_path.resolve().as_uri())
            page.wait_for_selector("body[data-ready='1']", state="attached", timeout=30000)
            settle = lambda: page.wait_for_selector("body[data-rendering='0']", state="attached", timeout=30000)  # noqa: E731
            page.select_option("#layer", "1")  # layer 1: a next-token head (8) beside a [CLS]-column head (11)
            settle()
            for head, on in (("8", True), ("11", True), ("0", False)):
                page.locator(f"#heads input[data-head='{head}']").set_checked(on)
                settle()
            for view in views:
                page.click(f"#tabs button[data-view={view}]")
                settle()
                images[f"explorer_{view}.png"] = work / f"explorer_{view}.png"
                page.screenshot(path=str(images[f"explorer_{view}.png"]), full_page=True)
        finally:
            browser.close()
    return images


def dataset_images(work: Path, quick: bool) -> dict[str, Path]:
    """``batch`` on 64 sentences of the shipped sample: the pattern-class map and the entropy map."""
    out = work / "batch"
    run_cli("batch", "--limit", "64", "--out", str(out), "-q")
    figures = {p.name: p for p in (out / "figures").glob("*.png")}
    return {"dataset_classes.png": pick(figures, "class"), "dataset_entropy.png": pick(figures, "entropy")}


def comparison_images(work: Path, quick: bool) -> dict[str, Path]:
    """``compare`` of the embedded model and a copy with layer 3's queries doubled: divergence map, head diffs."""
    from hf_attn_inspect import compare_models
    from hf_attn_inspect.capture.inspector import resolve_inspector
    from hf_attn_inspect.views.comparison import write_comparison

    a, b = resolve_inspector(None), resolve_inspector(None)
    b.model.encoder.layer[3].attention.self.query.weight.data *= 2
    texts = [TEXT, PAIR, "Attention moved to other tokens.", "A short one."]
    df = compare_models(a, b, texts, out=work / "compare")
    write_comparison(work / "compare", df, a, b, top=3)
    return {"compare_divergence.png": work / "compare" / "divergence_map.png",
            "compare_head_diffs.png": work / "compare" / "head_diffs.png"}


def importance_images(work: Path, quick: bool) -> dict[str, Path]:
    """``importance`` (ablation) on 16 sample sentences: the importance map and the pruning curve."""
    out = work / "importance"
    run_cli("importance", "--limit", "16", "--prune-step", "0.2", "--out", str(out), "-q")
    return {"importance_map.png": out / "importance_map.png", "pruning_curve.png": out / "pruning_curve.png"}


def long_images(work: Path, quick: bool) -> dict[str, Path]:
    """``long`` on a document of about 470 tokens of sample sentences: first-token (sink) share and distance mass."""
    import csv

    import hf_attn_inspect

    sample = Path(hf_attn_inspect.__file__).parent / "data" / "sentences.csv"
    with sample.open(encoding="utf-8") as f:
        rows = [r["text"] for r in csv.DictReader(f)]
    doc = work / "document.txt"
    doc.write_text(" ".join(rows[:36]), encoding="utf-8")  # about 470 tokens
    out = work / "long"
    run_cli("long", str(doc), "--max-length", "512", "--out", str(out))
    return {"long_sinks.png": out / "sinks.png", "long_distance.png": out / "distance.png"}


def pick(files: dict[str, Path], word: str) -> Path:
    """The one file whose name contains ``word``."""
    hits = [p for name, p in sorted(files.items()) if word in name]
    if not hits:
        raise SystemExit(f"no figure named like {word!r} among {sorted(files)}")
    return hits[0]


#: The gallery's steps in order: each runs one command in a work folder and returns {picture name: its PNG}
#: (a new view adds its function here and its pictures to ALL and docs/gallery.md).
STEPS: tuple[Callable[[Path, bool], dict[str, Path]], ...] = (
    inspect_images, explorer_images, dataset_images, comparison_images, importance_images, long_images)
QUICK_STEPS = (inspect_images, explorer_images)


def make_gallery(out: Path, quick: bool = False, width: int = 900) -> list[Path]:
    """Make the gallery's PNGs in ``out`` (``QUICK`` with ``quick``, else ``ALL``); returns their paths."""
    steps = QUICK_STEPS if quick else STEPS
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="gallery-") as tmp:
        for step in steps:
            for name, src in step(Path(tmp), quick).items():
                written.append(shrink(src, out / name, width))
                print(f"wrote {out / name} ({written[-1].stat().st_size // 1024} KiB)")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "images")
    parser.add_argument("--quick", action="store_true", help="only the head heatmap and the explorer's head view")
    parser.add_argument("--width", type=int, default=900, help="largest width of a picture in pixels")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"error: the explorer screenshots need Debian chromium at {CHROMIUM}", file=sys.stderr)
        return 2
    make_gallery(args.out, args.quick, args.width)
    return 0


if __name__ == "__main__":
    sys.exit(main())
