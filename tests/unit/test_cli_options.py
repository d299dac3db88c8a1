"""The command line's options come from the settings dataclasses: one place for each default."""

import pytest

from mbdefense.cli import build_parser, main
from mbdefense.runs.defend import DEFEND_OPTIONS, get_path, preset_settings, settings_with
from mbdefense.runs.spec import ModelSpec


def subparser(name):
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices[name]


def test_defend_options_show_the_preset_defaults_and_reach_the_settings():
    preset = preset_settings(ModelSpec(name="pretrained"))
    defend = subparser("defend")
    helps = {a.option_strings[0]: a.help for a in defend._actions if a.option_strings}
    for flag, paths, _ in DEFEND_OPTIONS:
        default = get_path(preset, paths[0])
        assert f"default: {default}" in helps[flag], flag
        for path in paths:      # every path an option sets exists and takes the value
            changed = settings_with(preset_settings(ModelSpec(name="x")), {path: default})
            assert get_path(changed, path) == default


def test_every_subcommand_has_an_example_and_shows_defaults(capsys):
    for name in ("demo", "poison", "defend", "eval", "run", "report", "analyze"):
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = capsys.readouterr().out
        assert "example:" in text and f"mbdefense {name}" in text, name
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("mbdefense ")


def test_a_bad_option_value_is_one_line_naming_the_setting(tmp_path, capsys):
    code = main(["defend", "--model", "embedded", "--data", "x.json", "--trusted", "y.json",
                 "--out", str(tmp_path / "o"), "--lr", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and "--lr (finetune.learning_rate): must be > 0" in err
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_a_negative_anchor_is_refused_naming_the_flag(tmp_path, capsys):
    code = main(["defend", "--model", "embedded", "--data", "x.json", "--trusted", "y.json",
                 "--out", str(tmp_path / "o"), "--anchor", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and "--anchor (stage2.anchor)" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_defend_lora_keeps_the_presets_own_stage2_adapters():
    """``--lora`` puts instruction tuning on adapters; stage 2 keeps the ``pretrained``
    preset's adapters on every linear layer, and gets ``--lora``'s where a preset trains
    every weight in stage 2."""
    from mbdefense.runs.defend import lora_values
    from mbdefense.training.config import LoraSettings

    pretrained = preset_settings(ModelSpec(name="pretrained"))
    settings = settings_with(pretrained, lora_values(pretrained, LoraSettings()))
    assert settings.finetune.lora == LoraSettings()
    assert settings.stage2.train.lora.target_modules == ["all-linear"]
    smoke = preset_settings(ModelSpec(name="embedded-smoke"))
    assert smoke.stage2.train_config().lora is None
    settings = settings_with(smoke, lora_values(smoke, LoraSettings(r=4)))
    assert settings.finetune.lora.r == settings.stage2.train.lora.r == 4


def test_run_cache_defended_reaches_every_experiment(tmp_path, monkeypatch):
    import mbdefense.runs.experiment as experiment

    class Stop(Exception):
        pass

    seen = []

    def capture(spec, out, **kwargs):
        seen.append(spec)
        raise Stop

    monkeypatch.setattr(experiment, "run_spec", capture)
    for flags in ([], ["--cache-defended"]):
        with pytest.raises(Stop):
            main(["run", "configs/smoke.yaml", "--out", str(tmp_path / f"o{len(flags)}"),
                  "--quiet", *flags])
    model, seed, attack, behavior = seen[1].groups[0]
    assert not seen[0].experiment(model, seed, attack, behavior).cache_defended
    assert seen[1].experiment(model, seed, attack, behavior).cache_defended
