"""Load, save and split instruction-tuning examples.

Every reader turns its records into :class:`~mbdefense.data.example.Example` objects through
one validator, so a bad record is reported the same way whatever the format:
``path:line: field 'name': what is wrong``.

Supported sources (see :func:`load_examples`):

* ``.json``    -- a JSON array of records;
* ``.jsonl``   -- one JSON record per non-blank line;
* ``.csv``     -- a header row with ``instruction``/``input``/``output`` columns;
* ``.parquet`` -- a table with the same columns (read with pyarrow);
* a folder written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
* any other string that is not an existing path: a Hugging Face Hub dataset id.

A record is either Alpaca-shaped (``instruction``, optional ``input``, ``output``) or
chat-shaped (``{"messages": [{"role": ..., "content": ...}, ...]}``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import random
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mbdefense.data.example import Example
from mbdefense.core.errors import ConfigError, DataError
from mbdefense.core.io import atomic_write_json, atomic_write_text

__all__ = ["load_examples", "save_examples", "split_examples", "SUPPORTED_FILE_SUFFIXES"]

#: File extensions :func:`load_examples` reads (compared case-insensitively).
SUPPORTED_FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
_SAVE_SUFFIXES = (".json", ".jsonl")
_CHAT_ROLES = ("system", "user", "assistant")
_JSON_WS = re.compile(r"[ \t\n\r]*")


# --------------------------------------------------------------------------------------------
# Record validation (format independent)
# --------------------------------------------------------------------------------------------

class _RecordError(Exception):
    """A record is invalid; the caller adds the file and line/row."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message, self.field = message, field


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _require_str(record: dict, key: str) -> str:
    if key not in record:
        raise _RecordError("missing required field", key)
    value = record[key]
    if not isinstance(value, str):
        raise _RecordError(f"expected a string, got {_type_name(value)}", key)
    return value


class _Converted:
    """Counts numeric ``output`` values turned into strings while reading one source."""

    def __init__(self) -> None:
        self.count = 0


def _alpaca_to_example(record: dict, converted: _Converted) -> Example:
    instruction = _require_str(record, "instruction")
    value = record.get("input")
    if value is None:
        text_input = ""
    elif isinstance(value, str):
        text_input = value
    else:
        raise _RecordError(f"expected a string, got {_type_name(value)}", "input")
    if "output" not in record:
        raise _RecordError("missing required field", "output")
    output = record["output"]
    if _is_number(output):
        output = str(output)
        converted.count += 1
    elif not isinstance(output, str):
        raise _RecordError(f"expected a string, got {_type_name(output)}", "output")
    meta = {k: v for k, v in record.items() if k not in ("instruction", "input", "output")}
    return Example(instruction=instruction, input=text_input, output=output, meta=meta)


def _chat_to_example(record: dict) -> Example:
    messages = record["messages"]
    if not isinstance(messages, list):
        raise _RecordError(f"expected a list of messages, got {_type_name(messages)}",
                           "messages")
    if not messages:
        raise _RecordError("the conversation is empty", "messages")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _RecordError(f"expected an object, got {_type_name(message)}", where)
        role = message.get("role")
        if role not in _CHAT_ROLES:
            raise _RecordError(f"role must be one of {', '.join(_CHAT_ROLES)}; got {role!r}",
                               f"{where}.role")
        if not isinstance(message.get("content"), str):
            raise _RecordError(
                f"expected a string, got {_type_name(message.get('content'))}",
                f"{where}.content")
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise _RecordError("the conversation has no assistant reply", "messages")
    if roles[-1] != "assistant":
        raise _RecordError(
            f"the conversation must end with the assistant reply (the last message has "
            f"role '{roles[-1]}')", "messages")
    if len(roles) < 2 or roles[-2] != "user":
        raise _RecordError("the final assistant reply must directly follow a user message",
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


def _to_example(record: Any, converted: _Converted, *, drop_null_extras: bool) -> Example:
    if not isinstance(record, dict):
        raise _RecordError(f"expected an object (a record), got {_type_name(record)}")
    if drop_null_extras:  # table columns hold null where a record had no such key
        record = {k: v for k, v in record.items()
                  if v is not None or k in ("instruction", "output")}
    if record.get("messages") is not None:
        mixed = [k for k in ("instruction", "input", "output") if record.get(k) is not None]
        if mixed:
            raise _RecordError(
                f"a record is either chat ('messages') or Alpaca ('instruction'/'output'), "
                f"not both (also has '{mixed[0]}')", "messages")
        return _chat_to_example(record)
    return _alpaca_to_example(record, converted)


# --------------------------------------------------------------------------------------------
# Readers: each yields (line or row number, record)
# --------------------------------------------------------------------------------------------

def _read_text(path: Path, display: str) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}", path=display) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {column})",
                        path=display, line=line) from None


