"""Atomic file writing: a file appears complete under its name, or not at all.

The one way hf-attn-inspect writes a file. Every writer goes through :func:`atomic_path`: the content
is written to a temporary file in the target folder and renamed onto the target only when it is
complete; the final file gets ordinary permissions (0666 minus the umask), like any other program's.
Folders are created by the first file written into them, never earlier, so a run that fails before
writing leaves nothing behind.

The command line never replaces a file that it did not write itself: :func:`check_output_dir` proves a
folder can be written without creating it, :func:`check_replaceable` refuses an existing file unless an
earlier run of ours wrote it (or ``--overwrite`` is given), and :func:`record_outputs` notes the files a
command is about to write in the folder's record (``.hf-attn-inspect.json``).
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

from .errors import OutputError

__all__ = [
    "RECORD_NAME",
    "atomic_path",
    "atomic_write",
    "check_output_dir",
    "check_replaceable",
    "files_kept_on_success",
    "record_outputs",
    "recorded_outputs",
    "write_json",
    "write_text",
]

#: The record, in an output folder, of the files our commands wrote there (``{"files": [...]}``, paths
#: relative to the folder); a file listed there may be replaced by a later run.
RECORD_NAME = ".hf-attn-inspect.json"


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


def check_output_dir(path: str | os.PathLike) -> Path:
    """Check, creating nothing, that ``path`` is a folder that exists or could be created, and is writable.

    Walks up to the nearest existing ancestor: it must be a directory the process may write to. Raises
    :class:`~hf_attn_inspect.core.errors.OutputError` with a one-line message otherwise; returns ``path``
    (``~`` expanded).
    """
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputError(f"cannot write to output directory {out}: it is a file, not a directory; give a directory")
    base = out
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise OutputError(f"cannot write to output directory {out}: {base} is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to output directory {out}: permission denied on {base}")
    return out


def recorded_outputs(folder: str | os.PathLike) -> set[str]:
    """The files (relative paths) that the record in ``folder`` lists as written by our commands; empty
    when there is no readable record."""
    try:
        data = json.loads((Path(folder) / RECORD_NAME).read_text(encoding="utf-8"))
        return {str(f) for f in data.get("files", [])}
    except (OSError, ValueError, AttributeError):
        return set()


def check_replaceable(
    folder: str | os.PathLike, names: Iterable[str], *, overwrite: bool = False, owned: Iterable[str] = ()
) -> None:
    """Refuse to replace a file that an earlier run of ours did not write.

    ``names`` are the files (relative to ``folder``) a command is going to write. The first of them that
    exists, is not listed in the folder's record (:func:`recorded_outputs`) and is not in ``owned``
    (files the caller knows are its own, e.g. those of a run described by its ``run.json``) raises
    :class:`~hf_attn_inspect.core.errors.OutputError` naming it, unless ``overwrite`` is true.
    """
    if overwrite:
        return
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        return
    ours = recorded_outputs(folder) | set(owned)
    for name in names:
        path = folder / name
        if name not in ours and (path.exists() or path.is_symlink()):
            raise OutputError(
                f"{path} exists and was not written by hf-attn-inspect; pass --overwrite to replace it "
                "or choose another output"
            )


def record_outputs(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Add ``names`` (files relative to ``folder``) to the folder's record of files our commands wrote,
    so a later run may replace them; creates the folder. Call it just before writing the files."""
    folder = Path(folder).expanduser()
    files = sorted(recorded_outputs(folder) | set(names))
    write_json({"written_by": "hf-attn-inspect", "files": files}, folder / RECORD_NAME)
