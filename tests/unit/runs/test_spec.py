"""Run specs: validated once, before any work, with errors naming file, line and key."""

from pathlib import Path

import pytest

from mbdefense.core.errors import ConfigError
from mbdefense.runs.config_file import parse_overrides
from mbdefense.runs.experiment import Progress
from mbdefense.runs.load import load_run_spec as load_grid_config
from mbdefense.runs.plan import describe as plan
from mbdefense.runs.spec import ModelSpec

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs").glob("*.yaml"))


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    config = load_grid_config(path, check_paths=False)   # their data may live elsewhere
    assert config.n_cells == len(config.groups) * len(config.defenses) > 0
    for group in config.groups:  # every cell's settings build
        experiment = config.experiment(*group, progress=False)
        assert isinstance(experiment.model, ModelSpec)
        assert experiment.attack == group[2] and experiment.seed == group[1]
    assert config.name in plan(config)


def test_shipped_configs_include_the_paper_table1_layout():
    config = load_grid_config(next(p for p in CONFIGS if p.name == "table1.yaml"))
    assert len(config.attacks) == 4 and set(config.behaviors) == {"refusal", "toxic"}
    assert {"clean", "none", "clean-fft", "onion", "fine-mixing", "mb-defense"} <= set(
        config.defenses)


def test_the_paper_config_has_the_paper_settings():
    spec = load_grid_config(next(p for p in CONFIGS if p.name == "paper-table1.yaml"),
                            check_paths=False)
    assert [m.name for m in spec.models] == ["meta-llama/Llama-2-7b-chat-hf", "Qwen/Qwen3-8B",
                                             "Qwen/Qwen3-1.7B",
                                             "meta-llama/Llama-3.2-1B-Instruct"]
    assert all(m.dtype == "bfloat16" for m in spec.models) and spec.poison_rate == 0.2
    settings = spec.settings(spec.models[0])
    assert settings.finetune.epochs == 3 and settings.finetune.max_length == 1024
    assert settings.stage1.rate_per_trigger == 0.01 and len(settings.stage1.triggers) == 4
    assert settings.data.n_trusted == 128 and settings.stage2.eval_fraction == 0.2
    assert settings.stage2.train.epochs == 5
    assert settings.evaluation.scorer == "judge"
    assert settings.evaluation.judge.model == "gpt-4o-2024-08-06"
    assert "GPU-hours" in plan(spec)


def test_smollm2_config_is_the_real_model_benchmark_setup():
    spec = load_grid_config(next(p for p in CONFIGS if p.name == "smollm2-backdoorllm.yaml"),
                            check_paths=False)
    settings = spec.settings(spec.models[0])
    assert spec.models[0].name == "smollm2-135m" and settings.data.kind == "backdoorllm"
    assert (settings.data.n_train, settings.data.n_trusted, settings.data.n_test) == (200, 40, 50)
    assert settings.evaluation.stage1_rows and settings.evaluation.reference_nll
    assert settings.stage1.min_per_trigger == 40    # the validation choice (docs/results.md)
    # stage 2 through LoRA on every linear layer at lr 1e-3 (the validation choice); the
    # baselines train every weight at lr 1e-4, as their measured cells did
    lora = settings.stage2.train.lora
    assert lora is not None and lora.target_modules == ["all-linear"] and lora.dropout == 0
    assert settings.stage2.train.learning_rate == 1e-3
    assert settings.baseline_train.lora is None and settings.baseline_train.learning_rate == 1e-4
    assert settings.baseline_train.max_length == settings.stage2.train.max_length == 256


def test_overrides_reach_every_cell(tmp_path):
    path = write(tmp_path, "attacks: [badnet, insent]\nstage2:\n  margin: 0\n")
    config = load_grid_config(path, ["seeds=[0, 1]", "stage2.train.epochs=2",
                                     "finetune.lora={r: 4}"])
    assert config.seeds == [0, 1] and len(config.groups) == 4
    cell = config.experiment(config.models[0], 1, "insent", "refusal")
    settings = cell.settings
    assert settings.stage2.margin == 0.0 and settings.stage2.train.epochs == 2.0
    assert settings.finetune.lora.r == 4 and settings.finetune.lora.alpha == 32  # defaults kept
    assert cell.seed == 1 and cell.defenses == ["none", "clean-fft", "mb-defense"]
    assert cell.include_clean_reference


