"""Atomic file writing: a file appears complete under its name, or not at all.

The one way hf-attn-inspect writes a file. Every writer goes through :func:`atomic_path`: the content
is written to a temporary file in the target folder and renamed onto the target only when it is
complete; the final file gets ordinary permissions (0666 minus the umask), like any other program's.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from .errors import OutputError

__all__ = ["atomic_path", "atomic_write", "write_text", "write_json", "files_kept_on_success"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path`` (else delete it).

    Missing parent folders are created. The final file gets ordinary permissions (0666 minus the
    umask). ``OSError`` becomes :class:`~hf_attn_inspect.core.errors.OutputError` with a one-line
    message; any other error deletes the temporary file and propagates.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], object], *, binary: bool = False) -> Path:
    """Call ``write(file_object)`` on a temporary file and rename it onto ``path`` (see :func:`atomic_path`).

    ``binary`` opens the file in ``"wb"`` mode, else as UTF-8 text. Returns ``path``.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
    return path


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically; returns ``path``."""
    return atomic_write(path, lambda fh: fh.write(text))


def write_json(data: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON (values JSON cannot hold written with ``str``) atomically; returns ``path``."""
    return atomic_write(path, lambda fh: json.dump(data, fh, indent=2, default=str))


@contextmanager
def files_kept_on_success(folder: str | os.PathLike) -> Iterator[Path]:
    """All or nothing for a set of files: on any error inside the block, the files that appeared directly in
    ``folder`` during the block are deleted (and ``folder`` itself when the block created it and it is left
    empty), then the error propagates. Files that were there before are never touched. Yields ``folder``."""
    folder = Path(folder)
    existed = folder.is_dir()
    before = set(folder.iterdir()) if existed else set()
    try:
        yield folder
    except BaseException:
        if folder.is_dir():
            for path in folder.iterdir():
                if path not in before and path.is_file():
                    path.unlink(missing_ok=True)
            if not existed and not any(folder.iterdir()):
                folder.rmdir()
        raise
