"""Grid configs: validated before any work, with errors naming file, line and key."""

from pathlib import Path

import pytest

from mbdefense.core.errors import ConfigError
from mbdefense.grid import Progress, load_grid_config, parse_overrides, plan

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    config = load_grid_config(path)
    assert config.n_cells == len(config.groups) * len(config.defenses) > 0
    for group in config.groups:  # every cell's settings build
        experiment = config.experiment(*group, progress=False)
        assert experiment.attack == group[2] and experiment.seed == group[1]
    assert config.name in plan(config)


def test_shipped_configs_include_the_paper_table1_layout():
    config = load_grid_config(next(p for p in CONFIGS if p.name == "table1.yaml"))
    assert len(config.attacks) == 4 and set(config.behaviors) == {"refusal", "toxic"}
    assert {"clean", "none", "clean-fft", "onion", "fine-mixing", "mb-defense"} <= set(
        config.defenses)


def test_overrides_reach_every_cell(tmp_path):
    path = write(tmp_path, "attacks: [badnet, insent]\nstage2:\n  margin: 0\n")
    config = load_grid_config(path, ["seeds=[0, 1]", "stage2.train.epochs=2",
                                     "finetune.lora={r: 4}"])
    assert config.seeds == [0, 1] and len(config.groups) == 4
    cell = config.experiment("embedded", 1, "insent", "refusal")
    assert cell.stage2.margin == 0.0 and cell.stage2.train.epochs == 2.0
    assert cell.finetune.lora.r == 4 and cell.finetune.lora.alpha == 32   # defaults kept
    assert cell.seed == 1 and cell.defenses == ["none", "clean-fft", "mb-defense"]
    assert cell.include_clean_reference


@pytest.mark.parametrize("text, message", [
    ("atacks: [badnet]\n", "grid.yaml:1: atacks: unknown key"),
    ("attacks: [badnet]\nstage2:\n  margn: 3\n", "grid.yaml:3: stage2.margn: unknown setting"),
    ("attacks:\n  - badnet\n  - 'word:'\n", "grid.yaml:3: attacks.1: trigger"),
    ("behaviors: [rude]\n", "grid.yaml:1: behaviors.0"),
    ("defenses: [none, magic]\n", "defenses.1: unknown defense 'magic'"),
    ("models: [gpt-9]\n", "models.0: unknown model 'gpt-9'"),
    ("finetune:\n  epochs: many\n", "grid.yaml:2: finetune.epochs: expected float"),
    ("seeds: [0, 0]\n", "seeds: duplicate"),
    ("poison_rate: 2\n", "poison_rate: expected a number in (0, 1]"),
    ("defenses: [onion]\ndefense_options:\n  onion: {thresh: 1}\n",
     "grid.yaml:3: defense_options.onion: defense onion: unknown option(s) 'thresh'"),
    ("defense_options:\n  p2p: {rate: 0.1}\n", "options for 'p2p', which is not in defenses"),
    ("stage1:\n  on_weak_implant: never\n", "grid.yaml:1: stage1"),
    ("behaviors: [jailbreak]\n", "jailbreak needs harmful requests"),
    ("scorer: bleu\n", "scorer: unknown 'bleu'"),
    ("generator: beam\n", "grid.yaml:1: generator: "),
    ("attacks: [badnet\n", "grid.yaml:2: not valid YAML"),
    ("- a\n- b\n", "expected a mapping of settings"),
])
def test_bad_configs_fail_before_any_work_naming_the_place(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_grid_config(write(tmp_path, text))
    assert message in str(info.value)


def test_the_generator_reaches_every_cell_and_vllm_needs_vllm(tmp_path):
    import importlib.util

    path = write(tmp_path, "attacks: [badnet]\n")
    assert load_grid_config(path).experiment("embedded", 0, "badnet", "refusal").generator \
        == "plain"
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ConfigError, match="command line override: generator: .*vllm"):
            load_grid_config(path, ["generator=vllm"])


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
    monkeypatch.setattr("mbdefense.grid.time.time", lambda: next(clock))
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
    assert config.experiment("embedded", 0, "badnet", "refusal").stage1.triggers == ["mn", "bb"]
    with pytest.raises(ConfigError, match="stage1.triggers: expected list"):
        load_grid_config(write(tmp_path, "stage1:\n  triggers: mn\n"))
