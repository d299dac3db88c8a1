"""Errors that the command line reports as one clear line (no traceback)."""

from __future__ import annotations


class MBDefenseError(Exception):
    """Base class for user-facing errors: bad input, bad config, unknown names."""


class DataError(MBDefenseError):
    """A data file (or record) is malformed.

    The message names the file, the line (when known) and the field at fault, e.g.
    ``data.jsonl:3: field 'output': expected a string, got int``.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.path, self.line, self.field, self.reason = path, line, field, message
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        what = f"field '{field}': " if field is not None else ""
        super().__init__(f"{where}{what}{message}")


class ConfigError(MBDefenseError):
    """A configuration value or a registry name is invalid."""
