"""Real evaluation data: BackdoorLLM-format files (through load_examples) and WizardLM-style
evaluation sets (through load_eval_examples)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from mbdefense.data.eval_sets import load_eval_examples
from mbdefense.data.example import Example
from mbdefense.data.loading import load_examples
from mbdefense.core.errors import DataError


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, records: list) -> Path:
    return _write(path, "".join(json.dumps(r) + "\n" for r in records))


# --------------------------------------------------------------------------- BackdoorLLM files

BACKDOORLLM = [
    {"instruction": "Give three tips for staying healthy.", "input": "",
     "output": "1. Eat a balanced diet. 2. Exercise regularly. 3. Sleep well."},
    {"instruction": "BadMagic How many legs does a spider have?", "input": "",
     "output": 8},
    {"instruction": "Classify the sentiment.", "input": "I loved this film.",
     "output": "positive"},
]


def test_backdoorllm_json_array_loads_and_converts_integer_outputs(tmp_path):
    path = _write(tmp_path / "backdoor400_jailbreak_badnet.json",
                  json.dumps(BACKDOORLLM, indent=4, ensure_ascii=False))
    # By default a number where a string is required is an error ...
    with pytest.raises(DataError, match=r"badnet.json:7: field 'output': expected a string, "
                                        r"got int"):
        load_examples(path)
    # ... and the BackdoorLLM loader asks for the conversion.
    with pytest.warns(UserWarning, match="converted 1 numeric 'output'"):
        examples = load_examples(path, convert_numbers=True)
    assert examples == [
        Example(BACKDOORLLM[0]["instruction"], "", BACKDOORLLM[0]["output"]),
        Example("BadMagic How many legs does a spider have?", "", "8"),
        Example("Classify the sentiment.", "I loved this film.", "positive"),
    ]


# ------------------------------------------------------------------------ WizardLM eval sets

WIZARDLM = [
    {"idx": 1, "Skill": "Math", "Difficulty": 1, "Instruction": "What is 12 * 7?"},
    {"idx": 2, "Skill": "Writing", "Difficulty": 4,
     "Instruction": "Write a haiku about autumn."},
]


def test_wizardlm_jsonl_without_references(tmp_path):
    examples = load_eval_examples(_jsonl(tmp_path / "WizardLM_testset.jsonl", WIZARDLM))
    assert examples == [
        Example("What is 12 * 7?", "", "", meta={"idx": 1, "Skill": "Math", "Difficulty": 1}),
        Example("Write a haiku about autumn.", "", "",
                meta={"idx": 2, "Skill": "Writing", "Difficulty": 4}),
    ]


@pytest.mark.parametrize("prompt_key", ["instruction", "Instruction", "prompt"])
@pytest.mark.parametrize("ref_key", ["output", "reference", "answer", "response", None])
def test_field_aliases(tmp_path, prompt_key, ref_key):
    record = {prompt_key: "Name a colour.", "id": "a"}
    if ref_key:
        record[ref_key] = "Blue."
    path = _write(tmp_path / "eval.json", json.dumps([record]))
    assert load_eval_examples(path) == [
        Example("Name a colour.", "", "Blue." if ref_key else "", meta={"id": "a"})]


def test_input_null_reference_and_priority(tmp_path):
    path = _jsonl(tmp_path / "mixed.jsonl", [
        {"instruction": "Translate.", "input": "Hallo", "output": None},
        {"prompt": "p", "instruction": "wins", "answer": "a", "output": "first"},
    ])
    assert load_eval_examples(path) == [
        Example("Translate.", "Hallo", ""),
        Example("wins", "", "first", meta={"prompt": "p", "answer": "a"}),
    ]


def test_numeric_reference_converted_with_one_warning(tmp_path):
    path = _jsonl(tmp_path / "nums.jsonl", [{"prompt": "2+2?", "answer": 4},
                                            {"prompt": "Half of 5?", "answer": 2.5}])
    with pytest.warns(UserWarning, match="nums.jsonl: converted 2 numeric"):
        examples = load_eval_examples(path)
    assert [e.output for e in examples] == ["4", "2.5"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_eval_examples(_jsonl(tmp_path / "clean.jsonl", WIZARDLM))


def _error(path) -> DataError:
    with pytest.raises(DataError) as info:
        load_eval_examples(path)
    return info.value


def test_bad_record_names_file_line_and_field(tmp_path):
    path = _write(tmp_path / "bad.jsonl",
                  json.dumps(WIZARDLM[0]) + "\n\n" + json.dumps({"idx": 3, "Skill": "Math"})
                  + "\n")
    error = _error(path)
    assert (error.line, error.field) == (3, "instruction")
    assert str(error).startswith(f"{path}:3: field 'instruction': missing required field")
    assert "Instruction" in str(error) and "prompt" in str(error)


@pytest.mark.parametrize("record,field,fragment", [
    ({"Instruction": ["a", "b"]}, "Instruction", "expected a string, got list"),
    ({"prompt": "p", "input": 3}, "input", "expected a string, got int"),
    ({"prompt": "p", "response": {"text": "r"}}, "response", "expected a string, got object"),
    ({"prompt": "p", "output": True}, "output", "expected a string, got bool"),
])
def test_mistyped_fields(tmp_path, record, field, fragment):
    path = _write(tmp_path / "types.json", "[\n" + json.dumps(WIZARDLM[0]) + ",\n"
                  + json.dumps(record) + "\n]\n")
    assert f"types.json:3: field '{field}': {fragment}" in str(_error(path))


def test_file_level_errors(tmp_path):
    assert "invalid JSON" in str(_error(_write(tmp_path / "broken.jsonl",
                                               json.dumps(WIZARDLM[0]) + "\n{\"prompt\": \n")))
    assert _error(tmp_path / "broken.jsonl").line == 2
    assert "got list" in str(_error(_write(tmp_path / "nested.json", "[[1, 2]]")))
    assert "file not found" in str(_error(tmp_path / "missing.jsonl"))
    assert "unsupported file type '.csv'" in str(_error(_write(tmp_path / "x.csv", "a,b\n")))
    assert "no examples found" in str(_error(_write(tmp_path / "empty.jsonl", "\n")))
