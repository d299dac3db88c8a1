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
