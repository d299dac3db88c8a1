"""Keys of the stage cache."""

from mbdefense.data.suite import generate
from mbdefense.runs.cache import finetune_key
from mbdefense.training.config import TrainConfig


def test_finetune_key_follows_what_changes_the_weights():
    data = generate(20, 0)
    base = finetune_key("m", data, TrainConfig())
    assert finetune_key("m", data, TrainConfig(progress=False, description="x",
                                               gradient_checkpointing=True)) == base
    assert finetune_key("m", data, TrainConfig(learning_rate=1e-5)) != base
    assert finetune_key("other", data, TrainConfig()) != base
    assert finetune_key("m", data[:-1], TrainConfig()) != base
    assert finetune_key("m", data, TrainConfig(seed=1)) != base


def test_keys_change_with_the_package_version(monkeypatch):
    import mbdefense

    data = generate(5, 0)
    before = finetune_key("m", data, TrainConfig())
    monkeypatch.setattr(mbdefense, "__version__", "99.0.0")
    assert finetune_key("m", data, TrainConfig()) != before


def test_leftovers_of_killed_writes_are_cleaned_at_start(tmp_path):
    from mbdefense.runs.cache import StageCache

    root = tmp_path / "cache"
    (root / "cells").mkdir(parents=True)
    left = [root / ".finetune-abc.x1.tmp", root / ".finetune-abc.x2.old",
            root / "cells" / ".k1.x3.tmp"]
    for folder in left:
        (folder / "entry").mkdir(parents=True)
    kept = root / "finetune-abc"
    kept.mkdir()
    StageCache(root, log=lambda m: None)
    assert not any(p.exists() for p in left) and kept.is_dir()


def test_the_embedded_base_build_clears_what_a_killed_build_left(tmp_path):
    from mbdefense.modeling.embedded import TinyModelConfig
    from mbdefense.runs.embedded import BaseRecipe, embedded_base
    from mbdefense.training.config import TrainConfig as Train

    recipe = BaseRecipe(shape=TinyModelConfig(vocab_size=400, hidden_size=16, num_layers=1,
                                              num_heads=2, intermediate_size=32),
                        n_per_pool=16, n_pools=1, train=Train(epochs=1, batch_size=8,
                                                             progress=False))
    name = f"base-{recipe.key()}"
    stale = [tmp_path / f".{name}.abc.tmp", tmp_path / f".{name}.def.old"]
    for folder in stale:
        folder.mkdir()
    other = tmp_path / ".base-otherkey.ghi.tmp"      # another recipe's build: not ours to touch
    other.mkdir()
    _, _, path = embedded_base(recipe, cache_dir=tmp_path, progress=False, log=lambda m: None)
    assert path.name == name and (path / "config.json").exists()
    assert not any(p.exists() for p in stale) and other.exists()


def _after_training_keys(stage1=None, baseline_train=None, **stage2_changes):
    from dataclasses import replace

    from mbdefense.defenses import (DefensivePoisoningConfig, NeutralizationConfig,
                                    make_defense)

    stage1 = stage1 or DefensivePoisoningConfig()
    stage2 = replace(NeutralizationConfig(), **stage2_changes)
    names = ["mb-defense", "stage2-only", "clean-fft", "aug-fft", "fine-mixing", "crow",
             "pruning"]
    return {n: make_defense(n, stage1=stage1, stage2=stage2,
                            baseline_train=baseline_train).after_training_key() for n in names}


def test_the_baselines_train_with_their_own_settings_when_given():
    """``baseline_train`` moves Clean-FFT and its kin off stage 2's optimiser settings; then a
    new stage-2 optimiser (LoRA, another rate) leaves their cells alone, and theirs leaves
    MB-Defense's alone. Given the same values as stage 2's, nothing changes."""
    from mbdefense.defenses import NeutralizationConfig
    from mbdefense.training.config import LoraSettings

    baselines = ("clean-fft", "aug-fft", "fine-mixing", "crow")
    ours = ("mb-defense", "stage2-only")
    plain = _after_training_keys()
    same = _after_training_keys(baseline_train=NeutralizationConfig().train_config())
    assert same == plain
    full = TrainConfig(epochs=4, learning_rate=5e-5)
    lora = TrainConfig(epochs=4, learning_rate=1e-3, lora=LoraSettings(r=16, alpha=32))
    split = _after_training_keys(baseline_train=full, train=lora)
    for name in baselines:
        assert split[name] == _after_training_keys(train=full)[name]
    for name in ours:
        assert split[name] == _after_training_keys(train=lora)[name] != plain[name]
    other = _after_training_keys(baseline_train=TrainConfig(epochs=2, learning_rate=5e-5),
                                 train=lora)
    assert all(other[n] != split[n] for n in baselines)
    assert all(other[n] == split[n] for n in ours)
    long = _after_training_keys(baseline_train=TrainConfig(max_length=64))
    assert long["pruning"] == {"max_length": 64}


def test_a_defense_key_holds_the_stage2_settings_it_reads_and_no_others():
    from mbdefense.defenses import DefensivePoisoningConfig

    base = _after_training_keys()
    margin = _after_training_keys(margin=8.0)
    repair = _after_training_keys(repair_epochs=2.0)
    triggers = _after_training_keys(DefensivePoisoningConfig(triggers=["mn", "bb"]))
    for name in ("mb-defense", "stage2-only"):
        assert base[name] != margin[name] and base[name] != repair[name]
        assert base[name] != triggers[name]      # stage 2 trains on the defensive pairs
    for name in ("clean-fft", "aug-fft", "fine-mixing", "crow", "pruning"):
        assert base[name] == margin[name] == repair[name]
    assert base["aug-fft"] != triggers["aug-fft"]   # its copies carry the defensive triggers
    assert base["clean-fft"] == triggers["clean-fft"]
    lr = _after_training_keys(train=TrainConfig(epochs=5, learning_rate=1e-3))
    for name in ("mb-defense", "clean-fft", "aug-fft", "fine-mixing", "crow"):
        assert base[name] != lr[name]


def test_stage2_settings_added_later_stay_out_of_keys_at_their_default():
    """Entries cached before the repair phase existed stay valid; using it changes the key."""
    from dataclasses import replace

    from mbdefense.defenses import NeutralizationConfig
    from mbdefense.training.config import weight_settings

    plain = weight_settings(NeutralizationConfig())
    assert "repair_epochs" not in plain and "repair_weight" not in plain
    assert weight_settings(replace(NeutralizationConfig(), repair_epochs=2.0)) != plain
    assert "triggers_per_copy" not in plain
    assert weight_settings(replace(NeutralizationConfig(), triggers_per_copy=2)) != plain
    assert "r_tokens" not in plain
    assert weight_settings(replace(NeutralizationConfig(), r_tokens=4)) != plain
    assert "keep" not in plain
    assert weight_settings(replace(NeutralizationConfig(), keep="last")) != plain


def test_stage1_keys_keep_their_shape_and_follow_the_top_up_rate():
    from dataclasses import asdict

    from mbdefense.defenses import DefensivePoisoningConfig, make_defense

    plain = make_defense("mb-defense", stage1=DefensivePoisoningConfig()).after_finetune_key()
    old = asdict(DefensivePoisoningConfig())
    old.pop("top_up_learning_rate")
    assert plain == old                      # stage-1 models cached before it stay valid
    slower = make_defense("mb-defense", stage1=DefensivePoisoningConfig(
        top_up_learning_rate=3e-5)).after_finetune_key()
    assert slower != plain
