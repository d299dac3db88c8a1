"""Evaluation prompt sets, e.g. the WizardLM test set, read as a clean test set.

Unlike training data, an evaluation record needs no reference answer. Errors are reported
like :func:`mbdefense.data.loading.load_examples` reports them:
``path:line: field 'name': what is wrong``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from mbdefense.data.example import Example
from mbdefense.data.loading import _is_number, _iter_json_array, _iter_jsonl, _type_name
from mbdefense.core.errors import DataError

__all__ = ["load_eval_examples", "INSTRUCTION_FIELDS", "REFERENCE_FIELDS"]

#: Field names holding the prompt, first match wins (WizardLM's test set uses "Instruction").
INSTRUCTION_FIELDS = ("instruction", "Instruction", "prompt")
#: Field names holding the optional reference answer, first match wins.
REFERENCE_FIELDS = ("output", "reference", "answer", "response")


def _first_key(record: dict, names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in record), None)


def _eval_example(record: Any, display: str, line: int) -> tuple[Example, bool]:
    """The example, and whether a numeric reference was converted to a string."""
    def fail(message: str, field: str | None = None) -> DataError:
        return DataError(message, path=display, line=line, field=field)

    if not isinstance(record, dict):
        raise fail(f"expected an object (a record), got {_type_name(record)}")
    key = _first_key(record, INSTRUCTION_FIELDS)
    if key is None:
        raise fail(f"missing required field (one of {', '.join(INSTRUCTION_FIELDS)})",
                   INSTRUCTION_FIELDS[0])
    instruction = record[key]
    if not isinstance(instruction, str):
        raise fail(f"expected a string, got {_type_name(instruction)}", key)
    text_input = record.get("input")
    if text_input is None:
        text_input = ""
    elif not isinstance(text_input, str):
        raise fail(f"expected a string, got {_type_name(text_input)}", "input")
    ref_key = _first_key(record, REFERENCE_FIELDS)
    reference = record.get(ref_key) if ref_key else None
    converted = False
    if reference is None:
        reference = ""
    elif _is_number(reference):
        reference, converted = str(reference), True
    elif not isinstance(reference, str):
        raise fail(f"expected a string, got {_type_name(reference)}", ref_key)
    meta = {k: v for k, v in record.items() if k not in (key, "input", ref_key)}
    return Example(instruction=instruction, input=text_input, output=reference,
                   meta=meta), converted


def load_eval_examples(path: str | Path) -> list[Example]:
    """Read an evaluation set (e.g. WizardLM's test set) from a ``.json`` array or ``.jsonl``.

    Each record holds the prompt under ``instruction``, ``Instruction`` or ``prompt`` (the
    first present wins; a string), an optional ``input`` string, and an optional reference
    answer under ``output``, ``reference``, ``answer`` or ``response`` (missing or null gives
    an empty ``output``; a number is converted with one ``UserWarning``). Other keys go to
    ``meta``. Raises :class:`~mbdefense.core.errors.DataError` naming the file, the line and the
    field for a missing file, another extension, invalid JSON, a record that is not an
    object, a missing prompt, a non-string value, or a file with no records.
    """
    display = str(path)
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError("file not found" if not file.exists() else "not a regular file",
                        path=display)
    readers = {".json": _iter_json_array, ".jsonl": _iter_jsonl}
    reader = readers.get(file.suffix.lower())
    if reader is None:
        raise DataError(f"unsupported file type '{file.suffix or '(no extension)'}' for an "
                        f"evaluation set; supported: {', '.join(readers)}", path=display)
    examples: list[Example] = []
    converted = 0
    for line, record in reader(file, display):
        example, was_converted = _eval_example(record, display, line)
        examples.append(example)
        converted += was_converted
    if not examples:
        raise DataError("no examples found", path=display)
    if converted:
        warnings.warn(f"{display}: converted {converted} numeric reference value(s) to "
                      f"strings", UserWarning, stacklevel=2)
    return examples
