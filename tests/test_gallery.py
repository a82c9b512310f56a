"""scripts/make_gallery.py --quick: the documentation's pictures are real PNGs of the expected size and not blank."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_gallery.py"


def load_script():
    spec = importlib.util.spec_from_file_location("make_gallery", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shrink_keeps_aspect_and_crops_the_margin(tmp_path):
    from PIL import Image

    gallery = load_script()
    im = Image.new("RGB", (2000, 1000), "white")
    im.paste((200, 30, 30), (500, 250, 1500, 750))  # a 1000 x 500 red block in a white margin
    im.save(tmp_path / "big.png")
    out = gallery.shrink(tmp_path / "big.png", tmp_path / "small.png", width=508)
    with Image.open(out) as small:
        assert small.format == "PNG" and small.mode == "P"
        # cropped to the block plus 8 px on each side (1016 x 516), then scaled to 508 wide: 258 high
        assert small.size == (508, 258)
        assert small.convert("RGB").getpixel((254, 129)) == (200, 30, 30)


def test_every_picture_is_in_the_docs_and_the_gallery():
    gallery = load_script()
    images = Path(__file__).resolve().parents[1] / "docs" / "images"
    page = (images.parent / "gallery.md").read_text(encoding="utf-8")
    for name in gallery.ALL:
        assert (images / name).is_file(), f"run scripts/make_gallery.py: docs/images/{name} is missing"
        assert f"(images/{name})" in page, f"docs/gallery.md does not show {name}"


@pytest.mark.heavy
def test_quick_gallery_makes_valid_small_pngs(tmp_path):
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    pytest.importorskip("playwright.sync_api")
    from PIL import Image

    gallery = load_script()
    written = gallery.make_gallery(tmp_path, quick=True, width=600)
    assert sorted(p.name for p in written) == sorted(gallery.QUICK)
    assert set(gallery.QUICK) <= set(gallery.ALL)
    for path in written:
        with Image.open(path) as im:
            im.verify()  # a complete, uncorrupted PNG
        with Image.open(path) as im:
            assert im.format == "PNG"
            assert im.width == 600  # every source is wider than 600 px, so each is scaled to exactly that
            assert 250 <= im.height <= 900, (path.name, im.size)
            colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
            assert colours is None or len(colours) > 32, f"{path.name} looks blank"
        assert path.stat().st_size < 150_000, (path.name, path.stat().st_size)
