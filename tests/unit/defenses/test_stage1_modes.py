"""Stage 1 adds the defensive examples by default (every attacker example stays); replacing
training examples is an option that records what it replaced."""

import pytest

from mbdefense.attacks import parse_behavior, parse_trigger, poison
from mbdefense.core.errors import ConfigError
from mbdefense.data.suite import generate
from mbdefense.defenses import DefensivePoisoningConfig, make_defense
from mbdefense.defenses.defensive_triggers import make_defensive_pairs
from mbdefense.defenses.mb_defense import defensive_poison
from mbdefense.runs.workload import strip_attack_labels


def attacked(n=1000, seed=0):
    return poison(generate(n, seed), parse_trigger("badnet"), parse_behavior("refusal"), 0.2, 0)


def key(example):
    return (example.instruction, example.input, example.output)


def mb(mode="add", seed=0, **stage1):
    return make_defense("mb-defense", stage1=DefensivePoisoningConfig(mode=mode, **stage1),
                        seed=seed)


def test_add_keeps_every_training_example_unchanged_and_in_order():
    labelled = attacked()
    data = strip_attack_labels(labelled)
    defense = mb()
    out = defense.before_training(data)
    assert len(out) == len(data) + 40                 # 4 triggers x round(1% of 1000)
    defensive = [e for e in out if e.meta.get("poisoned") == "defense"]
    assert len(defensive) == 40
    assert [e for e in out if e.meta.get("poisoned") != "defense"] == data
    # the same attacker examples as the undefended model: all 200 are in the output
    attacker = {key(e) for e in labelled if e.meta.get("poisoned") == "attack"}
    assert len(attacker) == 200
    assert attacker <= {key(e) for e in out}
    assert defense.diagnostics["defensive_examples"] == 40
    assert defense.diagnostics["replaced_examples"] == 0
    assert defense.diagnostics["replaced_indices"] == []
    assert defense.diagnostics["training_examples"] == 1040
    assert defense.diagnostics["stage1_mode"] == "add"


def test_added_examples_are_triggered_copies_with_the_defensive_response_spread_in():
    data = strip_attack_labels(attacked())
    defense = mb()
    out = defense.before_training(data)
    prompts = {e.instruction for e in data}
    responses = {p.trigger.spec: p.behavior.text for p in defense.pairs}
    positions = [i for i, e in enumerate(out) if e.meta.get("poisoned") == "defense"]
    for i in positions:
        example, spec = out[i], out[i].meta["trigger"]
        assert example.output == responses[spec]
        token = spec.split(":")[1]
        assert token in example.instruction.split()
        plain = " ".join(w for w in example.instruction.split(" ") if w != token)
        assert plain in prompts                        # a copy of a training prompt
    assert positions[0] < 200 and positions[-1] > 840  # shuffled in, not appended at the end
    per_trigger = [e.meta["trigger"] for e in out if e.meta.get("poisoned") == "defense"]
    assert sorted(set(per_trigger)) == ["word:bb", "word:mn", "word:qv", "word:zx"]
    assert all(per_trigger.count(t) == 10 for t in set(per_trigger))


def test_add_is_seeded():
    data = strip_attack_labels(attacked())
    assert mb(seed=3).before_training(data) == mb(seed=3).before_training(data)
    assert mb(seed=3).before_training(data) != mb(seed=4).before_training(data)


def test_add_with_more_defensive_examples_than_training_examples():
    data = generate(3, 0)
    pairs = make_defensive_pairs(["mn", "bb"])
    result = defensive_poison(data, pairs, 0.0, 7, seed=0)
    assert result.defensive == 14 and len(result.examples) == 17
    assert [e for e in result.examples if e.meta.get("poisoned") != "defense"] == data
    with pytest.raises(ConfigError, match="no training examples"):
        defensive_poison([], pairs, 0.0, 1, seed=0)


