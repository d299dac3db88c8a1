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
