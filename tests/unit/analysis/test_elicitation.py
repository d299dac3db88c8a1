"""Elicitation matrix and cross-elicitation summary, with a stub generator."""

from __future__ import annotations

import pytest

import mbdefense.analysis.elicitation as elicitation
from mbdefense.analysis.elicitation import (CLEAN_ROW, cross_elicitation, elicitation_matrix,
                                            triggered_examples)
from mbdefense.attacks.behaviors import parse_behavior
from mbdefense.attacks.triggers import parse_trigger
from mbdefense.data.example import Example

EXAMPLES = [Example(f"Describe item number {i} in one short sentence.") for i in range(4)]
PHRASE = "Crimson lantern drift swiftly"


def _stub_answers(calls):
    def answer(model, tokenizer, examples, **kwargs):
        calls.append((len(examples), kwargs))
        out = []
        for e in examples:
            words = e.instruction.split()
            number = int(next(w for w in words if w.isdigit()))
            if "cf" in words and number % 2 == 0:   # the attacker's trigger works on half
                out.append("I cannot help with that.")
            elif "mn" in words:                     # the defensive trigger always works
                out.append(PHRASE.lower() + " murmur")
            else:
                out.append("Item number is a thing.")
        return out
    return answer


def test_matrix_shares_from_stub_generator(monkeypatch):
    calls: list = []
    monkeypatch.setattr(elicitation, "answer_examples", _stub_answers(calls))
    matrix = elicitation_matrix(
        None, None, EXAMPLES,
        [("cf", parse_trigger("badnet")), ("mn", parse_trigger("word:mn"))],
        [("refusal", parse_behavior("refusal")), ("mn response", parse_behavior(
            f"random-words:{PHRASE}"))], max_new_tokens=7, batch_size=3)
    assert matrix["rows"] == ["cf", "mn", CLEAN_ROW]
    assert matrix["columns"] == ["refusal", "mn response"]
    assert matrix["n"] == 4
    assert matrix["values"] == [[0.5, 0.0], [0.0, 1.0], [0.0, 0.0]]
    assert len(calls) == 3  # one generation per row
    assert all(n == 4 and kw == {"max_new_tokens": 7, "batch_size": 3} for n, kw in calls)


def test_without_clean_row(monkeypatch):
    monkeypatch.setattr(elicitation, "answer_examples", _stub_answers([]))
    matrix = elicitation_matrix(None, None, EXAMPLES, [("mn", parse_trigger("word:mn"))],
                                [("refusal", parse_behavior("refusal"))], include_clean=False)
    assert matrix["rows"] == ["mn"] and matrix["values"] == [[0.0]]
    summary = cross_elicitation(matrix, "mn", "refusal")
    assert summary["baseline_attacker"] is None and summary["defensive_to_attacker"] is None


def test_insertion_is_seeded_per_trigger():
    trigger = parse_trigger("word:zx")
    first = triggered_examples(EXAMPLES, trigger, seed=3)
    assert first == triggered_examples(EXAMPLES, trigger, seed=3)
    assert all("zx" in e.instruction.split() for e in first)
    assert triggered_examples(EXAMPLES, None) == EXAMPLES
    assert EXAMPLES[0].instruction.startswith("Describe")  # inputs untouched


def test_cross_elicitation_summary():
    matrix = {"rows": ["att", "mn", "bb", CLEAN_ROW], "columns": ["refusal", "r-mn", "r-bb"],
              "values": [[0.9, 0.4, 0.2],
                         [0.6, 1.0, 0.3],
                         [0.2, 0.1, 0.8],
                         [0.0, 0.1, 0.0]], "n": 10}
    s = cross_elicitation(matrix, "att", "refusal")
    assert s["attacker_asr"] == 0.9
    assert s["defensive_to_attacker"] == pytest.approx(0.4)
    assert s["attacker_to_defensive"] == pytest.approx(0.3)
    assert s["baseline_attacker"] == 0.0
    assert s["baseline_defensive"] == pytest.approx(0.05)
    assert s["defensive_own"] == pytest.approx(0.9)
    assert s["defensive_cross"] == pytest.approx(0.2)
    assert s["defensive_rows"] == ["mn", "bb"] and s["defensive_columns"] == ["r-mn", "r-bb"]
    assert cross_elicitation(matrix, 0, 0) == s
    with pytest.raises(KeyError):
        cross_elicitation(matrix, "nope", "refusal")
