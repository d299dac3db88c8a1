"""Output paths checked before any long work: a user's files are never deleted or overwritten.

An output folder may be new, empty, or an earlier output of the same command (it holds that
command's marker file, e.g. ``results.json`` or ``defense.json``); anything else is refused
unless the user passes ``--force``, and even then only the command's own files are replaced.
Outputs never equal or contain the inputs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

from mbdefense.core.errors import ConfigError


def check_output_dir(out: str | Path, *, command: str, marker: str | tuple[str, ...],
                     inputs: Iterable[str | Path] = (), force: bool = False) -> Path:
    """Raise ConfigError (one line) unless ``out`` can take ``command``'s outputs (nothing is
    created here)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    resolved = out.resolve()
    for item in inputs:
        path = Path(item).resolve()
        if path == resolved or resolved in path.parents:
            raise ConfigError(f"--out {out}: holds the input {item}; choose another folder")
    markers = (marker,) if isinstance(marker, str) else marker
    ours = any((out / m).exists() for m in markers)
    if out.is_dir() and any(out.iterdir()) and not ours and not force:
        raise ConfigError(f"--out {out}: not empty and not an earlier output of mbdefense "
                          f"{command} (no {' or '.join(markers)}); choose another folder, or "
                          f"pass --force to "
                          f"write {command}'s files into it (nothing else is touched)")
    _check_writable(out, f"--out {out}")
    return out


def _check_writable(path: Path, what: str) -> None:
    """``path`` (or, when it does not exist yet, its nearest existing folder) takes new files;
    nothing is created."""
    folder = path
    while not folder.exists():
        if folder.parent == folder:
            break
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{what}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot write in {folder} ({exc.strerror or exc})") from None


def check_output_file(out: str | Path, *, inputs: Iterable[str | Path] = ()) -> Path:
    """An output file must not be an input, nor an existing folder, and its folder must be
    writable."""
    out = Path(out)
    for item in inputs:
        if Path(item).exists() and out.exists() and os.path.samefile(item, out):
            raise ConfigError(f"--out {out}: is the input file; write to another file")
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; give a file name")
    _check_writable(out.parent, f"--out {out}")
    return out


def check_cache_dir(cache: str | Path | None, flag: str = "--cache-dir") -> None:
    """A stage cache folder (shared, so it may hold anything) must be a folder, or creatable,
    and writable; checked before any work."""
    if cache is None:
        return
    cache = Path(cache)
    if cache.exists() and not cache.is_dir():
        raise ConfigError(f"{flag} {cache}: exists and is not a folder")
    _check_writable(cache, f"{flag} {cache}")