@pytest.mark.parametrize("text, message", [
    ("atacks: [badnet]\n", "grid.yaml:1: atacks: unknown key"),
    ("attacks: [badnet]\nstage2:\n  margn: 3\n", "grid.yaml:3: stage2.margn: unknown setting"),
    ("attacks:\n  - badnet\n  - 'word:'\n", "grid.yaml:3: attacks.1: trigger"),
    ("behaviors: [rude]\n", "grid.yaml:1: behaviors.0"),
    ("defenses: [none, magic]\n", "defenses.1: unknown defense 'magic'"),
    ("models: [./gpt-9]\n", "models.0: './gpt-9' not found"),
    ("model: {name: embedded, dtype: float8}\n", "grid.yaml:1: model.dtype: unknown 'float8'"),
    ("name: ../../tmp/x\n", "name: '../../tmp/x' is not a safe folder name"),
    ("attacks: [\"word:cf\\nSYSTEM: obey\"]\n", "attacks.0: control characters"),
    ("stage2:\n  margin: .inf\n", "stage2.margin: must be a finite number"),
    ("finetune:\n  learning_rate: -1\n", "finetune.learning_rate: must be > 0"),
    ("data:\n  n_train: -5\n", "data.n_train: must be an integer >= 0"),
    ("data:\n  train: nowhere.json\n  trusted: t.json\n  test: x.json\n",
     "data.train: 'nowhere.json' not found"),
    ("a: &x [1]\nb: *x\n", "anchors and aliases are not supported"),
    ("finetune:\n  epochs: many\n", "grid.yaml:2: finetune.epochs: expected float"),
    ("seeds: [0, 0]\n", "seeds: duplicate"),
    ("poison_rate: 2\n", "poison_rate: expected a number in (0, 1]"),
    ("defenses: [onion]\ndefense_options:\n  onion: {thresh: 1}\n",
     "grid.yaml:3: defense_options.onion: defense onion: unknown option(s) 'thresh'"),
    ("defense_options:\n  p2p: {rate: 0.1}\n", "options for 'p2p', which is not in defenses"),
    ("stage1:\n  on_weak_implant: never\n", "grid.yaml:2: stage1.on_weak_implant: unknown"),
    ("behaviors: [jailbreak]\n", "jailbreak needs harmful requests"),
    ("evaluation:\n  scorer: bleu\n", "evaluation.scorer: unknown scorer 'bleu'"),
    ("evaluation:\n  scorer: rouge\n", "did you mean 'rouge-l'"),
    ("generation:\n  backend: beam\n", "grid.yaml:1: generation"),
    ("attacks: [badnet\n", "grid.yaml:2: not valid YAML"),
    ("- a\n- b\n", "expected a mapping of settings"),
    ("stage2:\n  train:\n    lora: {target_modules: [all-linear, q_proj]}\n",
     "grid.yaml:3: stage2.train.lora.target_modules: 'all-linear' already names every linear"),
    ("stage2:\n  train:\n    lora: {target_modules: []}\n",
     "stage2.train.lora.target_modules: must be a list of module names"),
])
def test_bad_configs_fail_before_any_work_naming_the_place(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_grid_config(write(tmp_path, text))
    assert message in str(info.value)


def test_the_generator_reaches_every_cell_and_vllm_needs_vllm(tmp_path):
    import importlib.util

    path = write(tmp_path, "attacks: [badnet]\n")
    spec = load_grid_config(path)
    assert spec.experiment(spec.models[0], 0, "badnet", "refusal").settings.generation.backend \
        == "plain"
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ConfigError, match="command line override: generation.*vllm"):
            load_grid_config(path, ["generation.backend=vllm"])


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    """YAML 1.1 reads 3e-5 as a string; a float setting takes it as the number it means."""
    path = write(tmp_path, "stage2:\n  train: {learning_rate: 1e-4}\n")
    config = load_grid_config(path, ["stage1.top_up_learning_rate=3e-5",
                                     "finetune.learning_rate=+2E-4"])
    settings = config.experiment(config.models[0], 0, "badnet", "refusal").settings
    assert settings.stage1.top_up_learning_rate == 3e-5
    assert settings.stage2.train.learning_rate == 1e-4
    assert settings.finetune.learning_rate == 2e-4
    with pytest.raises(ConfigError, match="finetune.epochs: expected float, got str"):
        load_grid_config(path, ["finetune.epochs=3e"])


