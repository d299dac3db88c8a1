"""A tiny end-to-end run: the backdoor is learned, clean-fft leaves it, MB-Defense removes it."""

import json

import pytest

from mbdefense.defenses import DefensivePoisoningConfig, NeutralizationConfig
from mbdefense.experiment import ExperimentConfig, WorldConfig, run_experiment
from mbdefense.modeling.base import BaseRecipe
from mbdefense.modeling.embedded import TinyModelConfig
from mbdefense.training.config import TrainConfig


def tiny_config(**over) -> ExperimentConfig:
    config = ExperimentConfig(
        world=WorldConfig(n_train=600, n_trusted=64, n_test=104),
        base=BaseRecipe(shape=TinyModelConfig(vocab_size=768, hidden_size=128, num_layers=2,
                                              num_heads=4, intermediate_size=384),
                        n_per_pool=1500, n_pools=1,
                        train=TrainConfig(epochs=2, learning_rate=1e-3, batch_size=8)),
        finetune=TrainConfig(epochs=2, learning_rate=1e-3, batch_size=8),
        stage1=DefensivePoisoningConfig(triggers=["mn", "bb"], min_per_trigger=30),
        stage2=NeutralizationConfig(train=TrainConfig(epochs=5, learning_rate=3e-4, batch_size=8)),
        defenses=["none", "clean-fft", "mb-defense", "stage2-only"], progress=False,
        implant_prompts=32)
    for key, value in over.items():
        setattr(config, key, value)
    return config


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    import os

    os.environ["MBDEFENSE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    return run_experiment(tiny_config(), log=lambda m: None)


def rows_by_defense(results):
    return {(r["attack"] != "none", r["defense"]): r for r in results["rows"]}


def test_backdoor_learned_and_removed(results):
    rows = rows_by_defense(results)
    clean, attacked = rows[(False, "none")], rows[(True, "none")]
    fft, mb = rows[(True, "clean-fft")], rows[(True, "mb-defense")]
    assert clean["asr"] <= 0.05
    assert attacked["asr"] >= 0.9
    assert fft["asr"] >= 0.5            # a clean fine-tune leaves most of the backdoor
    assert mb["asr"] <= 0.1             # MB-Defense removes it
    # ablation: stage 2 without defensive poisoning leaves the backdoor in place
    assert rows[(True, "stage2-only")]["asr"] >= 0.5
    assert mb["cacc"] >= attacked["cacc"] - 0.15
    for row in results["rows"]:
        assert 0.0 <= row["cacc"] <= 1.0 and 0.0 <= row["asr"] <= 1.0
        assert row["n_clean"] == row["n_triggered"] == 104


def test_results_document_is_complete(results):
    assert {"rows", "config", "versions", "diagnostics"} <= set(results)
    json.dumps(results)
    implant = results["diagnostics"]["mb-defense/stage1"]["implant_rates"]
    assert set(implant) == {"word:mn", "word:bb"}
