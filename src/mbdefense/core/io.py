"""Atomic file and directory writes: a reader never sees a half-written result."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterator


def _fresh_name(path: Path, suffix: str) -> Path:
    """An unused hidden sibling name of ``path``. Temporaries are named before they are made,
    so an interrupt (Ctrl-C, SIGTERM) at any moment after one exists lands in its cleanup."""
    while True:
        candidate = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
        if not candidate.exists():
            return candidate


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_name(path, ".tmp")
    try:
        with open(tmp, "x", encoding=encoding, newline="") as handle:   # the usual permissions
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it becomes ``path`` in one rename.

    An existing ``path`` is replaced only with ``replace=True`` (callers pass it for folders
    they wrote themselves); otherwise it is an error and ``path`` is left as it was. On error
    the temporary folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # named before it is made, so an interrupt (Ctrl-C, SIGTERM) at any point after the
    # folder exists lands in the cleanup below
    tmp = _fresh_name(path, ".tmp")
    try:
        tmp.mkdir()
        yield tmp
        if path.exists() or path.is_symlink():
            if not replace:
                raise FileExistsError(f"{path} already exists")
            old = _fresh_name(path, ".old")
            old.mkdir()
            os.replace(path, old / "entry")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types (anything else becomes its ``str``)."""
    return json.loads(json.dumps(obj, default=str))