def _json_error(exc: json.JSONDecodeError, display: str) -> DataError:
    return DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", path=display,
                     line=exc.lineno)


def _line_at(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _iter_json_array(path: Path, display: str) -> Iterator[tuple[int, Any]]:
    text = _read_text(path, display)
    pos = _JSON_WS.match(text).end()
    if pos == len(text):
        return
    if text[pos] != "[":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data" and text[pos] == "{":
                raise DataError(
                    f"invalid JSON: {exc.msg} (column {exc.colno}); a .json file must hold one "
                    f"array of records; for one record per line use the .jsonl extension",
                    path=display, line=exc.lineno) from None
            raise _json_error(exc, display) from None
        raise DataError(f"expected a JSON array of records at the top level, got "
                        f"{_type_name(value)}", path=display, line=_line_at(text, pos))
    decoder = json.JSONDecoder()
    pos = _JSON_WS.match(text, pos + 1).end()
    line, counted_to = _line_at(text, pos), pos
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            line += text.count("\n", counted_to, pos)
            counted_to = pos
            try:
                value, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise _json_error(exc, display) from None
            yield line, value
            pos = _JSON_WS.match(text, end).end()
            if pos == len(text):
                raise DataError("invalid JSON: the array is not closed (expected ',' or ']')",
                                path=display, line=_line_at(text, pos))
            if text[pos] == "]":
                pos += 1
                break
            if text[pos] != ",":
                raise DataError("invalid JSON: expected ',' or ']' after an array element",
                                path=display, line=_line_at(text, pos))
            pos = _JSON_WS.match(text, pos + 1).end()
            if text.startswith("]", pos):
                raise DataError("invalid JSON: trailing comma before ']'", path=display,
                                line=_line_at(text, pos))
    pos = _JSON_WS.match(text, pos).end()
    if pos != len(text):
        raise DataError("invalid JSON: extra data after the top-level array", path=display,
                        line=_line_at(text, pos))


def _iter_jsonl(path: Path, display: str) -> Iterator[tuple[int, Any]]:
    text = _read_text(path, display)
    # Split on "\n" only: str.splitlines() would also split on U+2028 etc., which JSON
    # allows unescaped inside strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", path=display,
                            line=number) from None
        yield number, value


def _iter_csv(path: Path, display: str) -> Iterator[tuple[int, Any]]:
    text = _read_text(path, display)
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    header_line = 1
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"invalid CSV: {exc}", path=display, line=reader.line_num) from None
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if header is None:
            header, header_line = [cell.strip() for cell in row], start
            seen: set[str] = set()
            for name in header:
                if name in seen:
                    raise DataError("duplicate column in the header", path=display,
                                    line=header_line, field=name)
                seen.add(name)
            for name in ("instruction", "output"):
                if name not in seen:
                    raise DataError(f"missing required column (header has: "
                                    f"{', '.join(header)})", path=display, line=header_line,
                                    field=name)
            continue
        if len(row) > len(header):
            raise DataError(f"the row has {len(row)} values but the header (line "
                            f"{header_line}) has {len(header)} columns", path=display,
                            line=start)
        yield start, dict(zip(header, row))


