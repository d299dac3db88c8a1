"""Tests for mbdefense.data.loading: every format, error locations, saving and splitting."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest

from mbdefense.data.example import Example
from mbdefense.data.loading import load_examples, save_examples, split_examples
from mbdefense.core.errors import ConfigError, DataError


def _examples() -> list[Example]:
    return [
        Example("Translate to French.", "Good morning", "Bonjour"),
        Example("Name a prime number.", "", "7", meta={"task": "math", "poisoned": False}),
        Example("Summarize: ünïcode ✓ text.", "line one\nline two", "Short.",
                meta={"tags": ["a", "b"]}),
    ]


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("name", ["data.json", "data.jsonl"])
def test_save_and_load_round_trip(tmp_path, name):
    examples = _examples()
    written = save_examples(examples, tmp_path / "nested" / "dir" / name)
    assert written == tmp_path / "nested" / "dir" / name
    assert load_examples(written) == examples
    assert load_examples(str(written)) == examples  # str and Path sources behave the same


def test_json_file_is_an_indented_array(tmp_path):
    path = save_examples(_examples(), tmp_path / "data.json")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("[\n")
    assert json.loads(text)[1] == {"instruction": "Name a prime number.", "input": "",
                                   "output": "7", "task": "math", "poisoned": False}


def test_jsonl_alpaca_input_optional_and_extra_keys_in_meta(tmp_path):
    path = _write_lines(tmp_path / "a.jsonl", [
        json.dumps({"instruction": "i1", "output": "o1"}),
        "",
        json.dumps({"instruction": "i2", "input": None, "output": "o2", "id": 7}),
        "   ",
    ])
    assert load_examples(path) == [Example("i1", "", "o1"),
                                   Example("i2", "", "o2", meta={"id": 7})]


def test_jsonl_chat_with_system_and_history(tmp_path):
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    path = _write_lines(tmp_path / "chat.jsonl", [
        json.dumps({"messages": messages, "source": "demo"}),
        json.dumps({"messages": messages[3:]}),
    ])
    first, second = load_examples(path)
    assert first.instruction == "What is 2+2?"
    assert first.input == ""
    assert first.output == "4"
    assert first.meta == {"source": "demo", "system": "You are helpful.",
                          "history": messages[1:3]}
    assert second == Example("What is 2+2?", "", "4")
    # Saved chat examples keep system/history as top-level keys and load back equal.
    again = load_examples(save_examples([first, second], tmp_path / "out.jsonl"))
    assert again == [first, second]


def test_chat_records_inside_a_json_array(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text(json.dumps([
        {"instruction": "i", "output": "o"},
        {"messages": [{"role": "user", "content": "u"},
                      {"role": "assistant", "content": "a"}]},
    ], indent=2), encoding="utf-8")
    assert load_examples(path) == [Example("i", "", "o"), Example("u", "", "a")]


def test_csv(tmp_path):
    path = tmp_path / "data.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["instruction", "input", "output", "task"])
        writer.writerow(["Say hi", "", "hi", "greet"])
        writer.writerow(["Two\nlines", "x, y", 'a "quoted" reply', "multi"])
    assert load_examples(path) == [
        Example("Say hi", "", "hi", meta={"task": "greet"}),
        Example("Two\nlines", "x, y", 'a "quoted" reply', meta={"task": "multi"}),
    ]


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"instruction": ["i1", "i2"], "input": [None, "x"],
                      "output": ["o1", "o2"], "label": [1, None]})
    pq.write_table(table, tmp_path / "data.parquet")
    assert load_examples(tmp_path / "data.parquet") == [
        Example("i1", "", "o1", meta={"label": 1}),
        Example("i2", "x", "o2"),
    ]


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [e.to_dict() for e in _examples()[:2]]
    rows[0].update(task=None, poisoned=None)  # a table has every column in every row
    dataset = datasets.Dataset.from_list(rows)
    dataset.save_to_disk(str(tmp_path / "single"))
    expected = _examples()[:2]
    assert load_examples(tmp_path / "single") == expected

    other = datasets.Dataset.from_list([{"instruction": "t", "input": "", "output": "u"}])
    datasets.DatasetDict({"train": dataset, "test": other}).save_to_disk(str(tmp_path / "dd"))
    assert load_examples(tmp_path / "dd") == expected
    assert load_examples(tmp_path / "dd", split="test") == [Example("t", "", "u")]
    with pytest.raises(DataError, match=r"no split 'dev' \(available: test, train\)"):
        load_examples(tmp_path / "dd", split="dev")


def test_row_error_in_saved_dataset_says_row(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"instruction": "a", "output": "b"},
                                {"instruction": "c", "output": None}]
                               ).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError) as info:
        load_examples(tmp_path / "ds")
    message = str(info.value)
    assert "ds:2:" in message and "field 'output'" in message and "row 2" in message


def _hub_on(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


def test_hub_id_uses_load_dataset(monkeypatch):
    datasets = pytest.importorskip("datasets")
    _hub_on(monkeypatch)
    calls = []

    def fake_load_dataset(name, split=None):
        calls.append((name, split))
        return datasets.Dataset.from_list([{"instruction": "i", "output": "o"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_examples("some-org/some-set", split="validation") == [Example("i", "", "o")]
    assert calls == [("some-org/some-set", "validation")]


def test_hub_error_is_wrapped(monkeypatch):
    datasets = pytest.importorskip("datasets")
    _hub_on(monkeypatch)

    def failing_load_dataset(name, split=None):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", failing_load_dataset)
    with pytest.raises(DataError) as info:
        load_examples("some-org/missing-set")
    assert "some-org/missing-set" in str(info.value)
    assert "offline" in str(info.value)
    assert "\n" not in str(info.value)


def test_limit_and_bom(tmp_path):
    path = tmp_path / "bom.jsonl"
    lines = [json.dumps({"instruction": f"i{n}", "output": f"o{n}"}) for n in range(5)]
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode("utf-8") + b"\n{broken")
    assert [e.instruction for e in load_examples(path, limit=2)] == ["i0", "i1"]
    assert load_examples(path, limit=0) == []
    with pytest.raises(ConfigError):
        load_examples(path, limit=-1)
    json_path = tmp_path / "bom.json"
    json_path.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"instruction": "i",
                                                          "output": "o"}]).encode())
    assert load_examples(json_path) == [Example("i", "", "o")]


# ----------------------------------------------------------------------------- error reports

def _error(path, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        load_examples(path, **kwargs)
    return info.value


def test_json_array_element_line_number(tmp_path):
    records = [{"instruction": f"i{n}", "input": "", "output": f"o{n}"} for n in range(10)]
    records[6]["output"] = ["not", "a", "string"]
    path = tmp_path / "multi.json"
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    # Each record spans 5 lines after the opening "[" line: element k starts on 2 + 5k.
    expected_line = 2 + 5 * 6
    assert path.read_text().splitlines()[expected_line - 1].strip() == "{"
    error = _error(path)
    assert (error.line, error.field) == (expected_line, "output")
    assert f"multi.json:{expected_line}: field 'output': expected a string, got list" \
        in str(error)


def test_json_array_compact_elements_on_lines(tmp_path):
    path = tmp_path / "compact.json"
    path.write_text('[\n {"instruction": "a", "output": "b"},\n\n'
                    ' {"instruction": 5, "output": "c"}\n]\n', encoding="utf-8")
    error = _error(path)
    assert "compact.json:4: field 'instruction': expected a string, got int" in str(error)


def test_invalid_json_reports_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": "c" "output"}\n]',
                    encoding="utf-8")
    error = _error(path)
    assert error.line == 3 and "bad.json:3:" in str(error) and "invalid JSON" in str(error)


def test_json_top_level_not_array(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text('{"instruction": "a", "output": "b"}', encoding="utf-8")
    assert "expected a JSON array" in str(_error(path))
    assert "obj.json" in str(_error(path))
    jsonl_like = tmp_path / "lines.json"
    jsonl_like.write_text('{"instruction": "a", "output": "b"}\n'
                          '{"instruction": "c", "output": "d"}\n', encoding="utf-8")
    error = _error(jsonl_like)
    assert "lines.json:2:" in str(error) and ".jsonl" in str(error)


def test_json_trailing_comma_and_record_type(tmp_path):
    path = tmp_path / "comma.json"
    path.write_text('[\n {"instruction": "a", "output": "b"},\n]', encoding="utf-8")
    assert "comma.json:3:" in str(_error(path))
    wrong = tmp_path / "list.json"
    wrong.write_text('[\n {"instruction": "a", "output": "b"},\n ["a", "b"]\n]',
                     encoding="utf-8")
    error = _error(wrong)
    assert "list.json:3:" in str(error) and "got list" in str(error)


def test_malformed_jsonl_line(tmp_path):
    path = _write_lines(tmp_path / "broken.jsonl", [
        json.dumps({"instruction": "a", "output": "b"}),
        "",
        json.dumps({"instruction": "c", "output": "d"}),
        '{"instruction": "e", "output": ',
    ])
    error = _error(path)
    assert error.line == 4
    assert f"{path}:4: invalid JSON" in str(error)


def test_missing_field(tmp_path):
    path = _write_lines(tmp_path / "missing.jsonl", [
        json.dumps({"instruction": "a", "output": "b"}),
        json.dumps({"instruction": "c"}),
    ])
    error = _error(path)
    assert "missing.jsonl:2: field 'output': missing required field" in str(error)
    assert (error.line, error.field) == (2, "output")


@pytest.mark.parametrize("field,value,type_name", [
    ("instruction", 3, "int"),
    ("input", {"a": 1}, "object"),
    ("output", True, "bool"),
    ("output", None, "null"),
    ("output", {"text": "x"}, "object"),
])
def test_non_string_field(tmp_path, field, value, type_name):
    record = {"instruction": "a", "input": "", "output": "b", field: value}
    path = _write_lines(tmp_path / "types.jsonl", [json.dumps({"instruction": "x",
                                                                "output": "y"}),
                                                    json.dumps(record)])
    error = _error(path)
    assert f"types.jsonl:2: field '{field}': expected a string, got {type_name}" in str(error)


def test_numeric_output_converted_with_one_warning(tmp_path):
    path = _write_lines(tmp_path / "numbers.jsonl", [
        json.dumps({"instruction": "a", "output": 42}),
        json.dumps({"instruction": "b", "output": "text"}),
        json.dumps({"instruction": "c", "output": 2.5}),
    ])
    assert "numbers.jsonl:1: field 'output': expected a string, got int" in str(_error(path))
    with pytest.warns(UserWarning) as record:
        examples = load_examples(path, convert_numbers=True)
    assert [e.output for e in examples] == ["42", "text", "2.5"]
    messages = [str(w.message) for w in record if issubclass(w.category, UserWarning)]
    assert len(messages) == 1
    assert "numbers.jsonl" in messages[0] and "converted 2" in messages[0]


def test_no_warning_without_conversion(tmp_path):
    path = save_examples(_examples(), tmp_path / "clean.jsonl")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_examples(path)


@pytest.mark.parametrize("name,content", [
    ("empty.json", ""), ("empty_array.json", "[ ]\n"), ("empty.jsonl", "\n\n  \n"),
    ("empty.csv", ""), ("header_only.csv", "instruction,input,output\n"),
])
def test_empty_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    error = _error(path)
    assert name in str(error) and "no examples found" in str(error)


def test_missing_file(tmp_path):
    error = _error(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in str(error) and "file not found" in str(error)
    # A str with a data-file extension is a missing file, not a Hub id.
    assert "file not found" in str(_error("does/not/exist.json"))


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps({"instruction": "a", "output": "b"}).encode() + b"\n"
                     + json.dumps({"instruction": "c", "output": "d"}).encode() + b"\n"
                     + '{"instruction": "caf\u00e9", "output": "e"}\n'.encode("latin-1"))
    error = _error(path)
    assert error.line == 3
    assert "latin1.jsonl:3:" in str(error) and "not valid UTF-8" in str(error)


def test_unknown_extension(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("instruction\toutput\n", encoding="utf-8")
    error = _error(path)
    assert "data.txt" in str(error) and "'.txt'" in str(error)
    for suffix in (".json", ".jsonl", ".csv", ".parquet"):
        assert suffix in str(error)


@pytest.mark.parametrize("messages,fragment", [
    ([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
     "no assistant reply"),
    ([{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"},
      {"role": "user", "content": "u2"}], "must end with the assistant reply"),
    ([], "empty"),
])
def test_chat_without_final_assistant_reply(tmp_path, messages, fragment):
    path = _write_lines(tmp_path / "chat.jsonl", [
        json.dumps({"messages": [{"role": "user", "content": "q"},
                                 {"role": "assistant", "content": "r"}]}),
        json.dumps({"messages": messages}),
    ])
    error = _error(path)
    assert "chat.jsonl:2: field 'messages':" in str(error) and fragment in str(error)


def test_chat_bad_message(tmp_path):
    path = _write_lines(tmp_path / "chat.jsonl", [json.dumps({"messages": [
        {"role": "user", "content": "q"}, {"role": "bot", "content": "r"}]})])
    assert "chat.jsonl:1: field 'messages[1].role'" in str(_error(path))


def test_csv_errors_report_lines(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('instruction,output\n"multi\nline",x\nonly-instruction\n',
                    encoding="utf-8")
    error = _error(path)
    assert "rows.csv:4: field 'output': missing required field" in str(error)
    header = tmp_path / "header.csv"
    header.write_text("prompt,output\na,b\n", encoding="utf-8")
    assert "header.csv:1: field 'instruction': missing required column" in str(_error(header))


# ------------------------------------------------------------------------------------ saving

def test_save_leaves_no_temp_files_and_overwrites(tmp_path):
    target = tmp_path / "out.jsonl"
    save_examples(_examples(), target)
    save_examples(_examples()[:1], target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]
    assert len(load_examples(target)) == 1


def test_save_unsupported_extension_writes_nothing(tmp_path):
    with pytest.raises(DataError, match=r"\.csv"):
        save_examples(_examples(), tmp_path / "sub" / "out.csv")
    assert list(tmp_path.iterdir()) == []


def test_save_unserializable_meta_writes_nothing(tmp_path):
    bad = [Example("a", "", "b", meta={"obj": object()})]
    with pytest.raises(DataError, match="example 0"):
        save_examples(bad, tmp_path / "out.json")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------- splitting

def _numbered(n: int) -> list[Example]:
    return [Example(f"i{k}", "", f"o{k}") for k in range(n)]


def test_split_fractions_deterministic_and_disjoint():
    data = _numbered(50)
    snapshot = list(data)
    train, test = split_examples(data, (0.8, 0.2), seed=13)
    assert data == snapshot  # input not mutated
    assert (len(train), len(test)) == (40, 10)
    ids = [e.instruction for e in train + test]
    assert sorted(ids) == sorted(e.instruction for e in data)  # disjoint and complete
    assert split_examples(data, (0.8, 0.2), seed=13) == [train, test]
    assert split_examples(data, (0.8, 0.2), seed=14) != [train, test]
    assert [e.instruction for e in train] != [e.instruction for e in data[:40]]  # shuffled


def test_split_fractions_float_sum_and_remainder():
    parts = split_examples(_numbered(10), (0.7, 0.2, 0.1), seed=0)
    assert [len(p) for p in parts] == [7, 2, 1]
    parts = split_examples(_numbered(10), (0.5, 0.25), seed=0)
    assert [len(p) for p in parts] == [5, 2]


def test_split_sizes():
    data = _numbered(10)
    parts = split_examples(data, (3, 0, 4), seed=1)
    assert [len(p) for p in parts] == [3, 0, 4]
    names = [e.instruction for p in parts for e in p]
    assert len(set(names)) == 7
    with pytest.raises(ConfigError, match="more than the 10 examples"):
        split_examples(data, (6, 5), seed=1)


@pytest.mark.parametrize("spec", [(0.7, 0.4), (), (-1, 2), (0.5, 3), "0.8", 0.8])
def test_split_bad_spec(spec):
    with pytest.raises(ConfigError):
        split_examples(_numbered(10), spec, seed=0)
