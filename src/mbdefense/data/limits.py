"""Bounds on what the data readers accept, and helpers for one-line error text.

The bounds keep a hostile or broken file from taking unbounded memory or time: a reader
never holds more than one record's text (plus one read chunk) at a time, and stops as soon
as a record, a line or a nesting level goes past its bound.
"""

from __future__ import annotations

import math
from typing import Any

from mbdefense.core.text import one_line

__all__ = ["MAX_FIELD_CHARS", "MAX_RECORD_CHARS", "MAX_DEPTH", "one_line", "type_name"]

#: Characters allowed in one text field (``instruction``, ``input``, ``output``, a chat
#: message's ``content``).
MAX_FIELD_CHARS = 1_000_000
#: Characters allowed in one record's raw text: a JSON array element, a CSV row; for a JSONL
#: (or CSV) line it is a number of bytes.
MAX_RECORD_CHARS = 8_000_000
#: Nesting levels allowed in one record (the record object itself is level 1).
MAX_DEPTH = 100

def type_name(value: Any) -> str:
    """The JSON-ish name of ``value``'s type, as error messages say it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            return "NaN"
        return "Infinity" if value > 0 else "-Infinity"
    return type(value).__name__
