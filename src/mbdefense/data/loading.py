"""Load and save instruction-tuning examples; resolve where a source's records come from.

Every source is read by a reader in :mod:`mbdefense.data.readers` (raw records with their
line) and every record is turned into an :class:`~mbdefense.data.example.Example` by
:mod:`mbdefense.data.records`, so a bad record is reported the same way whatever the format:
``path:line: field 'name': what is wrong``, on one line.

Supported sources (see :func:`load_examples`):

* ``.json``    -- a JSON array of records;
* ``.jsonl``   -- one JSON record per non-blank line;
* ``.csv``     -- a header row with ``instruction``/``input``/``output`` columns;
* ``.parquet`` -- a table with the same columns (read with pyarrow);
* a folder written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
* a Hugging Face Hub dataset id (``owner/name``), only when no such local path exists and
  the hub is not switched off (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``).

Splitting lives in :mod:`mbdefense.data.splits`; ``split_examples`` is re-exported here.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from mbdefense.core.errors import ConfigError, DataError
from mbdefense.core.io import atomic_write_json, atomic_write_text
from mbdefense.data.example import Example
from mbdefense.data.limits import one_line
from mbdefense.data.readers import (iter_csv, iter_json_array, iter_jsonl, iter_parquet,
                                    iter_rows)
from mbdefense.data.records import RecordError, to_example
from mbdefense.data.splits import split_examples

__all__ = ["load_examples", "save_examples", "split_examples", "SUPPORTED_FILE_SUFFIXES",
           "looks_like_hub_id", "hub_offline_setting"]

#: File extensions :func:`load_examples` reads (compared case-insensitively).
SUPPORTED_FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
_READERS: dict[str, Callable[[Path, str], Generator[tuple[int, Any], None, None]]] = {
    ".json": iter_json_array, ".jsonl": iter_jsonl, ".csv": iter_csv,
    ".parquet": iter_parquet}
_SAVE_SUFFIXES = (".json", ".jsonl")
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = ("1", "true", "yes", "on")
# A name that ends like a data file is a path, never a hub id.
_FILE_EXTENSIONS = frozenset(SUPPORTED_FILE_SUFFIXES) | {
    ".ndjson", ".txt", ".tsv", ".arrow", ".feather", ".xlsx", ".xls", ".xml", ".html",
    ".md", ".yaml", ".yml", ".toml", ".gz", ".bz2", ".xz", ".zst", ".zip", ".tar", ".tgz",
    ".pkl", ".pickle", ".pt", ".bin", ".npy", ".npz", ".py", ".sh"}
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HUB_ID = re.compile(rf"{_HUB_PART}/{_HUB_PART}")


def looks_like_hub_id(source: str) -> bool:
    """Whether ``source`` is shaped like a Hub dataset id: ``owner/name``.

    Both parts use letters, digits, ``-``, ``_`` and ``.``, start and end with a letter or
    digit, hold no ``--`` or ``..``, and the name does not end in a file extension such as
    ``.json`` or ``.txt``. So ``train``, ``data/train.json``, ``./x/y`` and ``~/x`` are paths.
    """
    if not isinstance(source, str) or len(source) > 96 or not _HUB_ID.fullmatch(source):
        return False
    if "--" in source or ".." in source:
        return False
    return Path(source).suffix.lower() not in _FILE_EXTENSIONS


def hub_offline_setting() -> str | None:
    """``"NAME=value"`` for the first of HF_HUB_OFFLINE / HF_DATASETS_OFFLINE that is on."""
    for name in _OFFLINE_VARIABLES:
        value = os.environ.get(name, "")
        if value.strip().lower() in _TRUE:
            return f"{name}={value.strip()}"
    return None


def _path_kind(path: Path, display: str) -> str | None:
    try:
        if path.is_file():
            return "file"
        if path.is_dir():
            return "folder"
        return "other" if path.exists() else None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise DataError(f"cannot access the path: {one_line(reason, 120)}",
                        path=display) from None


def _pick_split(dataset: Any, split: str | None, display: str) -> tuple[Any, str | None]:
    """Return (Dataset, split name) from a Dataset or a DatasetDict."""
    if not hasattr(dataset, "keys"):  # a plain Dataset: it has one split already
        return dataset, None
    name = split or "train"
    if name not in dataset:
        available = ", ".join(sorted(str(k) for k in dataset.keys())) or "none"
        raise DataError(f"no split '{one_line(name, 60)}' (available: "
                        f"{one_line(available, 120)})", path=display, field="split")
    return dataset[name], name


def _import_datasets(display: str) -> Any:
    try:
        import datasets  # lazy: importing datasets is slow
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise DataError("reading dataset folders and hub datasets needs the datasets "
                        "package", path=display) from None
    return datasets


def _from_folder(path: Path, display: str, split: str | None) -> tuple[Generator, str]:
    if not ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        raise DataError("a folder, but not a dataset saved with save_to_disk (it has no "
                        "state.json or dataset_dict.json)", path=display)
    datasets = _import_datasets(display)
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - wrap whatever datasets raises
        raise DataError(f"cannot load the dataset folder: {type(exc).__name__}: "
                        f"{one_line(exc, 160)}", path=display) from None
    dataset, split_name = _pick_split(loaded, split, display)
    note = f" of split '{split_name}'" if split_name is not None else ""
    return iter_rows(dataset, display), note


def _from_hub(name: str, display: str, split: str | None) -> tuple[Generator, str]:
    offline = hub_offline_setting()
    if offline:
        raise DataError(f"not found locally, and the hub is off ({offline})", path=display)
    datasets = _import_datasets(display)
    split_name = split or "train"
    try:
        dataset = datasets.load_dataset(name, split=split_name)
    except Exception as exc:  # noqa: BLE001 - network, auth, unknown split, ...
        raise DataError(f"not found locally, and the Hugging Face Hub could not provide it "
                        f"(split '{one_line(split_name, 60)}'): {type(exc).__name__}: "
                        f"{one_line(exc, 200)}", path=display) from None
    dataset, _ = _pick_split(dataset, split_name, display)
    return iter_rows(dataset, display), f" of split '{one_line(split_name, 60)}'"


class _Source(NamedTuple):
    records: Generator[tuple[int, Any], None, None]
    display: str            # the source as error messages name it
    row_note: str = ""      # e.g. " of split 'train'"
    by_row: bool = False    # locations are row numbers (tables), not lines
    table: bool = False     # null extra columns are dropped
    csv: bool = False       # blank required cells are errors


def _open_source(source: str | os.PathLike, split: str | None) -> _Source:
    is_path_object = not isinstance(source, str)
    text = os.fspath(source)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    display = one_line(text, 400) if text else "''"
    if not text.strip():
        raise DataError("no data source given (the name is empty)", path=display)
    path = Path(text)
    if not is_path_object:
        try:
            path = path.expanduser()
        except RuntimeError:  # "~user" of an unknown user: keep the name as it is
            pass
    kind = _path_kind(path, display)
    if kind == "file":
        reader = _READERS.get(path.suffix.lower())
        if reader is None:
            raise DataError(
                f"unsupported file type '{one_line(path.suffix or '(no extension)', 40)}'; "
                f"supported: {', '.join(SUPPORTED_FILE_SUFFIXES)}, or a folder saved with "
                f"datasets' save_to_disk", path=display)
        suffix = path.suffix.lower()
        return _Source(reader(path, display), display, by_row=suffix == ".parquet",
                       table=suffix == ".parquet", csv=suffix == ".csv")
    if kind == "folder":
        records, note = _from_folder(path, display, split)
        return _Source(records, display, note, by_row=True, table=True)
    if kind == "other":
        raise DataError("not a regular file or folder", path=display)
    if is_path_object or not looks_like_hub_id(text):
        raise DataError("file not found", path=display)
    records, note = _from_hub(text, display, split)
    return _Source(records, display, note, by_row=True, table=True)


def load_examples(source: str | os.PathLike, *, split: str | None = None,
                  limit: int | None = None, convert_numbers: bool = False) -> list[Example]:
    """Read examples from a file, a saved ``datasets`` folder or a Hub dataset id.

    ``source`` is resolved in this order:

    1. an existing file, by extension: ``.json`` (a JSON array of records), ``.jsonl`` (one
       record per non-blank line), ``.csv`` (header row naming the columns) or ``.parquet``;
    2. an existing folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``
       (for a ``DatasetDict`` the ``split`` argument picks the split, default ``"train"``);
    3. a string shaped like a Hub dataset id (see :func:`looks_like_hub_id`: ``owner/name``,
       no file extension, not starting with ``.``, ``/`` or ``~``), loaded with
       ``datasets.load_dataset(source, split=split or "train")`` -- unless
       ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` is set, which is then an immediate error.
       Anything else that does not exist (``train``, ``data/train.json``, a ``Path``) is
       "file not found" at once, without touching the network.

    ``split`` only matters for ``DatasetDict`` folders and Hub ids; a single file (or a
    folder holding a single ``Dataset``) has exactly one split and ignores it.

    A record is Alpaca-shaped -- ``instruction`` (required string), ``input`` (optional
    string; missing or null becomes ``""``), ``output`` (required string) -- or chat-shaped:
    ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``. For chat
    records an optional leading system message goes to ``meta["system"]``, the conversation
    must end with a user message followed by the assistant reply (these become
    ``instruction`` and ``output``), and earlier turns are kept in ``meta["history"]`` as the
    list of message dicts. Any other key of a record is kept in ``meta``. In CSV, Parquet and
    ``datasets`` tables an extra column whose value is null is dropped instead; in CSV a
    blank ``instruction`` or ``output`` cell is an error.

    A non-string ``instruction``, ``input`` or ``output`` (a number, NaN, bool, list,
    object, null ``output``) is an error. With ``convert_numbers=True`` a finite int or
    float ``output`` (some BackdoorLLM files hold them) is converted with ``str()`` instead,
    and one ``UserWarning`` per source says how many were converted. Text fields must not
    hold control characters other than tab, newline and carriage return, and the readers
    bound each record (:mod:`mbdefense.data.limits`: 1,000,000 characters per text field,
    8,000,000 per record or line, 100 nesting levels).

    ``limit`` keeps the first ``limit`` records; reading stops there, so a malformed record
    after them is not reported. ``limit=0`` returns ``[]`` once the source is found.

    Raises :class:`~mbdefense.core.errors.DataError` with a one-line message naming the file,
    the line (the 1-based line on which the record starts; for Parquet and ``datasets``
    tables the 1-based row number, which the message also calls "row") and the field at
    fault: a missing file, an unsupported extension, bytes that are not valid UTF-8, invalid
    JSON/CSV, a record of the wrong type, a missing, mistyped or oversized field, a chat
    without an assistant reply, a source with no records ("no examples found"), a folder that
    is not a saved dataset, and a Hub dataset that cannot be loaded. A UTF-8 byte order mark
    is accepted; duplicate JSON keys keep the last value.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 0):
        raise ConfigError(f"limit must be a non-negative integer or None, got {limit!r}")
    if split is not None and not isinstance(split, str):
        raise ConfigError(f"split must be a string or None, got {split!r}")
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError(f"a data source is a path or a string, got "
                          f"{type(source).__name__}")
    opened = _open_source(source, split)
    records, display = opened.records, opened.display
    if limit == 0:
        records.close()
        return []
    converted = 0
    examples: list[Example] = []
    try:
        for location, record in records:
            try:
                example, was_converted = to_example(
                    record, table=opened.table, csv_cells=opened.csv,
                    convert_numbers=convert_numbers)
            except RecordError as exc:
                message = exc.message
                if opened.by_row:
                    message = f"{message} (row {location}{opened.row_note})"
                raise DataError(message, path=display, line=location,
                                field=exc.field) from None
            examples.append(example)
            converted += was_converted
            if limit is not None and len(examples) >= limit:
                break
    finally:
        records.close()
    if not examples:
        raise DataError("no examples found", path=display)
    if converted:
        warnings.warn(f"{display}: converted {converted} numeric 'output' value(s) to "
                      f"strings", UserWarning, stacklevel=2)
    return examples


def save_examples(examples: Sequence[Example], path: str | os.PathLike) -> Path:
    """Write ``examples`` atomically to ``path``; the format follows the extension.

    ``.json`` writes an indented JSON array of ``Example.to_dict()`` records, ``.jsonl`` one
    record per line. Parent folders are created. ``meta`` entries become top-level keys (see
    ``Example.to_dict``), so :func:`load_examples` reads the file back to equal examples.
    Any other extension, or a ``meta`` value JSON cannot encode (or text that is not valid
    Unicode), raises :class:`~mbdefense.core.errors.DataError` before anything is written.
    Returns the path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _SAVE_SUFFIXES:
        raise DataError(f"cannot save to '{one_line(path.suffix or '(no extension)', 40)}' "
                        f"files; supported: {', '.join(_SAVE_SUFFIXES)}",
                        path=one_line(path, 400))
    records = []
    for index, example in enumerate(examples):
        record = example.to_dict()
        try:
            line = json.dumps(record, ensure_ascii=False)
            line.encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise DataError(f"example {index} cannot be written as JSON: "
                            f"{one_line(exc, 160)}", path=one_line(path, 400)) from None
        records.append((record, line))
    if suffix == ".json":
        return atomic_write_json(path, [record for record, _ in records])
    return atomic_write_text(path, "".join(line + "\n" for _, line in records))
