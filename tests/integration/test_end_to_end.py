"""A tiny end-to-end run: the backdoor is learned, clean-fft leaves it, MB-Defense removes it."""

import json

import pytest

from mbdefense.experiment import ExperimentConfig, run_experiment, smoke_config


def tiny_config(**over) -> ExperimentConfig:
    return smoke_config(defenses=["none", "clean-fft", "mb-defense", "stage2-only"],
                        progress=False, **over)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MBDEFENSE_CACHE", str(tmp_path_factory.mktemp("cache")))
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
