"""File formats -> raw records, each with the 1-based line (or row) it starts on.

Every reader is a generator of ``(line, record)`` pairs and raises
:class:`~mbdefense.core.errors.DataError` (file, line, what is wrong; one line) for a file it
cannot read. Files are read incrementally: JSON arrays in chunks, JSONL and CSV line by line,
Parquet in row batches, so memory stays bounded by one record (see
:mod:`mbdefense.data.limits`) however large or hostile the file is. Text must be UTF-8; a
byte order mark is accepted.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import re
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import IO, Any

from mbdefense.core.errors import DataError
from mbdefense.data.limits import MAX_DEPTH, MAX_RECORD_CHARS, one_line

__all__ = ["iter_json_array", "iter_jsonl", "iter_csv", "iter_parquet", "iter_rows"]

_CHUNK = 1 << 20
_SLACK = 64  # a value ending this close to the end of the buffer may have been cut off
_DECODER = json.JSONDecoder()
_WS = re.compile(r"[ \t\n\r]*")
_LONE_CR = re.compile(r"(?<=\r)(?!\n)")
_TOP_LEVEL_KINDS = {'"': "string", "t": "bool", "f": "bool", "n": "null", "N": "NaN",
                    "I": "Infinity", "-": "number", **{d: "number" for d in "0123456789"}}


def _open(path: Path, display: str) -> IO[bytes]:
    try:
        return path.open("rb")
    except OSError as exc:
        raise DataError(f"cannot read file: {one_line(exc.strerror or exc)}",
                        path=display) from None


def _utf8_error(exc: UnicodeDecodeError, display: str, line: int,
                column: int | None = None) -> DataError:
    where = f" at column {column}" if column is not None else ""
    return DataError(f"not valid UTF-8 (byte 0x{exc.object[exc.start]:02x}{where})",
                     path=display, line=line)


def _too_long(what: str, display: str, line: int, unit: str = "characters") -> DataError:
    return DataError(f"{what} is longer than {MAX_RECORD_CHARS:,} {unit} (the limit for one "
                     f"record)", path=display, line=line)


class _JsonText:
    """A UTF-8 file decoded chunk by chunk, with a cursor and line/column bookkeeping.

    Text before the cursor is dropped whenever more is read, so the buffer holds at most
    the current value plus one chunk.
    """

    def __init__(self, handle: IO[bytes], display: str):
        self.handle, self.display = handle, display
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.text, self.pos, self.eof = "", 0, False
        self.newlines_read = 0        # newlines decoded so far (locates UTF-8 errors)
        self.line, self.line_pos = 1, 0  # self.line is the line of text[self.line_pos]
        self.col0 = 0                 # column of text[0] within its line (0-based)

    def more(self) -> bool:
        """Read the next chunk (dropping text before the cursor); False at the end."""
        if self.eof:
            return False
        data = self.handle.read(_CHUNK)
        try:
            new = self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            line = self.newlines_read + exc.object.count(b"\n", 0, exc.start) + 1
            raise _utf8_error(exc, self.display, line) from None
        self.eof = not data
        self.newlines_read += new.count("\n")
        self.line_at(self.pos)
        newline = self.text.rfind("\n", 0, self.pos)
        self.col0 = self.pos - newline - 1 if newline >= 0 else self.col0 + self.pos
        self.text = self.text[self.pos:] + new
        self.pos = self.line_pos = 0
        return True

    def line_at(self, index: int) -> int:
        self.line += self.text.count("\n", self.line_pos, index)
        self.line_pos = index
        return self.line

    def column_at(self, index: int) -> int:
        newline = self.text.rfind("\n", 0, index)
        return index - newline if newline >= 0 else self.col0 + index + 1

    def skip_ws(self) -> str:
        """Move past whitespace; return the next character, or "" at the end of the file."""
        while True:
            self.pos = _WS.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.more():
                return ""

    def fail(self, message: str, index: int | None = None) -> DataError:
        return DataError(message, path=self.display,
                         line=self.line_at(self.pos if index is None else index))

    def take_value(self) -> Any:
        """Decode the JSON value at the cursor (bounded in size); move past it.

        A value cut off by the end of the buffer either fails to decode or (a number) ends
        within a few characters of it; then more text is read and the value decoded again,
        until it is complete, the file ends, or the value passes MAX_RECORD_CHARS.
        """
        line = self.line_at(self.pos)
        while True:
            text, base = self.text, self.pos
            try:
                value, end = _DECODER.raw_decode(text, base)
            except json.JSONDecodeError as exc:
                value, end, error = None, exc.pos, exc
                cut_off = exc.msg.startswith("Unterminated string")
            except RecursionError:
                raise self.fail(f"nested deeper than {MAX_DEPTH} levels", base) from None
            except ValueError as exc:  # an integer with over 4300 digits: more text won't help
                value, end, error, cut_off = None, base, exc, False
            else:
                error, cut_off = None, False
            near_end = end >= len(text) - _SLACK
            if (self.eof or not (near_end or cut_off)
                    or len(text) - base > MAX_RECORD_CHARS or not self.more()):
                break
        if (error is None and end - base > MAX_RECORD_CHARS) or (
                error is not None and (near_end or cut_off)
                and len(text) - base > MAX_RECORD_CHARS):
            raise _too_long("a record", self.display, line)
        if isinstance(error, json.JSONDecodeError):
            raise self.fail(f"invalid JSON: {error.msg} (column {self.column_at(end)})", end)
        if error is not None:
            raise self.fail(f"invalid JSON: {one_line(error, 120)}", base)
        self.pos = end
        return value


def iter_json_array(path: Path, display: str) -> Generator[tuple[int, Any], None, None]:
    """A ``.json`` file holding one array of records; each yielded with its start line."""
    with _open(path, display) as handle:
        reader = _JsonText(handle, display)
        char = reader.skip_ws()
        if char == "":
            return
        if char != "[":
            line = reader.line_at(reader.pos)
            if char != "{":
                kind = _TOP_LEVEL_KINDS.get(char)
                if kind is None:
                    raise reader.fail(f"invalid JSON: Expecting value (column "
                                      f"{reader.column_at(reader.pos)})")
                raise DataError(f"expected a JSON array of records at the top level, got "
                                f"{kind}", path=display, line=line)
            reader.take_value()
            if reader.skip_ws() == "{":
                raise reader.fail("invalid JSON: extra data after the first record; a .json "
                                  "file must hold one array of records; for one record per "
                                  "line use the .jsonl extension")
            raise DataError("expected a JSON array of records at the top level, got object",
                            path=display, line=line)
        reader.pos += 1
        char = reader.skip_ws()
        if char == "]":
            reader.pos += 1
        else:
            while True:
                if char == "":
                    raise reader.fail("invalid JSON: the array is not closed")
                line = reader.line_at(reader.pos)
                yield line, reader.take_value()
                char = reader.skip_ws()
                if char == "]":
                    reader.pos += 1
                    break
                if char == "":
                    raise reader.fail("invalid JSON: the array is not closed (expected ',' "
                                      "or ']')")
                if char != ",":
                    raise reader.fail("invalid JSON: expected ',' or ']' after an array "
                                      "element")
                reader.pos += 1
                char = reader.skip_ws()
                if char == "]":
                    raise reader.fail("invalid JSON: trailing comma before ']'")
        if reader.skip_ws() != "":
            raise reader.fail("invalid JSON: extra data after the top-level array")


def _iter_lines(path: Path, display: str) -> Iterator[tuple[int, str]]:
    """Lines split on ``\\n`` only (JSON allows U+2028 inside strings), each decoded."""
    with _open(path, display) as handle:
        number = 0
        while True:
            raw = handle.readline(MAX_RECORD_CHARS + 1)
            if not raw:
                return
            number += 1
            if len(raw) > MAX_RECORD_CHARS and not raw.endswith(b"\n"):
                raise _too_long("the line", display, number, "bytes")
            skip = 3 if number == 1 and raw.startswith(codecs.BOM_UTF8) else 0
            try:
                line = raw[skip:].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _utf8_error(exc, display, number, exc.start + skip + 1) from None
            yield number, line


def iter_jsonl(path: Path, display: str) -> Generator[tuple[int, Any], None, None]:
    """A ``.jsonl`` file: one JSON record per non-blank line."""
    for number, line in _iter_lines(path, display):
        if not line.strip(" \t\r\n"):
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", path=display,
                            line=number) from None
        except RecursionError:
            raise DataError(f"nested deeper than {MAX_DEPTH} levels", path=display,
                            line=number) from None
        except ValueError as exc:  # e.g. an integer with 5000 digits
            raise DataError(f"invalid JSON: {one_line(exc, 120)}", path=display,
                            line=number) from None
        yield number, value


class _CsvLines:
    """Feeds ``csv.reader`` one line at a time and counts the characters of the current row."""

    def __init__(self, path: Path, display: str):
        self.lines, self.display = _iter_lines(path, display), display
        self.pending: list[str] = []
        self.row_chars, self.row_line = 0, 1

    def __iter__(self) -> "_CsvLines":
        return self

    def __next__(self) -> str:
        if not self.pending:
            _, line = next(self.lines)
            # A lone "\r" ends a line too, as in files opened with newline="".
            self.pending = _LONE_CR.split(line)[::-1] if "\r" in line else [line]
        piece = self.pending.pop()
        self.row_chars += len(piece)
        if self.row_chars > MAX_RECORD_CHARS:
            raise _too_long("the row", self.display, self.row_line)
        return piece


@contextlib.contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def iter_csv(path: Path, display: str) -> Generator[tuple[int, Any], None, None]:
    """A ``.csv`` file: a header row naming the columns, then one record per row."""
    lines = _CsvLines(path, display)
    reader = csv.reader(lines)
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1
        lines.row_chars, lines.row_line = 0, start
        try:
            with _csv_field_limit(MAX_RECORD_CHARS):
                row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"invalid CSV: {one_line(exc, 120)}", path=display,
                            line=reader.line_num) from None
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if header is None:
            header, header_line = [cell.strip() for cell in row], start
            seen: set[str] = set()
            for name in header:
                if name in seen:
                    raise DataError("duplicate column in the header", path=display,
                                    line=header_line, field=one_line(name, 80))
                seen.add(name)
            for name in ("instruction", "output"):
                if name not in seen:
                    raise DataError(f"missing required column (header has: "
                                    f"{one_line(', '.join(header), 120)})", path=display,
                                    line=header_line, field=name)
            continue
        if len(row) > len(header):
            raise DataError(f"the row has {len(row)} values but the header (line "
                            f"{header_line}) has {len(header)} columns", path=display,
                            line=start)
        yield start, dict(zip(header, row))


def iter_parquet(path: Path, display: str) -> Generator[tuple[int, Any], None, None]:
    """A ``.parquet`` table, read in batches; each row yielded with its 1-based number."""
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow ships with datasets
        raise DataError("reading .parquet files needs pyarrow (pip install pyarrow)",
                        path=display) from None
    try:
        table = pq.ParquetFile(path)
        batches = table.iter_batches(batch_size=256)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several unrelated types
        raise DataError(f"cannot read Parquet file: {one_line(exc, 160)}",
                        path=display) from None
    number = 0
    while True:
        try:
            batch = next(batches, None)
            rows = [] if batch is None else batch.to_pylist()
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"cannot read Parquet file after row {number}: "
                            f"{one_line(exc, 160)}", path=display) from None
        if batch is None:
            return
        for row in rows:
            number += 1
            yield number, row


def iter_rows(dataset: Any, display: str) -> Generator[tuple[int, Any], None, None]:
    """The rows of a ``datasets.Dataset``, numbered from 1; read errors become DataError."""
    rows = iter(dataset)
    number = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - arrow/IO errors from a broken folder
            raise DataError(f"cannot read row {number + 1}: {type(exc).__name__}: "
                            f"{one_line(exc, 160)}", path=display) from None
        number += 1
        yield number, row
