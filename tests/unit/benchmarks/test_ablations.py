"""Every variant benchmarks/ablations.py runs is a valid run config, and the variants marked
as the preset are the preset."""

import importlib.util
from pathlib import Path

import pytest

from mbdefense.runs.load import load_run_spec

ROOT = Path(__file__).resolve().parents[3]


def _knobs():
    spec = importlib.util.spec_from_file_location("ablations", ROOT / "benchmarks" / "ablations.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.KNOBS


VARIANTS = [(knob, label, overrides) for knob, variants in _knobs().items()
            for label, overrides in variants]


@pytest.mark.parametrize("knob,label,overrides", VARIANTS,
                         ids=[f"{k}:{label}" for k, label, _ in VARIANTS])
def test_each_variant_loads_and_the_preset_one_changes_nothing(knob, label, overrides):
    config = ROOT / "configs" / "ablations.yaml"
    preset = load_run_spec(config, check_paths=False).resolved["embedded"]
    settings = load_run_spec(config, overrides, check_paths=False).resolved["embedded"]
    if "preset" in label:
        assert overrides == [] and settings == preset
    else:
        assert overrides   # a variant sets something (possibly the preset's own value)


def test_the_stage2_parameter_variants_train_what_they_say():
    variants = dict(_knobs()["stage2-params"])
    config = ROOT / "configs" / "ablations.yaml"
    trains = {label: load_run_spec(config, overrides, check_paths=False)
              .resolved["embedded"].stage2.train for label, overrides in variants.items()}
    full = next(t for label, t in trains.items() if label.startswith("all weights"))
    assert full.lora is None and full.learning_rate == 1e-4
    mlp = next(t for label, t in trains.items() if "MLP" in label)
    assert "down_proj" in mlp.lora.target_modules and mlp.learning_rate == 1e-3


def test_the_stage2_term_variants_switch_what_they_say():
    variants = dict(_knobs()["stage2-terms"])
    config = ROOT / "configs" / "ablations.yaml"
    stage2 = {label: load_run_spec(config, overrides, check_paths=False).resolved["embedded"].stage2
              for label, overrides in variants.items()}
    terms = {label: (s.insertion_copies > 0, s.anchor > 0) for label, s in stage2.items()}
    assert sorted(terms.values()) == [(False, False), (False, True), (True, False), (True, True)]
    for label, (insertions, anchor) in terms.items():
        assert ("insertion" in label) == insertions and ("anchor" in label) == anchor


def test_the_margin_variants_hold_the_margin_they_name():
    config = ROOT / "configs" / "ablations.yaml"
    for label, overrides in _knobs()["margin"]:
        settings = load_run_spec(config, overrides, check_paths=False).resolved["embedded"]
        assert settings.stage2.margin == float(label.split()[0]), label
