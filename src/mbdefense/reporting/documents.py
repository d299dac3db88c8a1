"""Results documents: reading, checking and combining ``results.json`` files.

A results document (``DIR/results.json``) holds ``rows`` (one per evaluated model: ``model``,
``attack``, ``behavior``, ``defense``, ``cacc``, ``asr``, ``aacc``, ``n_clean``,
``n_triggered``, ``seed``, often more), ``samples`` (generations per cell, keyed by an opaque
heading), ``outcomes`` (per-prompt flags per row, from schema 4), ``diagnostics``,
``config``, ``versions`` and ``wall_seconds``; optionally ``name``, ``description``,
``groups`` and ``metadata`` (a mapping of strings, shown in the report's header). Other
fields, in the document or in its rows, are kept and tolerated.

- :func:`load_results` reads and checks documents: whatever is wrong with a file (missing, not
  UTF-8, not JSON, nested too deeply, a field of the wrong kind) is one :class:`DataError` that
  names the file, the row and the field at fault;
- :func:`combine` merges several runs (a repeated ``(model, attack, behavior, defense, seed)``
  row keeps the later run's values) into a :class:`Combined` document.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from mbdefense.core.errors import DataError
from mbdefense.results.paired import is_flags_text

RESULTS_FILE = "results.json"
REQUIRED = ("model", "attack", "behavior", "defense", "cacc", "asr", "aacc", "n_clean",
            "n_triggered", "seed")
NAMES = ("model", "attack", "behavior", "defense")
FRACTIONS = ("cacc", "asr", "aacc")
OPTIONAL_FRACTIONS = ("clean_asr", "poison_rate")
COUNTS = ("n_clean", "n_triggered")
KEY = ("model", "attack", "behavior", "defense", "seed")
MAPPINGS = ("samples", "outcomes", "diagnostics", "versions",
            "metadata")   # optional, objects when given
#: Document fields that may record the scorers' and detectors' identity or backends (any shape).
SCORER_FIELDS = ("scorer", "scorers", "backends", "scorer_backends", "detectors")
MAX_DEPTH = 100   # deeper nesting in any field is refused (rendering walks it recursively)

Doc = dict[str, Any]
Row = dict[str, Any]


class Combined(dict):
    """A document combined from one or more runs (see :func:`combine`)."""


# ----------------------------------------------------------------------------- reading


def _results_file(path: str | Path) -> Path:
    """``path/results.json`` for a run folder, ``path`` itself for a file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such run folder or {RESULTS_FILE} file", path=str(path))
    return path / RESULTS_FILE if path.is_dir() else path


def _read_json(file: Path) -> Any:
    if not file.is_file():
        raise DataError(f"no {RESULTS_FILE} in the run folder", path=str(file))
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror or exc}", path=str(file)) from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x})",
                        path=str(file)) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc.msg} (column {exc.colno})", path=str(file),
                        line=exc.lineno) from exc
    except RecursionError as exc:
        raise DataError("not readable: JSON nested too deeply", path=str(file)) from exc
    except ValueError as exc:      # e.g. an integer with too many digits
        raise DataError(f"not valid JSON: {exc}", path=str(file)) from exc


