"""Which modules LoRA adapts: named ones, or every linear layer of the blocks."""

import copy

import pytest
import torch

from mbdefense.core.errors import ConfigError
from mbdefense.training.config import ALL_LINEAR, LoraSettings, TrainConfig
from mbdefense.training.sft import apply_lora


def adapted(model):
    """The names (in the plain model) of the modules that carry LoRA adapters."""
    prefix = "base_model.model."
    return {name.removeprefix(prefix) for name, module in model.named_modules()
            if hasattr(module, "lora_A")}


def test_all_linear_adapts_every_linear_layer_of_the_blocks_but_not_the_output_layer(
        tiny_model):
    linears = {name for name, m in tiny_model.named_modules() if isinstance(m, torch.nn.Linear)}
    head = {name for name, m in tiny_model.named_modules()
            if m is tiny_model.get_output_embeddings()}
    model = apply_lora(copy.deepcopy(tiny_model),
                       TrainConfig(lora=LoraSettings(r=2, alpha=4, target_modules=[ALL_LINEAR])))
    assert head and head <= linears
    assert adapted(model) == linears - head
    assert any(name.endswith("down_proj") for name in adapted(model))   # the MLP too


def test_named_targets_adapt_only_those(tiny_model):
    model = apply_lora(copy.deepcopy(tiny_model),
                       TrainConfig(lora=LoraSettings(r=2, alpha=4, target_modules=["v_proj"])))
    assert adapted(model) and all(name.endswith("v_proj") for name in adapted(model))


@pytest.mark.parametrize("targets", [[ALL_LINEAR, "q_proj"], [], "q_proj", [""]])
def test_bad_targets_are_refused(targets):
    with pytest.raises(ConfigError, match="lora.target_modules"):
        LoraSettings(target_modules=targets)
