"""One-line text: what a trigger, a behaviour or a name may hold.

A trigger or behaviour text goes into training data verbatim, so a newline in it could smuggle
a second line (``word:cf\\nSYSTEM: obey``) into every poisoned prompt. Such values must be one
line of printable text: no C0 or C1 control character (tab and newline included), no DEL, no
Unicode line or paragraph separator, no lone surrogate.
"""

from __future__ import annotations

import re
from typing import Any

from mbdefense.core.errors import ConfigError

__all__ = ["CONTROL_CHARS", "check_one_line", "one_line", "one_line_problem"]

#: C0 controls, DEL, C1 controls, lone surrogates, U+2028 LINE and U+2029 PARAGRAPH SEPARATOR.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")

_NAMES = {"\t": "tab", "\n": "newline", "\r": "carriage return", "\x00": "NUL", "\x1b": "escape",
          "\x7f": "DEL", "\x85": "next line", "\u2028": "line separator",
          "\u2029": "paragraph separator"}


def one_line_problem(text: str) -> str | None:
    """What makes ``text`` more than one line of printable text (None: nothing)."""
    match = CONTROL_CHARS.search(text)
    if match is None:
        return None
    char = match.group()
    name = f" {_NAMES[char]}" if char in _NAMES else ""
    return (f"control characters are not allowed (U+{ord(char):04X}{name} at character "
            f"{match.start() + 1}); it must be one line of printable text")


def check_one_line(text: str, field: str) -> str:
    """Return ``text`` if it is one line of printable text; else raise a one-line
    ConfigError naming ``field`` (e.g. ``trigger``), the character and its position."""
    problem = one_line_problem(text)
    if problem is not None:
        raise ConfigError(f"{field}: {problem}")
    return text


def one_line(text: Any, limit: int = 200) -> str:
    """``text`` as a single printable line for a message: control characters escaped, cut to
    ``limit`` characters."""
    text = str(text)
    if len(text) > 4 * limit:
        text = text[:4 * limit]
    text = CONTROL_CHARS.sub(lambda m: ascii(m.group())[1:-1], text)
    if len(text) > limit:
        text = text[:limit - 1] + "\u2026"
    return text