# ----------------------------------------------------------------------------- checking


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _show(value: Any, limit: int = 60) -> str:
    """A short ``repr`` of a value for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether objects and lists are nested more than ``limit`` levels (without recursing)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(
            item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _check_fraction(row: Row, name: str, where: str, source: str) -> None:
    value = row[name]
    if not is_number(value):
        raise DataError(f"{where}: expected a number in [0, 1], got {_show(value)}",
                        path=source, field=name)
    if not 0.0 <= value <= 1.0:
        raise DataError(f"{where}: expected a fraction in [0, 1], got {_show(value)}",
                        path=source, field=name)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_row(row: Any, index: int, source: str) -> None:
    where = f"row {index}"
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}", path=source,
                        field="rows")
    for name in REQUIRED:
        if name not in row:
            raise DataError(f"{where}: missing", path=source, field=name)
    for name in NAMES:
        if not isinstance(row[name], str):
            raise DataError(f"{where}: expected a string, got {_show(row[name])}", path=source,
                            field=name)
    for name in FRACTIONS:
        _check_fraction(row, name, where, source)
    for name in OPTIONAL_FRACTIONS:
        if row.get(name) is not None:
            _check_fraction(row, name, where, source)
    for name in COUNTS:
        if not _is_int(row[name]) or row[name] < 0:
            raise DataError(f"{where}: expected a count (integer >= 0), got {_show(row[name])}",
                            path=source, field=name)
    if not _is_int(row["seed"]):
        raise DataError(f"{where}: expected an integer, got {_show(row['seed'])}", path=source,
                        field="seed")


def _check_samples(samples: Mapping[str, Any], source: str) -> None:
    for heading, items in samples.items():
        if not isinstance(items, list):
            raise DataError(f"heading {_show(heading)}: expected a list of samples, got "
                            f"{type(items).__name__}", path=source, field="samples")
        for n, item in enumerate(items):
            if not isinstance(item, dict):
                raise DataError(f"heading {_show(heading)}, sample {n}: expected an object, "
                                f"got {type(item).__name__}", path=source, field="samples")


def _check_outcomes(outcomes: Mapping[str, Any], source: str) -> None:
    for heading, flags in outcomes.items():
        if not isinstance(flags, dict):
            raise DataError(f"heading {_show(heading)}: expected an object of per-prompt "
                            f"flags, got {type(flags).__name__}", path=source, field="outcomes")
        for metric, text in flags.items():
            if not is_flags_text(text):
                raise DataError(f"heading {_show(heading)}, {_show(metric)}: expected a string "
                                f"of 0s and 1s, got {_show(text)}", path=source,
                                field="outcomes")


def validate_doc(doc: Any, source: str) -> Doc:
    """``doc`` checked as a results document (``source`` names it in errors)."""
    if not isinstance(doc, dict):
        raise DataError(f"expected a JSON object, got {type(doc).__name__}", path=source)
    for name, value in doc.items():
        if _depth_exceeds(value, MAX_DEPTH):
            raise DataError(f"nested more than {MAX_DEPTH} levels deep", path=source,
                            field=str(name))
    if "rows" not in doc:
        raise DataError("missing", path=source, field="rows")
    if not isinstance(doc["rows"], list):
        raise DataError(f"expected a list of rows, got {type(doc['rows']).__name__}",
                        path=source, field="rows")
    for index, row in enumerate(doc["rows"]):
        _check_row(row, index, source)
    for name in MAPPINGS:
        value = doc.get(name)
        if value is not None and not isinstance(value, dict):
            raise DataError(f"expected an object, got {type(value).__name__}", path=source,
                            field=name)
    _check_samples(doc.get("samples") or {}, source)
    _check_outcomes(doc.get("outcomes") or {}, source)
    return doc


def load_results(paths: Sequence[str | Path]) -> list[Doc]:
    """The results documents of ``paths`` (run folders or ``results.json`` files), checked.

    Each document gets ``source``: the file it was read from.
    """
    docs = []
    for path in paths:
        file = _results_file(path)
        doc = validate_doc(_read_json(file), str(file))
        docs.append({**doc, "source": str(file)})
    return docs


# ----------------------------------------------------------------------------- combining


def row_key(row: Row) -> tuple[Any, ...]:
    return tuple(row[k] for k in KEY)


def _text(value: Any) -> str:
    """A version or metadata value as text (objects as compact JSON)."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _merge_strings(docs: Sequence[Doc], field: str) -> dict[str, str]:
    """Per key of ``field`` (a mapping in each document), its distinct values joined by
    `` / `` (``null`` and empty values left out)."""
    seen: dict[str, list[str]] = {}
    for doc in docs:
        for name, value in (doc.get(field) or {}).items():
            if value is None or value == "":
                continue
            values = seen.setdefault(str(name), [])
            if _text(value) not in values:
                values.append(_text(value))
    return {name: " / ".join(values) for name, values in seen.items()}


def _run_info(doc: Doc, index: int) -> Doc:
    return {"source": str(doc.get("source", f"document {index}")),
            "name": doc.get("name"), "description": doc.get("description"),
            "wall_seconds": doc.get("wall_seconds"),
            "diagnostics": doc.get("diagnostics") or {},
            "metadata": doc.get("metadata") or {},
            "config": doc.get("config"),
            "groups": doc.get("groups") if isinstance(doc.get("groups"), list) else [],
            "scorers": {k: doc[k] for k in SCORER_FIELDS if doc.get(k) not in (None, "", {}, [])}}


def combine(docs: Sequence[Doc]) -> Combined:
    """One document from several runs.

    ``rows``: every run's rows; a row whose ``(model, attack, behavior, defense, seed)`` was
    seen before replaces the earlier one (in the earlier one's place). ``samples`` and
    ``outcomes``: merged, a later heading replacing an earlier one. ``versions`` and
    ``metadata``: per key, the distinct values joined by `` / ``. ``runs``: each run's source, name, description, wall
    time, diagnostics, metadata, config, groups and scorer records. ``wall_seconds``: the
    runs' total (``None`` if none is known).
    """
    rows: dict[tuple[Any, ...], Row] = {}
    samples: dict[str, Any] = {}
    outcomes: dict[str, Any] = {}
    for index, doc in enumerate(docs):
        validate_doc(doc, str(doc.get("source", f"document {index}"))
                     if isinstance(doc, dict) else f"document {index}")
        for row in doc["rows"]:
            rows[row_key(row)] = row
        samples.update(doc.get("samples") or {})
        outcomes.update(doc.get("outcomes") or {})
    runs = [_run_info(doc, i) for i, doc in enumerate(docs)]
    walls = [r["wall_seconds"] for r in runs if is_number(r["wall_seconds"])]
    return Combined(rows=list(rows.values()), samples=samples, outcomes=outcomes,
                    versions=_merge_strings(docs, "versions"),
                    metadata=_merge_strings(docs, "metadata"), runs=runs,
                    wall_seconds=sum(walls) if walls else None)


def as_combined(docs: Doc | Sequence[Doc]) -> Combined:
    """A combined document from a list of documents, one document, or a combined one."""
    if isinstance(docs, Combined):
        return docs
    if isinstance(docs, Mapping):
        return combine([dict(docs)])
    return combine(list(docs))


__all__ = ["Combined", "RESULTS_FILE", "SCORER_FIELDS", "as_combined", "combine", "is_number",
           "load_results", "row_key", "validate_doc"]
