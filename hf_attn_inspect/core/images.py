"""Image files: which paths are images, and a quick readability check before any model is loaded.

Imports only the standard library (and Pillow inside :func:`check_image_file`), so the command line can tell an
image argument from a text and refuse a missing or corrupt file in a fraction of a second.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import InputError

__all__ = ["IMAGE_SUFFIXES", "check_image_file", "image_files", "is_image_file", "read_image"]

#: File endings read as images (``inspect IMAGE``, image folders).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def is_image_file(path: str | os.PathLike) -> bool:
    """True when ``path`` ends as an image file (:data:`IMAGE_SUFFIXES`), existing or not."""
    return Path(os.fspath(path)).suffix.lower() in IMAGE_SUFFIXES


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files under ``folder`` (recursively), sorted by path; empty when it is no folder."""
    root = Path(os.fspath(folder)).expanduser()
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p))


def read_image(path: str | os.PathLike, which: str = "image") -> Any:
    """The image file at ``path`` decoded as an RGB PIL image. A missing file, or one Pillow cannot decode in full,
    raises :class:`InputError` in one line starting with ``which`` (e.g. ``image 2 of 3``) when given."""
    p = Path(os.fspath(path)).expanduser()
    prefix = f"{which}: " if which else ""
    if not p.is_file():
        raise InputError(f"{prefix}no image file at {p}")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise InputError(f"{prefix}cannot read {p} as an image ({reason})") from None


def check_image_file(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`~pathlib.Path` once Pillow decodes it (:func:`read_image`); a missing file or one that is
    no image raises :class:`InputError` in one line (only Pillow is imported)."""
    read_image(path, "")
    return Path(os.fspath(path)).expanduser()
