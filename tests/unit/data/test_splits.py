"""check_disjoint: the experiment's clean sets must not share a prompt."""

from __future__ import annotations

import ast

import pytest

import mbdefense.data as data
from mbdefense.core.errors import ConfigError, DataError
from mbdefense.data.example import Example
from mbdefense.data.splits import check_disjoint, prompt_key, split_examples


def _set(*prompts: str) -> list[Example]:
    return [Example(p, "", f"answer to {p}") for p in prompts]


def _error(named_sets, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        check_disjoint(named_sets, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_disjoint_sets_pass():
    check_disjoint({"train": _set("a", "b"), "trusted": _set("c"), "test": _set("d", "e")})
    check_disjoint({"train": _set("a", "a")})  # duplicates inside one set are not checked
    check_disjoint({})


def test_overlap_names_both_sets_count_and_an_example():
    train = _set("Name a prime number.", "Add 2 and 3.", "Spell cat.")
    test = _set("  name   a PRIME number. ", "add 2 and 3.", "Other.")
    message = _error({"train": train, "trusted": _set("x"), "test": test})
    assert message == ("sets 'train' and 'test' share 2 prompts, e.g. "
                       "'Name a prime number.'")


def test_outputs_do_not_matter_and_input_counts():
    train = [Example("Translate.", "Hello", "Bonjour")]
    assert "share 1 prompt," in _error({"train": train,
                                         "test": [Example("translate.", "hello", "Hallo")]})
    # Same words split differently between instruction and input are different prompts.
    check_disjoint({"train": [Example("Translate Hello", "", "x")],
                    "test": [Example("Translate", "Hello", "x")]})
    assert prompt_key(Example(" A\tB\n", " C ", "")) == ("a b", "c")


def test_first_overlapping_pair_is_reported_with_source():
    sets = {"train": _set("a"), "trusted": _set("b", "c"), "test": _set("c", "b", "a")}
    message = _error(sets, source="configs/run.yaml")
    assert message == "configs/run.yaml: sets 'train' and 'test' share 1 prompt, e.g. 'a'"


def test_example_prompt_is_cut_to_80_characters():
    long = "word " * 40 + "\nwith a second line"
    message = _error({"trusted": _set(long), "test": _set(long.upper())})
    shown = message.split("e.g. ", 1)[1]
    assert len(ast.literal_eval(shown)) == 80
    assert ast.literal_eval(shown).endswith("\u2026")
    assert "\\n" not in shown


def test_bad_arguments():
    with pytest.raises(ConfigError):
        check_disjoint([_set("a")])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="set 'train'"):
        check_disjoint({"train": ["a", "b"]})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="set 'test'"):
        check_disjoint({"test": "abc"})  # type: ignore[dict-item]


def test_split_parts_are_disjoint_and_exported():
    examples = _set(*[f"prompt {n}" for n in range(30)])
    train, trusted, test = split_examples(examples, (0.6, 0.2, 0.2), seed=3)
    data.check_disjoint({"train": train, "trusted": trusted, "test": test})
    assert data.split_examples is split_examples
    from mbdefense.data.loading import split_examples as from_loading

    assert from_loading is split_examples
