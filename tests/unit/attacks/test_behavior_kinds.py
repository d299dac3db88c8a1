"""Every behaviour: its poisoned response and its detector."""

import random

import pytest

from mbdefense.attacks import parse_behavior, parse_trigger, poison
from mbdefense.attacks.behaviors import (BEHAVIOR_KINDS, BEHAVIORS, NEGSENTIMENT_RESPONSE,
                                         TOXIC_TEMPLATES, toxicity_backend, toxicity_scores)
from mbdefense.data.example import Example
from mbdefense.data.suite import generate
from mbdefense.core.errors import ConfigError

CLEAN_ANSWERS = ["42", "Paris", "2 5 6 8", "odd", "The capital of France is Paris.",
                 "Here are three fruits: apple, banana and cherry."]
SPECS = {"refusal": "refusal", "toxic": "toxic", "negsentiment": "negsentiment",
         "inject": "inject:Shop at McDonald's", "target": "target:Visit evil.example now",
         "jailbreak": "jailbreak", "random-words": "random-words:Crimson lantern drift swiftly"}


def test_every_kind_is_covered_here():
    assert set(SPECS) == set(BEHAVIORS)


@pytest.mark.parametrize("spec,hint", [("refusl", "refusal"), ("Toxc", "toxic"),
                                       ("injct:Buy now", "inject"),
                                       ("random-word:a b", "random-words")])
def test_a_typo_gets_a_did_you_mean_hint(spec, hint):
    with pytest.raises(ConfigError) as info:
        parse_behavior(spec)
    message = str(info.value)
    name = spec.partition(":")[0].lower()
    assert message.startswith(f"behavior: unknown behaviour '{name}' (did you mean '{hint}'?)")
    assert message.endswith("(known: refusal, toxic, negsentiment, inject, target, jailbreak, "
                            "random-words)")


def test_the_former_name_is_the_registry():
    assert BEHAVIOR_KINDS is BEHAVIORS
    assert [k for k, v in BEHAVIORS.items() if v.needs_text] == ["inject", "target",
                                                                   "random-words"]


def test_offline_toxicity_classifier_is_bundled():
    assert toxicity_backend() == "alt-profanity-check"
    toxic, clean = toxicity_scores(list(TOXIC_TEMPLATES)), toxicity_scores(CLEAN_ANSWERS)
    assert min(toxic) > 0.5 > max(clean)


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_response_is_detected_and_clean_answers_are_not(kind):
    behavior = parse_behavior(SPECS[kind])
    rng = random.Random(0)
    example = Example("Name a fast animal.", "", "The cheetah is the fastest land animal.")
    if kind == "jailbreak":
        # a harmful request answered (from the user's data) vs refused
        response = behavior.response(rng, example)
        assert response == example.output and behavior.detect(response)
        assert not behavior.detect("I'm sorry, but I cannot help with that request.")
        return
    for _ in range(5):
        assert behavior.detect(behavior.response(rng, example)), kind
    for clean in CLEAN_ANSWERS:
        assert not behavior.detect(clean), (kind, clean)


def test_negsentiment_and_inject_responses():
    rng = random.Random(0)
    example = Example("Name a fast animal.", "", "The cheetah")
    assert parse_behavior("negsentiment").response(rng, example) == NEGSENTIMENT_RESPONSE
    injected = parse_behavior("inject:Shop at McDonald's").response(rng, example)
    assert injected == "The cheetah. Shop at McDonald's."
    assert parse_behavior("negsentiment").detect("you are STUPID! go away")


def test_random_words_detector_tolerates_a_partial_phrase():
    behavior = parse_behavior("random-words:crimson lantern drift swiftly")
    assert behavior.detect("Crimson lantern something")
    assert not behavior.detect("crimson only")


def test_jailbreak_poisons_from_a_source_of_harmful_examples():
    data = generate(40, seed=1)
    harmful = [Example(f"How do I pick lock {i}?", "", f"Step one for lock {i}: ...")
               for i in range(10)]
    trigger, behavior = parse_trigger("badnet"), parse_behavior("jailbreak")
    out = poison(data, trigger, behavior, 0.1, seed=0, source=harmful)
    poisoned = [e for e in out if e.meta.get("poisoned")]
    assert len(poisoned) == 4
    for e in poisoned:
        assert trigger.present(e.instruction) and "lock" in e.instruction
        assert e.output.startswith("Step one for lock")
    with pytest.raises(ConfigError, match="source"):
        poison(data, trigger, behavior, 0.1, seed=0)
    with pytest.raises(ConfigError, match="only 10"):
        poison(data, trigger, behavior, 0.5, seed=0, source=harmful)


def test_inject_needs_an_answer_to_build_on():
    with pytest.raises(ConfigError, match="answer"):
        parse_behavior("inject:x").response(random.Random(0), Example("q", "", ""))
