"""Where a source comes from: local first; the hub only for hub-shaped ids and never offline."""

from __future__ import annotations

import json

import pytest

from mbdefense.core.errors import DataError
from mbdefense.data.example import Example
from mbdefense.data.loading import hub_offline_setting, load_examples, looks_like_hub_id

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@pytest.fixture()
def hub_calls(monkeypatch):
    """Records datasets.load_dataset calls; the fake returns one example."""
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, split=None):
        calls.append((name, split))
        return datasets.Dataset.from_list([{"instruction": "i", "output": "o"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


@pytest.fixture()
def hub_on(monkeypatch):
    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _message(source, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_examples(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", ["tatsu-lab/alpaca", "HuggingFaceH4/ultrachat_200k",
                                  "org/set-v1.2", "a/b", "user_1/data.set"])
def test_hub_shaped_ids(name):
    assert looks_like_hub_id(name)


@pytest.mark.parametrize("name", [
    "train", "data/train.json", "data/train.JSONL", "org/set.csv", "org/notes.txt",
    "./org/set", "/org/set", "~/org/set", ".org/set", "org/.set", "-org/set", "org/set-",
    "a/b/c", "org/", "/set", "org//set", "org/se t", "org/s--t", "org/s..t", "org\\set",
    "C:/data", "", "x" * 60 + "/" + "y" * 60])
def test_path_shaped_names(name):
    assert not looks_like_hub_id(name)


@pytest.mark.parametrize("name", ["train", "data/train.json", "./org/set", "~/org/set",
                                  "org/set.jsonl", "a/b/c"])
def test_missing_local_names_are_never_tried_on_the_hub(name, hub_on, hub_calls):
    message = _message(name)
    assert message.endswith("file not found") and name.lstrip("~") in message
    assert hub_calls == []


def test_path_objects_are_never_hub_ids(tmp_path, hub_on, hub_calls, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    assert "file not found" in _message(Path("owner/name"))
    assert hub_calls == []


@pytest.mark.parametrize("variable,value", [("HF_HUB_OFFLINE", "1"),
                                            ("HF_DATASETS_OFFLINE", "1"),
                                            ("HF_HUB_OFFLINE", "true")])
def test_offline_is_an_immediate_error(monkeypatch, hub_calls, variable, value):
    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, value)
    assert hub_offline_setting() == f"{variable}={value}"
    message = _message("owner/name", split="test")
    assert message == f"owner/name: not found locally, and the hub is off ({variable}={value})"
    assert hub_calls == []


def test_offline_off_values(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "")
    assert hub_offline_setting() is None


def test_hub_id_loads_when_online(hub_on, hub_calls):
    assert load_examples("owner/name") == [Example("i", "", "o")]
    assert load_examples("owner/name", split="validation", limit=1) == [Example("i", "", "o")]
    assert hub_calls == [("owner/name", "train"), ("owner/name", "validation")]


def test_hub_failure_is_one_line_and_one_call(monkeypatch, hub_on):
    datasets = pytest.importorskip("datasets")
    calls = []

    def failing(name, split=None):
        calls.append(name)
        raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub\nor cannot be "
                                f"accessed.\n\nTraceback-like noise")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    message = _message("owner/missing")
    assert message.startswith("owner/missing: not found locally, and the Hugging Face Hub "
                              "could not provide it (split 'train'): FileNotFoundError: ")
    assert "doesn't exist on the Hub" in message
    assert calls == ["owner/missing"]


def test_hub_dataset_rows_are_validated(monkeypatch, hub_on):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split=None:
                        datasets.Dataset.from_list([{"instruction": "a", "output": "b"},
                                                    {"instruction": "c\x1b", "output": "d"}]))
    message = _message("owner/name")
    assert message.startswith("owner/name:2: field 'instruction': control character U+001B")
    assert "(row 2 of split 'train')" in message


def test_local_path_wins_over_the_hub(tmp_path, monkeypatch, hub_on, hub_calls):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "owner"
    folder.mkdir()
    (folder / "name").write_text(json.dumps({"instruction": "a", "output": "b"}))
    # An existing file without a supported extension is reported, not looked up on the hub.
    assert "unsupported file type" in _message("owner/name")
    assert hub_calls == []


def test_empty_and_odd_sources(tmp_path):
    assert "no data source given" in _message("")
    assert "no data source given" in _message("   ")
    assert "file not found" in _message(str(tmp_path / "a\x00b.json"))
    assert "file not found" in _message("~no_such_user_mbdefense/x.json")
    with pytest.raises(Exception) as info:
        load_examples(42)  # type: ignore[arg-type]
    assert "path or a string" in str(info.value)
