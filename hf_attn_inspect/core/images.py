"""Image files: which paths are images, and a quick readability check before any model is loaded.

Imports only the standard library (and Pillow inside :func:`check_image_file`), so the command line can tell an
image argument from a text and refuse a missing or corrupt file in a fraction of a second.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError

__all__ = ["IMAGE_SUFFIXES", "check_image_file", "image_files", "is_image_file"]

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


def check_image_file(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`~pathlib.Path` once Pillow can read it as an image; a missing file or one that is no
    image raises :class:`InputError` in one line (nothing else is imported)."""
    p = Path(os.fspath(path)).expanduser()
    if not p.is_file():
        raise InputError(f"no image file at {p}")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read {p} as an image ({reason})") from None
    return p
