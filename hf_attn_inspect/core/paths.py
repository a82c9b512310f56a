"""Paths a user names: a model (local directory or Hub name) and input files that must be UTF-8 text,
checked without importing torch, transformers or datasets (so the command line refuses them at once)."""

from __future__ import annotations

import os

from .errors import InputError, ModelLoadError

__all__ = ["check_utf8", "local_or_hub"]


def local_or_hub(name: str) -> str:
    """``name`` with ``~`` expanded when it is an existing local path; a name written as a path (absolute,
    ``./``, ``../``, ``~``, or with two or more ``/``) that does not exist raises :class:`ModelLoadError`;
    anything else is returned as a Hub name."""
    local = os.path.expanduser(name)
    if os.path.exists(local):
        return local
    if os.path.isabs(local) or name.startswith(("./", "../", "~", ".\\", "..\\")) or name in (".", "..") \
            or name.count("/") >= 2:
        raise ModelLoadError(
            f"model directory '{name}' does not exist; give an existing local model directory, a Hub name "
            "(org/name), or leave out --model to use the embedded default (all-MiniLM-L6-v2)"
        )
    return name


def check_utf8(path: str | os.PathLike, what: str = "text file") -> None:
    """Raise :class:`InputError` ``"<what> '<path>' is not UTF-8 text (byte N); convert it to UTF-8 first"``
    when the file does not decode as UTF-8 (read in 1 MiB chunks, to its end); a file that cannot be read
    is left to the reader to report."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    done = 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                decoder.decode(chunk)
                done += len(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} '{os.fspath(path)}' is not UTF-8 text (byte {done + exc.start:,}); "
                         "convert it to UTF-8 first") from None
    except OSError:
        return
