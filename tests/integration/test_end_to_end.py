"""A tiny end-to-end run: the backdoor is learned, clean-fft leaves much of it, MB-Defense
removes it."""

import json

import pytest

from mbdefense.runs.experiment import run_experiment
from mbdefense.runs.presets import embedded_smoke
from mbdefense.runs.spec import Experiment, ModelSpec


def tiny_config(stage1=None, **over) -> Experiment:
    over.setdefault("defenses", ["none", "clean-fft", "mb-defense", "stage2-only", "aug-fft"])
    settings = embedded_smoke()
    if stage1 is not None:
        settings.stage1 = stage1
    return Experiment(model=ModelSpec(name="embedded-smoke"), settings=settings,
                      progress=False, **over)


@pytest.fixture(scope="module")
def base_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def results(base_cache):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MBDEFENSE_CACHE", base_cache)
        return run_experiment(tiny_config(), log=lambda m: None)


def rows_by_defense(results):
    return {r["defense"]: r for r in results["rows"]}


def test_backdoor_learned_and_removed(results):
    rows = rows_by_defense(results)
    clean, attacked = rows["clean"], rows["none"]
    fft, mb = rows["clean-fft"], rows["mb-defense"]
    assert clean["asr"] <= 0.05
    assert attacked["asr"] >= 0.9
    assert mb["asr"] <= 0.1             # MB-Defense removes it
    # a clean fine-tune (and stage 2 without defensive poisoning, the ablation) leaves a good
    # part of the backdoor in place
    for rival in ("clean-fft", "stage2-only"):
        assert rows[rival]["asr"] >= max(0.25, mb["asr"] + 0.2), rival
    assert mb["cacc"] >= attacked["cacc"] - 0.15
    # trigger-augmented clean fine-tuning is measured beside it (no claim about who wins)
    assert rows["aug-fft"]["cacc"] >= attacked["cacc"] - 0.15
    for row in results["rows"]:
        assert 0.0 <= row["cacc"] <= 1.0 and 0.0 <= row["asr"] <= 1.0
        assert row["n_clean"] == row["n_triggered"] == 104


def test_results_document_is_complete(results):
    assert {"rows", "samples", "diagnostics", "scorer"} <= set(results)
    json.dumps(results)
    implant = results["diagnostics"]["mb-defense/stage1"]["implant_rates"]
    assert set(implant) == {"word:mn", "word:bb"}


def test_weak_implant_top_up_never_keeps_a_leaking_model_and_models_are_cached(
        base_cache, tmp_path, monkeypatch):
    """Two defensive examples per trigger do not implant. The top-up either implants every
    trigger without its response leaking onto clean prompts, or discards the round that leaked
    and keeps the model from before it. A second run with the same inputs loads the fine-tuned
    and the stage-1 model from the cache."""
    from mbdefense.defenses import DefensivePoisoningConfig

    monkeypatch.setenv("MBDEFENSE_CACHE", base_cache)
    config = tiny_config(
        defenses=["mb-defense"], include_clean_reference=False, cache_dir=str(tmp_path),
        stage1=DefensivePoisoningConfig(triggers=["mn", "bb"], rate_per_trigger=0.0,
                                        min_per_trigger=2, on_weak_implant="top-up",
                                        top_up_per_trigger=60, top_up_rounds=3))
    first = run_experiment(config, log=lambda m: None)
    stage1 = first["diagnostics"]["mb-defense/stage1"]
    rounds = stage1["rounds"]
    assert max(rounds[0]["rates"].values()) < 0.3, rounds
    assert len(rounds) >= 2                                  # at least one top-up round ran
    assert max(stage1["leak_rates"].values()) <= max(0.1, *rounds[0]["leaks"].values()), rounds
    if stage1["top_up_discarded"] is None:
        assert min(stage1["implant_rates"].values()) >= 0.3, rounds
    else:
        discarded = stage1["top_up_discarded"]
        assert max(rounds[discarded]["leaks"].values()) > max(
            0.1, *rounds[discarded - 1]["leaks"].values())
        assert stage1["implant_rates"] == rounds[discarded - 1]["rates"]
    assert len(list(tmp_path.glob("finetune-*"))) == len(list(tmp_path.glob("stage1-*"))) == 1
    assert not list(tmp_path.glob("defended-*"))   # kept only when asked (cache_defended)

    import mbdefense.defenses.implant as implant
    import mbdefense.runs.lifecycle as lifecycle

    def no_training(*args, **kwargs):
        raise AssertionError("a cached stage was trained again")

    monkeypatch.setattr(lifecycle, "finetune", no_training)
    monkeypatch.setattr(implant, "finetune", no_training)
    second = run_experiment(config, log=lambda m: None)
    assert second["diagnostics"]["mb-defense/stage1"]["rounds"] == stage1["rounds"]
    assert second["rows"][0]["asr"] == first["rows"][0]["asr"]


def test_defended_models_kept_on_request_are_scored_on_another_split_without_training(
        base_cache, tmp_path, monkeypatch):
    """With ``cache_defended`` the cache keeps each defense's model after training: the same
    models scored on the validation split train nothing (not even stage 2), and the
    defenses' training records come back with them."""
    import dataclasses

    import mbdefense.defenses.mb_defense as mb_defense
    import mbdefense.runs.lifecycle as lifecycle

    monkeypatch.setenv("MBDEFENSE_CACHE", base_cache)
    config = tiny_config(defenses=["clean-fft", "mb-defense"], include_clean_reference=False,
                         cache_dir=str(tmp_path), cache_defended=True)
    first = run_experiment(config, log=lambda m: None)
    assert len(list(tmp_path.glob("defended-*/info.json"))) == 2

    def no_training(*args, **kwargs):
        raise AssertionError("a cached stage was trained again")

    monkeypatch.setattr(lifecycle, "finetune", no_training)
    monkeypatch.setattr(mb_defense, "neutralize", no_training)
    settings = dataclasses.replace(config.settings, evaluation=dataclasses.replace(
        config.settings.evaluation, split="validation"))
    logged = []
    second = run_experiment(dataclasses.replace(config, settings=settings), log=logged.append)
    assert [r["split"] for r in second["rows"]] == ["validation", "validation"]
    assert sum("loading the mb-defense model from" in m for m in logged) == 1, logged
    for name, record in (("clean-fft", "clean_fft"), ("mb-defense", "stage2")):
        assert second["diagnostics"][name][record] == json.loads(
            json.dumps(first["diagnostics"][name][record])), name
    # the test split again: the cells themselves come from the cache, the rows as before
    assert run_experiment(config, log=lambda m: None)["rows"] == first["rows"]
