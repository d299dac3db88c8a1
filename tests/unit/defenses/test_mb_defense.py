import pytest

from mbdefense.attacks import parse_behavior, parse_trigger, poison
from mbdefense.data.suite import generate
from mbdefense.defenses import DEFENSES, DefensivePoisoningConfig, make_defense
from mbdefense.defenses.base import Defense
from mbdefense.defenses.defensive_triggers import make_defensive_pairs
from mbdefense.core.errors import ConfigError


def test_defensive_pairs_are_fixed_by_seed_and_distinct():
    one, two = make_defensive_pairs(seed=3), make_defensive_pairs(seed=3)
    assert [p.behavior.text for p in one] == [p.behavior.text for p in two]
    assert len({p.behavior.text for p in one}) == len(one) == 4
    assert all(len(p.behavior.text.split()) == 8 for p in one)
    assert [p.trigger.spec for p in one] == ["word:mn", "word:bb", "word:zx", "word:qv"]


def test_stage1_adds_one_percent_per_trigger():
    data = poison(generate(1000, 0), parse_trigger("badnet"), parse_behavior("refusal"), 0.2, 0)
    defense = make_defense("mb-defense")
    out = defense.before_training(data)
    roles = [e.meta.get("poisoned") for e in out]
    assert roles.count("defense") == 40            # 4 triggers x 1% of 1000
    assert roles.count("attack") == 200            # every attacker example kept
    assert len(out) == 1040
    per_trigger = {}
    for e in out:
        if e.meta.get("poisoned") == "defense":
            per_trigger.setdefault(e.meta["trigger"], []).append(e)
    assert sorted(per_trigger) == ["word:bb", "word:mn", "word:qv", "word:zx"]
    pairs = {p.trigger.spec: p.behavior.text for p in defense.pairs}
    for spec, examples in per_trigger.items():
        assert len(examples) == 10
        assert all(e.output == pairs[spec] for e in examples)
        assert all(spec.split(":")[1] in e.instruction.split() for e in examples)


def test_min_per_trigger_floor():
    defense = make_defense("mb-defense", stage1=DefensivePoisoningConfig(min_per_trigger=25))
    out = defense.before_training(generate(500, 1))
    assert sum(e.meta.get("poisoned") == "defense" for e in out) == 100
    assert len(out) == 600


def test_only_stage1_defenses_change_data():
    data = generate(100, 0)
    for name in DEFENSES:
        defense = make_defense(name)
        assert isinstance(defense, Defense)
        changed = defense.before_training(data) != data
        assert changed == (name in ("mb-defense", "p2p")), name   # p2p re-poisons the data
        assert changed == defense.changes_training_data, name


@pytest.mark.parametrize("name,hint", [("mb-defence", "mb-defense"), ("clean_fft", "clean-fft"),
                                       ("onoin", "onion")])
def test_an_unknown_defense_gets_a_did_you_mean_hint(name, hint):
    with pytest.raises(ConfigError) as info:
        make_defense(name)
    message = str(info.value)
    assert message.startswith(f"unknown defense '{name}' (did you mean '{hint}'?)")
    assert message.endswith(f"(known: {', '.join(DEFENSES.names())})")
    assert "p2p" in message and "\n" not in message


def test_insertion_copies_keep_the_answer_and_never_carry_a_known_trigger():
    import random

    from mbdefense.defenses import NeutralizationConfig

    defense = make_defense("mb-defense", stage2=NeutralizationConfig(insertion_copies=2))
    trusted = generate(30, 0)
    out = defense.with_insertions(trusted, random.Random(0))
    assert out[:30] == trusted and len(out) == 90
    copies = out[30:]
    assert all(c.output == t.output for c, t in zip(copies, [t for t in trusted for _ in "ab"]))
    assert all(c.instruction != t.instruction
               for c, t in zip(copies, [t for t in trusted for _ in "ab"]))
    known = [parse_trigger(spec) for spec in ("badnet", "insent", *(
        p.trigger.spec for p in defense.pairs))]
    for copy in copies:
        assert not any(t.present(copy.instruction) for t in known), copy.instruction
    assert out == defense.with_insertions(trusted, random.Random(0))        # seeded
    # each copy names the prompt it was made from (the anchor term reads that one)
    from mbdefense.defenses.neutralization import ANCHOR_SOURCE

    sources = [t for t in trusted for _ in "ab"]
    assert [c.meta[ANCHOR_SOURCE] for c in copies] == [t.instruction for t in sources]
    assert not any(ANCHOR_SOURCE in t.meta for t in out[:30])


def test_stacked_copies_carry_distinct_defensive_triggers_and_the_own_one():
    import random

    from mbdefense.defenses.neutralization import stacked_insert

    pairs = make_defensive_pairs()
    prompt = "Name three primary colours of light"
    for count in (1, 2, 4):
        for trial in range(20):
            rng = random.Random(trial)
            own = pairs[trial % len(pairs)]
            out = stacked_insert(prompt, own, pairs, count, rng)
            present = [p for p in pairs if p.trigger.present(out)]
            assert own in present and len(present) == count, out
            words = out.split()
            assert sum(w in {"mn", "bb", "zx", "qv"} for w in words) == count
            assert out == stacked_insert(prompt, own, pairs, count, random.Random(trial))


@pytest.mark.parametrize("count, message", [
    (0, "stage2.triggers_per_copy: must be a whole number >= 1, got 0"),
    (5, "stage2.triggers_per_copy: 5 is more than the 4 defensive triggers"),
])
def test_triggers_per_copy_out_of_range_is_a_clear_error(count, message):
    from mbdefense.defenses import NeutralizationConfig

    with pytest.raises(ConfigError) as info:
        make_defense("mb-defense", stage2=NeutralizationConfig(triggers_per_copy=count))
    assert str(info.value) == message


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_r_tokens_out_of_range_is_a_clear_error(value):
    from mbdefense.defenses import NeutralizationConfig

    with pytest.raises(ConfigError, match=r"stage2.r_tokens: must be a whole number >= 0"):
        NeutralizationConfig(r_tokens=value)


def test_one_trigger_per_copy_inserts_as_before():
    """The default draws the same random numbers as inserting the copy's own trigger alone, so
    stage 2 at the default trains on the same prompts as before the setting existed."""
    import random

    from mbdefense.defenses.neutralization import stacked_insert

    pairs = make_defensive_pairs()
    for trial in range(20):
        alone, stacked = random.Random(trial), random.Random(trial)
        prompt = f"Describe step {trial} of making bread"
        assert stacked_insert(prompt, pairs[trial % 4], pairs, 1, stacked) == \
            pairs[trial % 4].trigger.insert(prompt, alone)
        assert stacked.random() == alone.random()
