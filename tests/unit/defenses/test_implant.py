"""Stage-1 top-up data and the implant settings' validation."""

import pytest

from mbdefense.attacks import parse_behavior, parse_trigger, poison
from mbdefense.data.suite import generate
from mbdefense.defenses import DefensivePoisoningConfig
from mbdefense.defenses.defensive_triggers import make_defensive_pairs
from mbdefense.defenses.implant import top_up_set
from mbdefense.core.errors import ConfigError


def test_top_up_set_has_fresh_defensive_examples_and_as_many_ordinary_ones():
    data = poison(generate(200, 0), parse_trigger("badnet"), parse_behavior("refusal"), 0.2, 0)
    pairs = make_defensive_pairs(("mn", "bb"))
    extra = top_up_set(data, pairs, per_trigger=15, seed=1)
    defensive = [e for e in extra if e.meta.get("poisoned") == "defense"]
    assert len(defensive) == 30 and len(extra) == 90        # + 30 originals + 30 others
    assert len(top_up_set(data, pairs, per_trigger=15, seed=1, replay=3.0)) == 60 + 90
    plain = {(e.instruction, e.input, e.output) for e in extra if not e.meta.get("poisoned")}
    for d in defensive:                       # each defensive example's clean original is there
        token = d.meta["trigger"].split(":")[1]
        original = " ".join(w for w in d.instruction.split() if w != token)
        assert any(i == original and x == d.input for i, x, _ in plain), d.instruction
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
    ("max_leak", -0.5, "max_leak"),
    ("top_up_replay", -1.0, "top_up_replay"),
    ("top_up_learning_rate", 0.0, "top_up_learning_rate"),
    ("top_up_learning_rate", float("nan"), "top_up_learning_rate"),
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


def top_up_with_checks(monkeypatch, rounds):
    """Run the top-up (3 rounds at most) where the implant check after stage 1 and after each
    round gives ``rounds`` (rates, leaks) in turn and a round's training adds 1 to the model;
    returns the model, the report and the log."""
    import mbdefense.defenses.implant as implant
    from mbdefense.defenses.implant_check import ImplantCheck
    from mbdefense.training.config import TrainConfig

    checks = iter(ImplantCheck({f"word:{w}": r for w, r in zip(("mn", "bb"), rates)},
                               {f"word:{w}": x for w, x in zip(("mn", "bb"), leaks)},
                               "weak" if min(rates) < 0.3 else None) for rates, leaks in rounds)
    monkeypatch.setattr(implant, "check_implant", lambda *a, **k: next(checks))
    monkeypatch.setattr(implant, "finetune", lambda model, tok, data, cfg: (model + 1, [0.0]))
    config = DefensivePoisoningConfig(triggers=["mn", "bb"], on_weak_implant="top-up",
                                      top_up_rounds=3, top_up_per_trigger=4)
    messages: list[str] = []
    model, report = implant.implant_stage1(0, None, make_defensive_pairs(("mn", "bb")), config,
                                           generate(50, 0), [], TrainConfig(), seed=0,
                                           max_new_tokens=8, log=messages.append)
    return model, report, messages


def test_a_leaking_top_up_round_is_discarded(monkeypatch):
    """A round after which a defensive response answers clean prompts is thrown away: the
    model from before it is kept and the top-up stops."""
    model, report, _ = top_up_with_checks(monkeypatch, [((0.0, 0.1), (0.0, 0.0)),
                                                        ((0.9, 0.2), (0.0, 0.0)),
                                                        ((1.0, 1.0), (0.6, 0.0))])
    assert model == 1                                  # round 1 kept, round 2 discarded
    assert report["top_up_discarded"] == 2 and len(report["rounds"]) == 3
    assert report["implant_rates"] == {"word:mn": 0.9, "word:bb": 0.2}
    assert report["top_up_examples"] == 8 + 8 + 8      # 2 x 4 defensive, originals, replay


def test_a_round_that_lowers_a_leak_over_the_bound_is_kept(monkeypatch):
    """Stage 1 already leaks past ``max_leak``: a round that lowers the leak is kept (it is
    better than the model before it), and a later round that raises it again is discarded."""
    model, report, messages = top_up_with_checks(monkeypatch, [((0.2, 0.1), (0.3, 0.0)),
                                                               ((0.9, 0.2), (0.2, 0.0)),
                                                               ((1.0, 1.0), (0.0, 0.25))])
    assert model == 1 and report["top_up_discarded"] == 2
    assert report["leak_rates"] == {"word:mn": 0.2, "word:bb": 0.0}
    assert any("leak 0.25 > 0.20" in m for m in messages), messages


@pytest.mark.parametrize("rate,expected", [(None, 3e-4), (3e-5, 3e-5)])
def test_top_up_rounds_train_at_their_own_learning_rate(monkeypatch, rate, expected):
    import mbdefense.defenses.implant as implant
    from mbdefense.defenses.implant_check import ImplantCheck
    from mbdefense.training.config import TrainConfig

    weak = ImplantCheck({"word:mn": 0.0}, {"word:mn": 0.0}, "weak")
    monkeypatch.setattr(implant, "check_implant", lambda *a, **k: weak)
    rates = []
    monkeypatch.setattr(implant, "finetune",
                        lambda model, tok, data, cfg: (rates.append(cfg.learning_rate)
                                                       or model, [0.0]))
    config = DefensivePoisoningConfig(triggers=["mn"], on_weak_implant="top-up", top_up_rounds=2,
                                      top_up_per_trigger=4, top_up_learning_rate=rate)
    implant.implant_stage1(0, None, make_defensive_pairs(("mn",)), config, generate(50, 0), [],
                           TrainConfig(learning_rate=3e-4), seed=0, max_new_tokens=8,
                           log=lambda m: None)
    assert rates == [expected, expected]


def test_a_weak_implant_warning_names_the_trigger_and_a_remedy_that_applies():
    from mbdefense.defenses.implant_check import RAISE_TOP_UP, weak_implant_warning

    rates = {"word:mn": 0.34, "word:bb": 0.9}
    said = weak_implant_warning(rates, 0.5)
    assert "word:mn" in said and "word:bb" not in said and "fewer than 50%" in said
    assert "on_weak_implant='top-up'" in said          # the top-up is off: suggest it
    said = weak_implant_warning(rates, 0.5, remedy=RAISE_TOP_UP)
    assert "on_weak_implant='top-up'" not in said and "top_up_rounds" in said
    assert weak_implant_warning(rates, 0.3) is None
