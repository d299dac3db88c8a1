"""One seed and config, one set of weights: LoRA's initial weights and dropout are seeded, and
the caller's torch RNG state is left alone."""

import copy
from dataclasses import replace

import torch

from mbdefense.data.suite import generate
from mbdefense.training.config import LoraSettings, TrainConfig
from mbdefense.training.seeding import derive_seed, seeded
from mbdefense.training.sft import apply_lora, finetune


def lora_config(seed=0, dropout=0.3):
    return TrainConfig(epochs=1, learning_rate=1e-2, batch_size=8, progress=False, seed=seed,
                       lora=LoraSettings(r=4, alpha=8, dropout=dropout))


def weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def same(one, two):
    return one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def lora_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}


def test_lora_init_is_seeded(tiny_model):
    one = lora_weights(apply_lora(copy.deepcopy(tiny_model), lora_config(0)))
    torch.rand(5)                                      # the caller's RNG moved on
    two = lora_weights(apply_lora(copy.deepcopy(tiny_model), lora_config(0)))
    other = lora_weights(apply_lora(copy.deepcopy(tiny_model), lora_config(1)))
    assert one and same(one, two)
    assert all(not torch.equal(one[k], other[k]) for k in one)


def test_finetune_with_lora_and_dropout_is_reproducible(tiny_model, tokenizer):
    data = generate(24, 0)
    one = weights(finetune(copy.deepcopy(tiny_model), tokenizer, data, lora_config(0))[0])
    torch.rand(5)
    two = weights(finetune(copy.deepcopy(tiny_model), tokenizer, data, lora_config(0))[0])
    other = weights(finetune(copy.deepcopy(tiny_model), tokenizer, data, lora_config(1))[0])
    assert same(one, two)
    assert not same(one, other)
    assert not same(one, weights(tiny_model))           # it did train


def test_dropout_masks_are_seeded(tiny_model, tokenizer):
    """LoRA applied beforehand (one init): two trainings with one seed, the caller's RNG moved
    in between, draw the same dropout masks."""
    data = generate(24, 0)
    model = apply_lora(copy.deepcopy(tiny_model), lora_config(0, dropout=0.5))
    config = replace(lora_config(0), lora=None)

    def train():
        torch.rand(7)
        return weights(finetune(copy.deepcopy(model), tokenizer, data, config)[0])

    assert same(train(), train())


def test_finetune_leaves_the_callers_rng_state_alone(tiny_model, tokenizer):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    finetune(copy.deepcopy(tiny_model), tokenizer, generate(16, 0), lora_config(0))
    assert torch.equal(torch.get_rng_state(), state)


def test_seeded_blocks_draw_the_same_numbers_and_restore_the_state():
    state = torch.get_rng_state()
    with seeded(5, "x"):
        one = torch.rand(4)
    with seeded(5, "x"):
        two = torch.rand(4)
    with seeded(5, "y"):
        other = torch.rand(4)
    assert torch.equal(one, two) and not torch.equal(one, other)
    assert torch.equal(torch.get_rng_state(), state)
    assert 0 <= derive_seed(2**40, "train") < 2**63


def test_two_defend_lora_runs_with_one_seed_save_the_same_weights(tmp_path, tokenizer,
                                                                   tiny_model):
    """``defend --lora`` end to end (stage 1, fine-tune with LoRA and dropout, stage 2 with
    LoRA): one seed, one set of saved weights; another seed, other weights."""
    from safetensors.torch import load_file

    from mbdefense.attacks import parse_behavior, parse_trigger, poison
    from mbdefense.cli import main
    from mbdefense.data import save_examples

    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    train = poison(generate(40, 0), parse_trigger("badnet"), parse_behavior("refusal"), 0.2, 0)
    save_examples(train, tmp_path / "train.jsonl")
    save_examples(generate(10, 9), tmp_path / "trusted.jsonl")

    def defend(name, seed):
        out = tmp_path / name
        code = main(["defend", "--model", str(model_dir), "--data", str(tmp_path / "train.jsonl"),
                     "--trusted", str(tmp_path / "trusted.jsonl"), "--out", str(out), "--lora",
                     "--epochs", "1", "--stage2-epochs", "1", "--lr", "1e-2", "--max-length",
                     "96", "--seed", str(seed), "--quiet"])
        assert code == 0
        return load_file(out / "model" / "model.safetensors")

    one, two, other = defend("a", 0), defend("b", 0), defend("c", 1)
    assert same(one, two)
    assert not same(one, other)
