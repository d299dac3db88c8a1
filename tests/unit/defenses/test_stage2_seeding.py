"""Stage 2 is reproducible with LoRA and dropout: its training config takes the defense's
seed."""

import copy

import torch

from mbdefense.data.suite import generate
from mbdefense.defenses.defensive_triggers import make_defensive_pairs
from mbdefense.defenses.neutralization import NeutralizationConfig, neutralize
from mbdefense.training.config import LoraSettings, TrainConfig


def test_neutralize_with_lora_and_dropout_is_seeded(tiny_model, tokenizer):
    trusted = generate(20, 0)
    pairs = make_defensive_pairs(["mn"])
    config = NeutralizationConfig(train=TrainConfig(
        epochs=2, learning_rate=1e-2, batch_size=8, progress=False,
        lora=LoraSettings(r=4, alpha=8, dropout=0.3)))

    def run(seed):
        torch.rand(3)                                   # the caller's RNG moves on
        model, _ = neutralize(copy.deepcopy(tiny_model), tokenizer, trusted, pairs, config,
                              seed=seed)
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    one, two, other = run(0), run(0), run(1)
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert any(not torch.equal(one[k], other[k]) for k in one)
