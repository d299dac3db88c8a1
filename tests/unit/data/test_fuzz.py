"""Property-based fuzzing of load_examples: any file content gives Examples or one DataError
line naming the file; nothing else escapes (no other exception type, no traceback text)."""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mbdefense.core.errors import DataError
from mbdefense.data.eval_sets import load_eval_examples
from mbdefense.data.example import Example
from mbdefense.data.loading import load_examples, save_examples

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_BAD_CHARS = {chr(c) for c in [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20),
                               *range(0x7F, 0xA0)]}

KEYS = st.sampled_from(["instruction", "input", "output", "messages", "role", "content",
                        "meta", "Instruction", "id", ""])
SCALARS = (st.none() | st.booleans() | st.integers(-10**30, 10**30)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
VALUES = st.recursive(SCALARS, lambda children: st.lists(children, max_size=4)
                      | st.dictionaries(KEYS | st.text(max_size=5), children, max_size=5),
                      max_leaves=20)
CLEAN_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters=_BAD_CHARS),
                     max_size=30)
TEXT = st.one_of(CLEAN_TEXT, CLEAN_TEXT, CLEAN_TEXT, st.text(max_size=10))
GOOD_RECORD = st.fixed_dictionaries({"instruction": CLEAN_TEXT, "output": CLEAN_TEXT},
                                    optional={"input": CLEAN_TEXT | st.none(), "id": VALUES})
RECORDS = st.one_of(
    st.fixed_dictionaries({"instruction": TEXT, "output": TEXT},
                          optional={"input": TEXT | st.none(), "id": VALUES}),
    st.fixed_dictionaries({"messages": st.lists(
        st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "x"]),
                               "content": TEXT | SCALARS}), max_size=4)}),
    st.dictionaries(KEYS, VALUES, max_size=5),
    VALUES,
)


FRAGMENTS = [*'[]{}",:\n\\', "NaN", "-Infinity", "true", "null", "1e999", "\\ud800",
             "\\u0000", '"instruction"', '"output"', '"messages"', "instruction,output\n"]


def _file(directory: str, suffix: str, content: bytes | str) -> Path:
    path = Path(directory) / f"fuzzed-input{suffix}"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8",
                                                                             "surrogatepass"))
    return path


def _check(path: Path, loader=load_examples) -> None:
    try:
        examples = loader(path)
    except DataError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, message
        assert path.name in message, message
        event(f"DataError: {re.sub(r'[0-9(].*', '', exc.reason)[:40]}")
        return
    event("loaded")
    assert examples and all(isinstance(e, Example) for e in examples)
    for example in examples:
        for text in (example.instruction, example.input, example.output):
            assert isinstance(text, str) and not (_BAD_CHARS & set(text)), repr(text)


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory() as directory:
        yield directory


@FUZZ
@given(suffix=st.sampled_from([".json", ".jsonl", ".csv", ".parquet"]),
       content=st.binary(max_size=300))
def test_random_bytes(workdir, suffix, content):
    _check(_file(workdir, suffix, content))


@FUZZ
@given(suffix=st.sampled_from([".json", ".jsonl", ".csv"]),
       content=st.lists(st.characters(codec="utf-8") | st.sampled_from(FRAGMENTS),
                        max_size=80).map("".join))
def test_random_text(workdir, suffix, content):
    _check(_file(workdir, suffix, content))


@FUZZ
@given(records=st.lists(GOOD_RECORD, max_size=4) | st.lists(RECORDS, max_size=5),
       indent=st.sampled_from([None, 1]), cut=st.sampled_from([0, 0, 0, 0, 1, 2, 7]))
def test_random_json_array(workdir, records, indent, cut):
    text = json.dumps(records, indent=indent, allow_nan=True)
    path = _file(workdir, ".json", text[:len(text) - cut])
    _check(path)
    _check(path, load_eval_examples)


@FUZZ
@given(records=st.lists(GOOD_RECORD, max_size=4) | st.lists(RECORDS | VALUES, max_size=6),
       blank=st.booleans())
def test_random_jsonl(workdir, records, blank):
    lines = [json.dumps(r, allow_nan=True) for r in records]
    if blank:
        lines.insert(len(lines) // 2, "   ")
    path = _file(workdir, ".jsonl", "\n".join(lines))
    _check(path)
    _check(path, load_eval_examples)


@FUZZ
@given(header=st.permutations(["instruction", "input", "output", "task"]),
       drop=st.sampled_from([None, None, None, 0, 1, 2]), extra=st.lists(TEXT, max_size=2),
       newline=st.sampled_from(["\n", "\r\n", "\r"]), data=st.data())
def test_random_csv(workdir, header, drop, extra, newline, data):
    header = [name for n, name in enumerate(header) if n != drop] + extra
    width = len(header)
    rows = data.draw(st.lists(st.lists(CLEAN_TEXT.filter(str.strip), min_size=width,
                                       max_size=width)
                              | st.lists(TEXT, min_size=1, max_size=width + 1), max_size=5))
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=newline).writerows([header, *rows])
    _check(_file(workdir, ".csv", buffer.getvalue()))


@FUZZ
@given(examples=st.lists(st.builds(Example, instruction=CLEAN_TEXT, input=CLEAN_TEXT,
                                   output=CLEAN_TEXT,
                                   meta=st.dictionaries(st.sampled_from(["id", "task"]),
                                                        VALUES, max_size=2)),
                         min_size=1, max_size=4),
       suffix=st.sampled_from([".json", ".jsonl"]))
def test_saved_examples_load_back(workdir, examples, suffix):
    path = Path(workdir) / f"saved{suffix}"
    try:
        save_examples(examples, path)
    except DataError as exc:  # e.g. a lone surrogate in meta text cannot be written
        assert "\n" not in str(exc)
        return
    try:
        loaded = load_examples(path)
    except DataError as exc:  # meta the loader refuses (e.g. a lone surrogate)
        assert "\n" not in str(exc) and "saved" in str(exc)
        return
    assert [(e.instruction, e.input, e.output) for e in loaded] == \
        [(e.instruction, e.input, e.output) for e in examples]
