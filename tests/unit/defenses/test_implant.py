"""Stage-1 top-up data and the implant settings' validation."""

import pytest

from mbdefense.attacks import parse_behavior, parse_trigger, poison
from mbdefense.data.suite import generate
from mbdefense.defenses import DefensivePoisoningConfig
from mbdefense.defenses.defensive_triggers import make_defensive_pairs
from mbdefense.defenses.implant import top_up_set
from mbdefense.errors import ConfigError


def test_top_up_set_has_fresh_defensive_examples_and_as_many_ordinary_ones():
    data = poison(generate(200, 0), parse_trigger("badnet"), parse_behavior("refusal"), 0.2, 0)
    pairs = make_defensive_pairs(("mn", "bb"))
    extra = top_up_set(data, pairs, per_trigger=15, seed=1)
    defensive = [e for e in extra if e.meta.get("poisoned") == "defense"]
    assert len(defensive) == 30 and len(extra) == 60
    for pair in pairs:
        mine = [e for e in defensive if e.meta["trigger"] == pair.trigger.spec]
        assert len(mine) == 15
        assert all(e.output == pair.behavior.text for e in mine)
        assert all(pair.trigger.present(e.instruction) for e in mine)
        assert not any(parse_trigger("badnet").present(e.instruction) for e in mine)
    assert top_up_set(data, pairs, 15, seed=1) == extra             # seeded


@pytest.mark.parametrize("field,value,needle", [
    ("on_weak_implant", "retrain", "on_weak_implant"),
    ("implant_threshold", 1.5, "implant_threshold"),
    ("top_up_per_trigger", -1, "top_up_per_trigger"),
])
def test_bad_implant_settings_are_clear_errors(field, value, needle):
    with pytest.raises(ConfigError, match=needle):
        DefensivePoisoningConfig(**{field: value})


def test_aug_fft_adds_one_triggered_copy_with_the_clean_answer():
    import random

    from mbdefense.defenses import make_defense

    defense = make_defense("aug-fft")
    data = generate(20, 0)
    out = defense.augment(data, random.Random(0))
    assert out[:20] == data and len(out) == 40
    specs = {p.trigger.spec: p.trigger for p in defense.pairs}
    for original, copy in zip(data, out[20:]):
        assert copy.output == original.output
        assert copy.instruction != original.instruction
        assert any(t.present(copy.instruction) for t in specs.values())
    assert not defense.changes_training_data and defense.changes_model