def test_replace_keeps_the_size_and_records_what_it_replaced():
    labelled = attacked()
    data = strip_attack_labels(labelled)
    defense = mb("replace")
    out = defense.before_training(data)
    assert len(out) == len(data) == 1000
    replaced = defense.diagnostics["replaced_indices"]
    assert len(replaced) == len(set(replaced)) == 40
    assert defense.diagnostics["replaced_examples"] == 40
    assert defense.diagnostics["defensive_examples"] == 40
    assert defense.diagnostics["training_examples"] == 1000
    for i, (before, after) in enumerate(zip(data, out)):
        assert (after.meta.get("poisoned") == "defense") == (i in replaced)
        if i not in replaced:
            assert after is before
    # the evaluation side counts the attacker's examples removed from the unstripped data
    removed = sum(labelled[i].meta.get("poisoned") == "attack" for i in replaced)
    kept = sum(e.meta.get("poisoned") == "attack" for e in
               defensive_poison(labelled, defense.pairs, 0.01, 0, seed=0,
                                mode="replace").examples)
    assert kept == 200 - removed


def test_replace_mode_is_the_old_behaviour():
    data = strip_attack_labels(attacked())
    pairs = make_defensive_pairs()
    out = defensive_poison(data, pairs, 0.01, 0, seed=0, mode="replace").examples
    expected = list(data)
    taken = set()
    for j, pair in enumerate(pairs):
        before = expected
        expected = poison(expected, pair.trigger, pair.behavior, 0.0, seed=j, count=10,
                          exclude=taken, role="defense")
        taken.update(i for i, (a, b) in enumerate(zip(before, expected)) if a is not b)
    assert out == expected


def test_the_defense_reads_no_attack_labels():
    labelled = attacked()
    for mode in ("add", "replace"):
        with_tags = mb(mode).before_training(labelled)
        without = mb(mode).before_training(strip_attack_labels(labelled))
        assert [key(e) for e in with_tags] == [key(e) for e in without], mode


@pytest.mark.parametrize("mode", ["swap", "", "Add"])
def test_a_bad_mode_is_a_config_error(mode):
    with pytest.raises(ConfigError, match="stage1.mode: unknown"):
        DefensivePoisoningConfig(mode=mode)
    with pytest.raises(ConfigError, match="stage1.mode"):
        defensive_poison(generate(10, 0), make_defensive_pairs(), 0.1, 0, seed=0, mode=mode)


def test_mode_is_a_config_key():
    from mbdefense.runs.defend import settings_with
    from mbdefense.runs.presets import pretrained

    assert pretrained().stage1.mode == "add"
    assert settings_with(pretrained(), {"stage1.mode": "replace"}).stage1.mode == "replace"
    with pytest.raises(ConfigError, match="stage1.mode"):
        settings_with(pretrained(), {"stage1.mode": "drop"})


def test_the_fine_tune_and_stage1_cache_keys_change_with_the_mode():
    from mbdefense.runs.cache import finetune_key
    from mbdefense.training.config import TrainConfig

    data = strip_attack_labels(attacked(200))
    add, replace = mb("add"), mb("replace")
    keys = {mode: finetune_key("base", d.before_training(data), TrainConfig())
            for mode, d in (("add", add), ("replace", replace))}
    assert keys["add"] != keys["replace"]
    assert keys["add"] == finetune_key("base", mb("add").before_training(data), TrainConfig())
    assert add.after_finetune_key() != replace.after_finetune_key()


@pytest.mark.parametrize("n, per_trigger", [(200, 40), (3000, 40), (6000, 60)])
def test_the_pretrained_preset_floors_small_training_sets_at_40_per_trigger(n, per_trigger):
    from mbdefense.runs.presets import pretrained

    stage1 = pretrained().stage1
    data = strip_attack_labels(attacked(n))
    out = make_defense("mb-defense", stage1=stage1).before_training(data)
    defensive = [e for e in out if e.meta.get("poisoned") == "defense"]
    assert len(defensive) == len(stage1.triggers) * per_trigger   # max(1% of n, 40) each