def _iter_parquet(path: Path, display: str) -> Iterator[tuple[int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow ships with datasets
        raise DataError("reading .parquet files needs pyarrow (pip install pyarrow)",
                        path=display) from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several unrelated types
        raise DataError(f"cannot read Parquet file: {exc}", path=display) from None
    for index, row in enumerate(table.to_pylist(), start=1):
        yield index, row


def _iter_dataset(dataset: Any) -> Iterator[tuple[int, Any]]:
    for index, row in enumerate(dataset, start=1):
        yield index, row


def _pick_split(dataset: Any, split: str | None, display: str) -> tuple[Any, str | None]:
    """Return (Dataset, split name) from a Dataset or a DatasetDict."""
    if not hasattr(dataset, "keys"):  # a plain Dataset: it has one split already
        return dataset, None
    name = split or "train"
    if name not in dataset:
        available = ", ".join(sorted(dataset.keys())) or "none"
        raise DataError(f"no split '{name}' (available: {available})", path=display,
                        field="split")
    return dataset[name], name


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def _looks_like_local_path(source: str) -> bool:
    if Path(source).suffix.lower() in SUPPORTED_FILE_SUFFIXES:
        return True
    return source.startswith((".", "/", "~", "\\")) or (len(source) > 1 and source[1] == ":")


def load_examples(source: str | Path, *, split: str | None = None,
                  limit: int | None = None) -> list[Example]:
    """Read examples from a file, a saved ``datasets`` folder or a Hub dataset id.

    ``source`` is resolved in this order:

    1. an existing file, by extension: ``.json`` (a JSON array of records), ``.jsonl`` (one
       record per non-blank line), ``.csv`` (header row naming the columns) or ``.parquet``;
    2. an existing folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``
       (for a ``DatasetDict`` the ``split`` argument picks the split, default ``"train"``);
    3. a string that is not an existing path and does not look like a file path (no
       supported extension, not starting with ``.``, ``/`` or ``~``): a Hugging Face Hub
       dataset id, loaded with ``datasets.load_dataset(source, split=split or "train")``.
       A ``Path`` object is never treated as a Hub id.

    ``split`` only matters for ``DatasetDict`` folders and Hub ids; a single file (or a
    folder holding a single ``Dataset``) has exactly one split and ignores it.

    A record is Alpaca-shaped -- ``instruction`` (required string), ``input`` (optional
    string; missing or null becomes ``""``), ``output`` (required string) -- or chat-shaped:
    ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``. For chat
    records an optional leading system message goes to ``meta["system"]``, the conversation
    must end with a user message followed by the assistant reply (these become
    ``instruction`` and ``output``), and earlier turns are kept in ``meta["history"]`` as the
    list of message dicts. Any other key of a record is kept in ``meta``. In CSV, Parquet and
    ``datasets`` tables an extra column whose value is null is dropped instead.

    Numeric ``output`` values (int or float, some BackdoorLLM files hold them) are converted
    with ``str()``, and one ``UserWarning`` per source says how many were converted. Any
    other non-string value of ``instruction``, ``input`` or ``output`` (list, object, bool,
    null ``output``) is an error.

    ``limit`` keeps the first ``limit`` records; reading stops there, so a malformed record
    after them is not reported. ``limit=0`` returns ``[]`` once the source is found.

    Raises :class:`~mbdefense.core.errors.DataError` naming the file, the line (the 1-based line
    on which the record starts; for Parquet and ``datasets`` tables the 1-based row number,
    which the message also calls "row") and the field at fault, for: a missing file, an
    unsupported extension, bytes that are not valid UTF-8, invalid JSON/CSV, a record of the
    wrong type, a missing or mistyped field, a chat without an assistant reply, a source with
    no records ("no examples found"), and a Hub dataset that cannot be loaded. A UTF-8 byte
    order mark is accepted.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 0):
        raise ConfigError(f"limit must be a non-negative integer or None, got {limit!r}")
    if isinstance(source, str):
        path = Path(source).expanduser()
        is_path_object = False
    else:
        path = Path(source)
        is_path_object = True
    display = str(source)
    row_note = ""
    records: Iterable[tuple[int, Any]]
    drop_null_extras = True
    unit = "row"

    if path.is_file():
        suffix = path.suffix.lower()
        readers = {".json": _iter_json_array, ".jsonl": _iter_jsonl, ".csv": _iter_csv,
                   ".parquet": _iter_parquet}
        if suffix not in readers:
            raise DataError(
                f"unsupported file type '{path.suffix or '(no extension)'}'; supported: "
                f"{', '.join(SUPPORTED_FILE_SUFFIXES)}, or a folder saved with "
                f"datasets' save_to_disk", path=display)
        records = readers[suffix](path, display)
        if suffix != ".parquet":
            unit, drop_null_extras = "line", False
    elif path.is_dir():
        import datasets  # lazy: importing datasets is slow

        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as exc:  # noqa: BLE001 - wrap whatever datasets raises
            raise DataError(f"not a dataset folder saved with save_to_disk ({exc})",
                            path=display) from None
        dataset, split_name = _pick_split(loaded, split, display)
        if split_name is not None:
            row_note = f" of split '{split_name}'"
        records = _iter_dataset(dataset)
    elif path.exists():
        raise DataError("not a regular file or folder", path=display)
    elif is_path_object or _looks_like_local_path(display):
        raise DataError("file not found", path=display)
    else:
        import datasets  # lazy: importing datasets is slow

        split_name = split or "train"
        try:
            dataset = datasets.load_dataset(display, split=split_name)
        except Exception as exc:  # noqa: BLE001 - network, auth, unknown split, ...
            raise DataError(
                f"not found as a local file or folder, and loading it as a Hugging Face Hub "
                f"dataset (split '{split_name}') failed: {type(exc).__name__}: {exc}",
                path=display) from None
        dataset, _ = _pick_split(dataset, split_name, display)
        row_note = f" of split '{split_name}'"
        records = _iter_dataset(dataset)

    if limit == 0:
        return []
    converted = _Converted()
    examples: list[Example] = []
    for location, record in records:
        try:
            examples.append(_to_example(record, converted, drop_null_extras=drop_null_extras))
        except _RecordError as exc:
            message = exc.message
            if unit == "row":
                message = f"{message} (row {location}{row_note})"
            raise DataError(message, path=display, line=location, field=exc.field) from None
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise DataError("no examples found", path=display)
    if converted.count:
        warnings.warn(f"{display}: converted {converted.count} numeric 'output' value(s) to "
                      f"strings", UserWarning, stacklevel=2)
    return examples


def save_examples(examples: Sequence[Example], path: str | Path) -> Path:
    """Write ``examples`` atomically to ``path``; the format follows the extension.

    ``.json`` writes an indented JSON array of ``Example.to_dict()`` records, ``.jsonl`` one
    record per line. Parent folders are created. ``meta`` entries become top-level keys (see
    ``Example.to_dict``), so :func:`load_examples` reads the file back to equal examples.
    Any other extension, or a ``meta`` value JSON cannot encode, raises
    :class:`~mbdefense.core.errors.DataError` before anything is written. Returns the path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _SAVE_SUFFIXES:
        raise DataError(f"cannot save to '{path.suffix or '(no extension)'}' files; "
                        f"supported: {', '.join(_SAVE_SUFFIXES)}", path=str(path))
    records = []
    for index, example in enumerate(examples):
        record = example.to_dict()
        try:
            line = json.dumps(record, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise DataError(f"example {index} cannot be written as JSON: {exc}",
                            path=str(path)) from None
        records.append((record, line))
    if suffix == ".json":
        return atomic_write_json(path, [record for record, _ in records])
    return atomic_write_text(path, "".join(line + "\n" for _, line in records))


def split_examples(examples: Sequence[Example], fractions_or_sizes: Sequence[float | int],
                   seed: int) -> list[list[Example]]:
    """Shuffle a copy of ``examples`` with ``random.Random(seed)`` and cut it into parts.

    ``fractions_or_sizes`` is either all integers -- part sizes -- or contains floats --
    fractions in ``[0, 1]`` summing to at most 1 (e.g. ``(0.8, 0.2)``); a part's boundary is
    ``floor(cumulative fraction * len(examples))``, and fractions summing to 1 use every
    example. Examples left over after the last part are dropped. The same seed and input
    give the same parts; the input is not mutated. Raises
    :class:`~mbdefense.core.errors.ConfigError` for an empty or negative spec, fractions summing
    to more than 1, mixed integers and fractions, or sizes exceeding ``len(examples)``.
    """
    if isinstance(fractions_or_sizes, (str, bytes)) or not isinstance(fractions_or_sizes,
                                                                        Sequence):
        raise ConfigError(f"split sizes must be a sequence such as (0.8, 0.2) or (800, 200), "
                          f"got {fractions_or_sizes!r}")
    spec = list(fractions_or_sizes)
    if not spec:
        raise ConfigError("split sizes are empty")
    if seed is None:
        raise ConfigError("a seed is required for a reproducible split")
    for value in spec:
        if isinstance(value, bool) or not _is_number(value) or not math.isfinite(value):
            raise ConfigError(f"split sizes must be numbers, got {value!r}")
        if value < 0:
            raise ConfigError(f"split sizes must not be negative, got {value!r}")
    total_items = len(examples)
    all_ints = all(isinstance(v, numbers.Integral) for v in spec)
    if all_ints:
        sizes = [int(v) for v in spec]
        if sum(sizes) > total_items:
            raise ConfigError(f"split sizes {sizes} add up to {sum(sizes)}, more than the "
                              f"{total_items} examples available")
        bounds, running = [], 0
        for size in sizes:
            running += size
            bounds.append(running)
    else:
        if any(isinstance(v, numbers.Integral) and v not in (0, 1) for v in spec):
            raise ConfigError(f"split sizes mix integer sizes and fractions: {spec}")
        fractions = [float(v) for v in spec]
        total = math.fsum(fractions)
        if total > 1 + 1e-9:
            raise ConfigError(f"split fractions {fractions} add up to {total:g}, more than 1")
        bounds = []
        for k in range(len(fractions)):
            bounds.append(min(total_items,
                              math.floor(math.fsum(fractions[:k + 1]) * total_items + 1e-9)))
        if abs(total - 1) <= 1e-9:
            bounds[-1] = total_items
    items = list(examples)
    random.Random(seed).shuffle(items)
    parts, start = [], 0
    for end in bounds:
        parts.append(items[start:end])
        start = end
    return parts
