"""Evaluation prompt sets, e.g. the WizardLM test set, read as a clean test set.

Unlike training data, an evaluation record needs no reference answer. Errors are reported
like :func:`mbdefense.data.loading.load_examples` reports them:
``path:line: field 'name': what is wrong``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from pathlib import Path
from typing import Any

from mbdefense.core.errors import DataError
from mbdefense.data.example import Example
from mbdefense.data.limits import one_line, type_name
from mbdefense.data.readers import iter_json_array, iter_jsonl
from mbdefense.data.records import RecordError, check_nesting, check_text

__all__ = ["load_eval_examples", "INSTRUCTION_FIELDS", "REFERENCE_FIELDS"]

#: Field names holding the prompt, first match wins (WizardLM's test set uses "Instruction").
INSTRUCTION_FIELDS = ("instruction", "Instruction", "prompt")
#: Field names holding the optional reference answer, first match wins.
REFERENCE_FIELDS = ("output", "reference", "answer", "response")


def _first_key(record: dict, names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in record), None)


def _eval_example(record: Any) -> tuple[Example, bool]:
    """The example, and whether a numeric reference was converted to a string."""
    if not isinstance(record, dict):
        raise RecordError(f"expected an object (a record), got {type_name(record)}")
    check_nesting(record)
    key = _first_key(record, INSTRUCTION_FIELDS)
    if key is None:
        raise RecordError(f"missing required field (one of {', '.join(INSTRUCTION_FIELDS)})",
                          INSTRUCTION_FIELDS[0])
    instruction = record[key]
    if not isinstance(instruction, str):
        raise RecordError(f"expected a string, got {type_name(instruction)}", key)
    check_text(instruction, key)
    text_input = record.get("input")
    if text_input is None:
        text_input = ""
    elif not isinstance(text_input, str):
        raise RecordError(f"expected a string, got {type_name(text_input)}", "input")
    check_text(text_input, "input")
    ref_key = _first_key(record, REFERENCE_FIELDS)
    reference = record.get(ref_key) if ref_key else None
    converted = False
    if reference is None:
        reference = ""
    elif (isinstance(reference, numbers.Real) and not isinstance(reference, bool)
          and math.isfinite(reference)):
        reference, converted = str(reference), True
    elif not isinstance(reference, str):
        raise RecordError(f"expected a string, got {type_name(reference)}", ref_key)
    check_text(reference, ref_key or "output")
    meta = {k: v for k, v in record.items() if k not in (key, "input", ref_key)}
    return Example(instruction=instruction, input=text_input, output=reference,
                   meta=meta), converted


def load_eval_examples(path: str | Path) -> list[Example]:
    """Read an evaluation set (e.g. WizardLM's test set) from a ``.json`` array or ``.jsonl``.

    Each record holds the prompt under ``instruction``, ``Instruction`` or ``prompt`` (the
    first present wins; a string), an optional ``input`` string, and an optional reference
    answer under ``output``, ``reference``, ``answer`` or ``response`` (missing or null gives
    an empty ``output``; a finite number is converted with one ``UserWarning``). Other keys
    go to ``meta``. Text is checked and files are read within the bounds of
    :func:`~mbdefense.data.loading.load_examples`. Raises
    :class:`~mbdefense.core.errors.DataError` (one line) naming the file, the line and the
    field for a missing file, another extension, invalid JSON or UTF-8, a record that is not
    an object, a missing prompt, a non-string value (NaN and Infinity included), a control
    character, an oversized record or field, or a file with no records.
    """
    display = one_line(str(path), 400)
    file = Path(path).expanduser()
    try:
        is_file, exists = file.is_file(), file.exists()
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot access the path: {one_line(exc, 120)}",
                        path=display) from None
    if not is_file:
        raise DataError("file not found" if not exists else "not a regular file",
                        path=display)
    readers = {".json": iter_json_array, ".jsonl": iter_jsonl}
    reader = readers.get(file.suffix.lower())
    if reader is None:
        suffix = one_line(file.suffix or "(no extension)", 40)
        raise DataError(f"unsupported file type '{suffix}' for an evaluation set; "
                        f"supported: {', '.join(readers)}", path=display)
    examples: list[Example] = []
    converted = 0
    for line, record in reader(file, display):
        try:
            example, was_converted = _eval_example(record)
        except RecordError as exc:
            raise DataError(exc.message, path=display, line=line, field=exc.field) from None
        examples.append(example)
        converted += was_converted
    if not examples:
        raise DataError("no examples found", path=display)
    if converted:
        warnings.warn(f"{display}: converted {converted} numeric reference value(s) to "
                      f"strings", UserWarning, stacklevel=2)
    return examples
