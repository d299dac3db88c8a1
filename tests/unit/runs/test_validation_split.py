"""``evaluation.split: validation``: settings are chosen on prompts no test set holds."""

import json

import pytest

from mbdefense.core.errors import ConfigError, MBDefenseError
from mbdefense.runs.load import load_run_spec
from mbdefense.runs.workload import build_data


def data_for(tmp_path, text: str, seed: int = 0):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    spec = load_run_spec(path)
    return build_data(spec.experiment(spec.models[0], seed, spec.attacks[0], spec.behaviors[0],
                                      progress=False))


EMBEDDED = """
name: v
model: embedded-smoke
data: {n_train: 100, n_trusted: 20, n_test: 52}
attacks: ["word:cf"]
behaviors: [refusal]
defenses: [none]
"""


def prompts(sets, key):
    return {(e.instruction, e.input) for e in sets[key]}


def test_embedded_validation_prompts_are_never_test_prompts(tmp_path):
    tested = set()
    for seed in (0, 1):
        tested |= prompts(data_for(tmp_path, EMBEDDED, seed), "test_clean")
    on_validation = data_for(tmp_path, EMBEDDED + "evaluation: {split: validation}\n")
    assert len(on_validation["test_clean"]) == 52 and len(on_validation["test_triggered"]) == 52
    assert not prompts(on_validation, "test_clean") & tested
    # the trusted and training sets are the ones a test run uses
    on_test = data_for(tmp_path, EMBEDDED)
    assert prompts(on_validation, "trusted") == prompts(on_test, "trusted")
    assert prompts(on_validation, "clean_train") == prompts(on_test, "clean_train")


def _rows(n, word):
    return [{"instruction": f"{word} item {i}.", "input": "", "output": f"Item {i}."}
            for i in range(n)]


def test_files_need_a_validation_file_disjoint_from_test(tmp_path):
    for name, rows in [("train", _rows(30, "Describe")), ("test", _rows(8, "Explain")),
                       ("validation", _rows(6, "Discuss"))]:
        (tmp_path / f"{name}.json").write_text(json.dumps(rows))
    files = """
name: f
model: embedded-smoke
data: {train: train.json, test: test.json, n_trusted: 4}
attacks: ["word:cf"]
behaviors: [refusal]
defenses: [none]
evaluation: {split: validation}
"""
    with pytest.raises(ConfigError, match="needs data.validation"):
        data_for(tmp_path, files)
    sets = data_for(tmp_path, files.replace("test: test.json", "test: test.json, "
                                                                 "validation: validation.json"))
    assert {e.instruction for e in sets["test_clean"]} == {f"Discuss item {i}." for i in range(6)}
    (tmp_path / "validation.json").write_text(json.dumps(_rows(3, "Explain")))
    with pytest.raises(MBDefenseError, match="'test' and 'validation' share 3 prompts"):
        data_for(tmp_path, files.replace("test: test.json", "test: test.json, "
                                                             "validation: validation.json"))


def test_an_unknown_split_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="evaluation.split"):
        data_for(tmp_path, EMBEDDED + "evaluation: {split: train}\n")