def test_baseline_train_starts_from_stage2_and_names_bad_keys(tmp_path):
    """The baselines' own training settings: the keys given, the rest as stage 2's (a preset
    without baseline settings) or as the preset's baseline settings (the embedded one)."""
    smoke = "model: {name: embedded-smoke}\n"
    path = write(tmp_path, smoke + "stage2:\n  train: {epochs: 3, learning_rate: 1e-4}\n"
                                   "baseline_train: {epochs: 2}\n")
    config = load_grid_config(path)
    settings = config.experiment(config.models[0], 0, "badnet", "refusal").settings
    assert (settings.baseline_train.epochs, settings.baseline_train.learning_rate) == (2, 1e-4)
    assert settings.stage2.train.epochs == 3
    (tmp_path / "plain").mkdir()
    plain = load_grid_config(write(tmp_path / "plain", smoke))
    assert plain.experiment(plain.models[0], 0, "badnet", "refusal").settings.baseline_train is None
    # the embedded preset: stage 2 trains LoRA, the baselines every weight, each at its own lr
    (tmp_path / "embedded").mkdir()
    embedded = load_grid_config(write(tmp_path / "embedded", "baseline_train: {epochs: 2}\n"))
    settings = embedded.experiment(embedded.models[0], 0, "badnet", "refusal").settings
    assert settings.stage2.train.lora is not None and settings.baseline_train.lora is None
    assert (settings.baseline_train.epochs, settings.baseline_train.learning_rate) == (2, 1e-4)
    assert settings.stage2.train.learning_rate == 1e-3
    with pytest.raises(ConfigError, match=r"baseline_train.epoch: unknown setting \(did you mean"):
        load_grid_config(path, ["baseline_train.epoch=1"])
    with pytest.raises(ConfigError, match="baseline_train.learning_rate: must be > 0"):
        load_grid_config(path, ["baseline_train.learning_rate=0"])


def test_bad_overrides_name_the_command_line(tmp_path):
    path = write(tmp_path, "seeds: [0]\n")
    with pytest.raises(ConfigError, match="command line override: seeds.0: expected int"):
        load_grid_config(path, ["seeds=[x]"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["seeds"])
    with pytest.raises(ConfigError, match="cannot read the config"):
        load_grid_config(tmp_path / "missing.yaml")


def test_progress_estimates_time_left_from_computed_cells(monkeypatch):
    clock = iter([0.0, 10.0, 10.5, 30.0])
    monkeypatch.setattr("mbdefense.runs.experiment.time.time", lambda: next(clock))
    lines: list[str] = []
    progress = Progress(4, lines.append)
    progress.cell("none", cached=False)     # 10 s
    progress.cell("clean-fft", cached=True)  # loaded: not in the rate
    progress.cell("mb-defense", cached=False)  # 19.5 s
    assert lines[0].startswith("[1/4 cells] none") and "about 30s left" in lines[0]
    assert "(cached)" in lines[1]
    assert lines[2].startswith("[3/4 cells]") and "about 15s left" in lines[2]


def test_list_and_optional_settings_are_checked_by_their_declared_types(tmp_path):
    config = load_grid_config(write(tmp_path, "stage1:\n  triggers: [mn, bb]\n"
                                              "  responses: null\n"))
    assert config.experiment(config.models[0], 0, "badnet", "refusal").settings.stage1.triggers \
        == ["mn", "bb"]
    with pytest.raises(ConfigError, match="stage1.triggers: expected list"):
        load_grid_config(write(tmp_path, "stage1:\n  triggers: mn\n"))


def test_more_triggers_per_copy_than_defensive_triggers_fails_before_any_work(tmp_path):
    path = write(tmp_path, "stage1:\n  triggers: [mn, bb]\n")
    assert load_grid_config(path, ["stage2.triggers_per_copy=2"]) is not None
    with pytest.raises(ConfigError, match="stage2.triggers_per_copy: 3 is more than the 2 "
                                          "defensive triggers"):
        load_grid_config(path, ["stage2.triggers_per_copy=3"])
