"""One raw record (a dict from any reader) -> one validated :class:`Example`.

Format independent: the readers say where a record came from, this module says what is
wrong with it. A problem raises :class:`RecordError` with the message and the field; the
caller adds the file and line (``path:line: field 'name': what is wrong``).

Text fields (``instruction``, ``input``, ``output`` and chat ``content``) must be strings of
at most :data:`~mbdefense.data.limits.MAX_FIELD_CHARS` characters, without control
characters other than tab, newline and carriage return, and without lone surrogates (a
``\\udXXX`` JSON escape that is not half of a pair). Every string anywhere in the record is
checked for lone surrogates, and nesting is bounded by
:data:`~mbdefense.data.limits.MAX_DEPTH`.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

from mbdefense.data.example import Example
from mbdefense.data.limits import MAX_DEPTH, MAX_FIELD_CHARS, one_line, type_name

__all__ = ["RecordError", "to_example", "check_text", "check_nesting", "CHAT_ROLES"]

CHAT_ROLES = ("system", "user", "assistant")
_TEXT_FIELDS = ("instruction", "input", "output")
# Unicode category Cc except tab, newline and carriage return; and lone surrogates.
_BAD_CHAR = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class RecordError(Exception):
    """A record is invalid; the caller adds the file and line/row."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = None if field is None else one_line(field, 80)


def _bad_char_message(char: str, index: int) -> str:
    code = ord(char)
    if 0xD800 <= code <= 0xDFFF:
        return f"lone surrogate U+{code:04X} at character {index + 1} (not valid Unicode text)"
    return (f"control character U+{code:04X} at character {index + 1} (only tab, newline "
            f"and carriage return are allowed)")


def check_text(value: str, field: str) -> str:
    """Return ``value`` if it is acceptable text for ``field``, else raise RecordError."""
    if len(value) > MAX_FIELD_CHARS:
        raise RecordError(f"the text is {len(value):,} characters long; the limit is "
                          f"{MAX_FIELD_CHARS:,}", field)
    match = _BAD_CHAR.search(value)
    if match:
        raise RecordError(_bad_char_message(match.group(), match.start()), field)
    return value


def _check_surrogates(text: str, field: str | None) -> None:
    # Lone surrogates only come from "\\udXXX" JSON escapes; ASCII text cannot hold one.
    if not text.isascii():
        match = _SURROGATE.search(text)
        if match:
            raise RecordError(_bad_char_message(match.group(), match.start()), field)


def check_nesting(record: Any) -> None:
    """Bound the nesting of ``record`` and reject lone surrogates in any string in it."""
    if isinstance(record, str):
        _check_surrogates(record, None)
    if not isinstance(record, (dict, list, tuple)):
        return
    stack: list[tuple[Any, int, str | None]] = [(record, 1, None)]
    while stack:
        value, depth, top = stack.pop()
        if depth > MAX_DEPTH:
            raise RecordError(f"nested deeper than {MAX_DEPTH} levels", top)
        if isinstance(value, dict):
            for key, child in value.items():
                if isinstance(key, str) and not key.isascii() and _SURROGATE.search(key):
                    raise RecordError("a key holds a lone surrogate (not valid Unicode text)",
                                      top)
                where = str(key) if top is None else top
                if isinstance(child, str):
                    _check_surrogates(child, where)
                elif isinstance(child, (dict, list, tuple)):
                    stack.append((child, depth + 1, where))
        else:
            for child in value:
                if isinstance(child, str):
                    _check_surrogates(child, top)
                elif isinstance(child, (dict, list, tuple)):
                    stack.append((child, depth + 1, top))


def _is_finite_number(value: Any) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def _text(record: dict, key: str, *, required: bool, cell: bool) -> str:
    if key not in record:
        if required:
            raise RecordError("missing required field", key)
        return ""
    value = record[key]
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        hint = ""
        if _is_finite_number(value):
            hint = f' (write it as a string, e.g. "{one_line(value, 40)}")'
        raise RecordError(f"expected a string, got {type_name(value)}{hint}", key)
    if cell and required and not value.strip():
        raise RecordError("empty value in a required column", key)
    return check_text(value, key)


def _alpaca(record: dict, *, cell: bool, convert_numbers: bool) -> tuple[Example, bool]:
    instruction = _text(record, "instruction", required=True, cell=cell)
    text_input = _text(record, "input", required=False, cell=cell)
    converted = False
    output = record.get("output")
    if convert_numbers and "output" in record and _is_finite_number(output):
        record = dict(record, output=str(output))
        converted = True
    output = _text(record, "output", required=True, cell=cell)
    meta = {k: v for k, v in record.items() if k not in _TEXT_FIELDS}
    return Example(instruction=instruction, input=text_input, output=output,
                   meta=meta), converted


def _chat(record: dict) -> Example:
    messages = record["messages"]
    if not isinstance(messages, list):
        raise RecordError(f"expected a list of messages, got {type_name(messages)}",
                          "messages")
    if not messages:
        raise RecordError("the conversation is empty", "messages")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RecordError(f"expected an object, got {type_name(message)}", where)
        role = message.get("role")
        if role not in CHAT_ROLES:
            shown = one_line(repr(role), 40) if isinstance(role, str) else type_name(role)
            raise RecordError(f"role must be one of {', '.join(CHAT_ROLES)}; got {shown}",
                              f"{where}.role")
        content = message.get("content")
        if not isinstance(content, str):
            raise RecordError(f"expected a string, got {type_name(content)}",
                              f"{where}.content")
        check_text(content, f"{where}.content")
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise RecordError("the conversation has no assistant reply", "messages")
    if roles[-1] != "assistant":
        raise RecordError(
            f"the conversation must end with the assistant reply (the last message has "
            f"role '{roles[-1]}')", "messages")
    if len(roles) < 2 or roles[-2] != "user":
        raise RecordError("the final assistant reply must directly follow a user message",
                          "messages")
    start = 0
    meta: dict[str, Any] = {k: v for k, v in record.items() if k != "messages"}
    if roles[0] == "system":
        meta["system"] = messages[0]["content"]
        start = 1
    history = [dict(m) for m in messages[start:-2]]
    if history:
        meta["history"] = history
    return Example(instruction=messages[-2]["content"], input="",
                   output=messages[-1]["content"], meta=meta)


def to_example(record: Any, *, table: bool = False, csv_cells: bool = False,
               convert_numbers: bool = False) -> tuple[Example, bool]:
    """Validate ``record`` and return ``(example, converted)``.

    ``table``: the record is a row of a table (Parquet, ``datasets``), where a column holds
    null for a record that had no such key, so null extra columns are dropped.
    ``csv_cells``: the record is a CSV row (every value a string), where a blank
    ``instruction`` or ``output`` cell is an error. ``convert_numbers``: a finite int or float
    ``output`` becomes ``str(value)`` (``converted`` is then True) instead of an error.
    """
    if not isinstance(record, dict):
        raise RecordError(f"expected an object (a record), got {type_name(record)}")
    check_nesting(record)
    if table:
        record = {k: v for k, v in record.items() if v is not None or k in ("instruction",
                                                                             "output")}
    if record.get("messages") is not None:
        mixed = [k for k in _TEXT_FIELDS if record.get(k) is not None]
        if mixed:
            raise RecordError(
                f"a record is either chat ('messages') or Alpaca ('instruction'/'output'), "
                f"not both (also has '{mixed[0]}')", "messages")
        return _chat(record), False
    return _alpaca(record, cell=csv_cells, convert_numbers=convert_numbers)
