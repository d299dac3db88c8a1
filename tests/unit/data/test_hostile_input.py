"""Hostile or broken data files: each is one DataError line naming file, line and field."""

from __future__ import annotations

import csv
import json
import time
import tracemalloc
from pathlib import Path

import pytest

from mbdefense.core.errors import DataError
from mbdefense.data.eval_sets import load_eval_examples
from mbdefense.data.example import Example
from mbdefense.data.limits import MAX_DEPTH, MAX_FIELD_CHARS, MAX_RECORD_CHARS
from mbdefense.data.loading import load_examples

GOOD = {"instruction": "Say hi.", "input": "", "output": "hi"}


def _error(path, loader=load_examples) -> DataError:
    with pytest.raises(DataError) as info:
        loader(path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert Path(path).name in message or str(path) in message, message
    return info.value


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _json_array(path: Path, elements: list[str]) -> Path:
    # One element per line: element k (0-based) starts on line k + 2.
    path.write_text("[\n" + ",\n".join(elements) + "\n]\n", encoding="utf-8")
    return path


def _csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


# ----------------------------------------------------------------- non-string required fields

BAD_VALUES = [("NaN", "NaN"), ("Infinity", "Infinity"), ("-Infinity", "-Infinity"),
              ("0", "int"), ("2.5", "float"), ("true", "bool"), ("null", "null"),
              ("[]", "list"), ("{}", "object")]


@pytest.mark.parametrize("raw,kind", BAD_VALUES)
@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_output_must_be_a_string(tmp_path, fmt, raw, kind):
    good = json.dumps(GOOD)
    bad = '{"instruction": "q", "output": %s}' % raw
    path = tmp_path / f"data.{fmt}"
    if fmt == "json":
        _json_array(path, [good, good, bad])
    else:
        _jsonl(path, [good, good, bad])
    error = _error(path)
    assert (error.line, error.field) == (4 if fmt == "json" else 3, "output")
    assert f"data.{fmt}:{error.line}: field 'output': expected a string, got {kind}" \
        in str(error)


@pytest.mark.parametrize("field", ["instruction", "input"])
def test_nan_in_other_text_fields(tmp_path, field):
    record = dict(GOOD)
    text = json.dumps(record).replace(f'"{field}": "{record[field]}"', f'"{field}": NaN')
    error = _error(_jsonl(tmp_path / "nan.jsonl", [text]))
    assert f"nan.jsonl:1: field '{field}': expected a string, got NaN" in str(error)


def test_csv_blank_required_cells(tmp_path):
    path = _csv(tmp_path / "cells.csv", [["instruction", "input", "output"],
                                         ["q", "", "a"], ["q2", "x", ""]])
    assert "cells.csv:3: field 'output': empty value" in str(_error(path))
    path = _csv(tmp_path / "blank.csv", [["instruction", "output"], ["  ", "a"]])
    assert "blank.csv:2: field 'instruction': empty value" in str(_error(path))
    # A blank optional cell is fine.
    path = _csv(tmp_path / "ok.csv", [["instruction", "input", "output"], ["q", "", "a"]])
    assert load_examples(path) == [Example("q", "", "a")]


# ------------------------------------------------------------------------ control characters

@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x07", "\x7f", "\x85", "\x0b"])
@pytest.mark.parametrize("field", ["instruction", "input", "output"])
def test_control_characters_rejected(tmp_path, field, char):
    record = dict(GOOD, **{field: f"ab{char}cd"})
    for name, write in (("c.jsonl", lambda p: _jsonl(p, [json.dumps(GOOD),
                                                         json.dumps(record)])),
                        ("c.json", lambda p: _json_array(p, [json.dumps(GOOD),
                                                             json.dumps(record)]))):
        error = _error(write(tmp_path / name))
        assert error.field == field
        assert f"control character U+{ord(char):04X} at character 3" in str(error)
    path = _csv(tmp_path / "c.csv", [list(GOOD), list(GOOD.values()), list(record.values())])
    error = _error(path)
    assert (error.line, error.field) == (3, field)
    assert f"control character U+{ord(char):04X}" in str(error)


def test_tab_newline_carriage_return_allowed(tmp_path):
    record = {"instruction": "a\tb", "input": "line1\r\nline2\n", "output": "x\ry"}
    path = _jsonl(tmp_path / "ws.jsonl", [json.dumps(record)])
    assert load_examples(path) == [Example("a\tb", "line1\r\nline2\n", "x\ry")]


def test_control_character_in_chat_content(tmp_path):
    record = {"messages": [{"role": "user", "content": "hi"},
                           {"role": "assistant", "content": "bad\x1b[31m"}]}
    error = _error(_jsonl(tmp_path / "chat.jsonl", [json.dumps(record)]))
    assert "chat.jsonl:1: field 'messages[1].content': control character U+001B" \
        in str(error)


def test_lone_surrogate_rejected(tmp_path):
    path = _jsonl(tmp_path / "sur.jsonl", [json.dumps(GOOD),
                                           '{"instruction": "a\\ud800", "output": "b"}'])
    assert "sur.jsonl:2: field 'instruction': lone surrogate U+D800" in str(_error(path))
    path = _jsonl(tmp_path / "meta.jsonl", ['{"instruction": "a", "output": "b", '
                                            '"note": ["\\udfff"]}'])
    assert "meta.jsonl:1: field 'note': lone surrogate" in str(_error(path))
    # A proper pair is an ordinary character.
    path = _jsonl(tmp_path / "pair.jsonl", ['{"instruction": "\\ud83d\\ude00", "output": "b"}'])
    assert load_examples(path)[0].instruction == "\U0001F600"


def test_eval_sets_reject_control_characters_and_nan(tmp_path):
    path = _jsonl(tmp_path / "eval.jsonl", ['{"prompt": "ok"}', '{"prompt": "a\\u0000b"}'])
    assert "eval.jsonl:2: field 'prompt': control character U+0000" \
        in str(_error(path, load_eval_examples))
    path = _jsonl(tmp_path / "ref.jsonl", ['{"prompt": "ok", "answer": NaN}'])
    assert "ref.jsonl:1: field 'answer': expected a string, got NaN" \
        in str(_error(path, load_eval_examples))


# --------------------------------------------------------------------------- size and depth

@pytest.mark.parametrize("fmt", ["json", "jsonl"])
@pytest.mark.parametrize("where", ["record", "meta"])
def test_deep_nesting(tmp_path, fmt, where):
    deep = "[" * 100_000 + "]" * 100_000
    if where == "record":
        bad = deep
    else:
        bad = '{"instruction": "a", "output": "b", "x": %s}' % deep
    path = tmp_path / f"deep.{fmt}"
    if fmt == "json":
        _json_array(path, [json.dumps(GOOD), bad])
    else:
        _jsonl(path, [json.dumps(GOOD), bad])
    error = _error(path)
    assert f"nested deeper than {MAX_DEPTH} levels" in str(error)
    assert error.line == (3 if fmt == "json" else 2)


def test_deep_top_level_json(tmp_path):
    path = tmp_path / "top.json"
    path.write_text("[" * 200_000, encoding="utf-8")
    assert f"nested deeper than {MAX_DEPTH} levels" in str(_error(path))


def test_nesting_within_the_limit_is_kept(tmp_path):
    value: object = "leaf"
    for _ in range(MAX_DEPTH - 1):  # the record is level 1, "x" holds levels 2..MAX_DEPTH
        value = [value]
    record = dict(GOOD, x=value)
    for name in ("ok.jsonl", "ok.json"):
        path = tmp_path / name
        if name.endswith("l"):
            _jsonl(path, [json.dumps(record)])
        else:
            _json_array(path, [json.dumps(record)])
        assert load_examples(path)[0].meta["x"] == value
    too_deep = _jsonl(tmp_path / "over.jsonl", [json.dumps(dict(GOOD, x=[value]))])
    assert "nested deeper" in str(_error(too_deep))


def test_field_length_limit(tmp_path):
    ok = dict(GOOD, output="a" * MAX_FIELD_CHARS)
    long = dict(GOOD, output="a" * (MAX_FIELD_CHARS + 1))
    assert len(load_examples(_jsonl(tmp_path / "ok.jsonl", [json.dumps(ok)]))[0].output) \
        == MAX_FIELD_CHARS
    error = _error(_jsonl(tmp_path / "long.jsonl", [json.dumps(GOOD), json.dumps(long)]))
    assert (error.line, error.field) == (2, "output")
    assert f"the limit is {MAX_FIELD_CHARS:,}" in str(error)


def _bounded(load, path, max_seconds=20.0, max_peak_mb=48.0):
    """Run load(path); return its DataError, checking time and peak Python memory."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(DataError) as info:
            load(path)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - started < max_seconds
    assert peak < max_peak_mb * 2 ** 20, f"peak {peak / 2 ** 20:.0f} MB"
    assert "\n" not in str(info.value) and path.name in str(info.value)
    return info.value


def test_50mb_single_line_jsonl(tmp_path):
    path = tmp_path / "huge.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps(GOOD) + "\n")
        handle.write('{"instruction": "a", "output": "' + "x" * 50_000_000 + '"}\n')
    error = _bounded(load_examples, path)
    assert error.line == 2 and f"longer than {MAX_RECORD_CHARS:,}" in str(error)


def test_50mb_single_line_json_array(tmp_path):
    path = tmp_path / "huge.json"
    with path.open("w", encoding="utf-8") as handle:
        handle.write('[{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "'
                     + "y" * 50_000_000 + '"}]')
    error = _bounded(load_examples, path)
    assert error.line == 1 and f"longer than {MAX_RECORD_CHARS:,}" in str(error)
    single = tmp_path / "string.json"
    single.write_text('"' + "z" * 50_000_000 + '"', encoding="utf-8")
    assert "got string" in str(_bounded(load_examples, single))


def test_large_compact_json_array_loads(tmp_path):
    # Many small records on one line are an ordinary compact JSON file, not an attack.
    records = [{"instruction": f"q{n}", "input": "", "output": "a" * 200} for n in range(20_000)]
    path = tmp_path / "compact.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    assert path.stat().st_size > 4_000_000
    started = time.perf_counter()
    examples = load_examples(path)
    assert time.perf_counter() - started < 20
    assert len(examples) == 20_000 and examples[-1].instruction == "q19999"


def test_huge_csv_row(tmp_path):
    path = tmp_path / "huge.csv"
    path.write_text("instruction,output\nq,\"" + "x" * (MAX_RECORD_CHARS + 10) + "\"\n",
                    encoding="utf-8")
    error = _bounded(load_examples, path)
    assert error.line == 2 and "longer than" in str(error)


def test_huge_integer_is_invalid_json(tmp_path):
    path = _jsonl(tmp_path / "int.jsonl", ['{"instruction": "a", "output": "b", "n": %s}'
                                           % ("9" * 5000)])
    error = _error(path)
    assert error.line == 1 and "invalid JSON" in str(error)
    path = _json_array(tmp_path / "int.json", [json.dumps(GOOD), "9" * 5000])
    assert "int.json:3: invalid JSON" in str(_error(path))


# -------------------------------------------------------------------------- file-level cases

@pytest.mark.parametrize("name", ["latin1.json", "latin1.jsonl", "latin1.csv"])
def test_non_utf8(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".csv"):
        body = "instruction,output\nq,a\ncaf\u00e9,b\n"
    elif name.endswith(".jsonl"):
        body = json.dumps(GOOD) + "\n" + '{"instruction": "caf\u00e9", "output": "b"}\n'
    else:
        body = "[\n" + json.dumps(GOOD) + ',\n{"instruction": "caf\u00e9", "output": "b"}\n]'
    path.write_bytes(body.encode("latin-1"))
    error = _error(path)
    assert "not valid UTF-8 (byte 0xe9" in str(error)
    assert error.line == (2 if name.endswith(".jsonl") else 3)


@pytest.mark.parametrize("name", ["e.json", "e.jsonl", "e.csv", "e.parquet"])
def test_empty_files(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    message = str(_error(path))
    assert "no examples found" in message or "cannot read Parquet file" in message


def test_folder_that_is_not_a_saved_dataset(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets, "load_from_disk",
                        lambda *a, **k: pytest.fail("must not be called"))
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "train.json").write_text("[]", encoding="utf-8")
    assert "not a dataset saved with save_to_disk" in str(_error(folder))


def test_broken_saved_dataset_folder(tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "state.json").write_text("{not json\n\n", encoding="utf-8")
    (folder / "dataset_info.json").write_text("{}", encoding="utf-8")
    assert "cannot load the dataset folder" in str(_error(folder))


@pytest.mark.parametrize("text,kind", [('{"instruction": "a", "output": "b"}', "object"),
                                       ('"just text"', "string"), ("42", "number"),
                                       ("null", "null"), ("true", "bool")])
def test_json_top_level_not_a_list(tmp_path, text, kind):
    path = tmp_path / "top.json"
    path.write_text("\n" + text + "\n", encoding="utf-8")
    error = _error(path)
    assert f"top.json:2: expected a JSON array of records at the top level, got {kind}" \
        in str(error)


def test_duplicate_keys_keep_the_last(tmp_path):
    path = _jsonl(tmp_path / "dup.jsonl", ['{"instruction": "a", "instruction": "b", '
                                           '"output": "c"}'])
    assert load_examples(path) == [Example("b", "", "c")]


def test_file_name_with_a_newline_stays_one_line(tmp_path):
    path = _jsonl(tmp_path / "we\nird.jsonl", ['{"instruction": 1, "output": "b"}'])
    with pytest.raises(DataError) as info:
        load_examples(path)
    assert "\n" not in str(info.value) and "we\\nird.jsonl:1:" in str(info.value)


def test_odd_csv_header_names_stay_one_line(tmp_path):
    path = _csv(tmp_path / "head.csv", [["instruction", "a\nb", "a\nb", "output"]])
    error = _error(path)
    assert "head.csv:1: field 'a\\nb': duplicate column" in str(error)
