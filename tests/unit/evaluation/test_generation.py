"""The plain generator gives exactly the answers of greedy ``model.generate``."""

from __future__ import annotations

import copy
import random
import sys

import pytest
import torch

from mbdefense.data.formatting import render_prompt
from mbdefense.data.suite import generate
from mbdefense.core.errors import ConfigError
from mbdefense.evaluation import generation
from mbdefense.evaluation.generation import (GENERATORS, check_backend, generate_answers,
                                             generate_token_ids, pack_prompts, packed_inputs,
                                             stop_token_ids)
from mbdefense.modeling.embedded import TinyModelConfig, build_tiny_model
from mbdefense.training.batching import pad_sequences

TWO_LAYERS = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def chain_model(tokenizer, *, seed: int = 0, stop_share: float = 0.15):
    """A tiny Llama whose greedy answers follow a fixed random chain of tokens (after ``x``
    comes ``next[x]``) and end with EOS after any of a set of stop tokens, so that answers
    end at many different steps (and some run to ``max_new_tokens``). The layers are
    weakened, not removed: the context still moves the logits a little."""
    model = build_tiny_model(tokenizer, TWO_LAYERS, seed=seed)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(0.1)
            layer.mlp.down_proj.weight.mul_(0.1)
        embedding = model.get_input_embeddings().weight
        generator = torch.Generator().manual_seed(seed)
        following = torch.randperm(embedding.shape[0], generator=generator)
        stops = torch.rand(embedding.shape[0], generator=generator) < stop_share
        stops[tokenizer.all_special_ids] = False
        first_stop = int(stops.nonzero()[0])
        embedding[stops] = embedding[first_stop].clone()     # one input direction: "stop"
        head = torch.zeros_like(embedding)
        head[following] = 10 * embedding                     # row next[x] matches x
        head[tokenizer.all_special_ids] = 0
        head[tokenizer.eos_token_id] = 20 * embedding[first_stop]
        model.lm_head = torch.nn.Linear(embedding.shape[1], embedding.shape[0], bias=False)
        model.lm_head.weight.copy_(head)
    return model.eval()


def id_prompts(seed: int = 0) -> list[list[int]]:
    """Token-id prompts that share prefixes in every way: variants of a prompt (same prefix,
    other ending), duplicates, a prompt that is a prefix of another, one-token prompts."""
    rng = random.Random(seed)
    bases = [[rng.randrange(5, 512) for _ in range(rng.randrange(2, 12))] for _ in range(6)]
    variants = [b[:rng.randrange(1, len(b))] + [rng.randrange(5, 512)] for b in bases]
    prompts = bases + variants + [bases[0], bases[1][:-1], [bases[2][0]], [7]]
    rng.shuffle(prompts)
    return prompts


def text_prompts(tokenizer) -> list[str]:
    """Chat-formatted prompts and bare instructions (whose last tokens differ)."""
    examples = generate(12, seed=0)
    return ([render_prompt(tokenizer, e) for e in examples[:4]]
            + [e.instruction for e in examples[4:]])


def hf_one_by_one(model, prompts, max_new_tokens, stop):
    """Greedy ``model.generate`` on each prompt alone (no padding), cut after the stop."""
    outputs = []
    for prompt in prompts:
        out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=0, eos_token_id=sorted(stop))
        outputs.append(generation.cut_at_stop(out[0, len(prompt):].tolist(), stop))
    return outputs


def hf_per_batch(model, prompts, max_new_tokens, stop, batch_size):
    """Greedy ``model.generate`` per left-padded batch in dataset order, cut after the stop."""
    outputs = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = pad_sequences(prompts[start:start + batch_size], 0, left=True)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=0, eos_token_id=sorted(stop))
        outputs += [generation.cut_at_stop(r, stop) for r in out[:, ids.shape[1]:].tolist()]
    return outputs


def ours(model, prompts, max_new_tokens, stop, batch_size, **kwargs):
    return generate_token_ids(model, prompts, max_new_tokens=max_new_tokens,
                              batch_size=batch_size, stop_ids=stop, pad_id=0, **kwargs)


@pytest.fixture(scope="module")
def chain(tokenizer):
    return chain_model(tokenizer)


@pytest.fixture(scope="module")
def eos(tokenizer):
    return frozenset({tokenizer.eos_token_id})


def test_chain_model_answers_end_at_different_steps(chain, eos):
    lengths = [len(a) for a in ours(chain, id_prompts(), 10, eos, batch_size=4)]
    assert len(set(lengths)) >= 4 and max(lengths) == 10 and min(lengths) < 5


def test_answers_match_generate_one_by_one_and_per_batch(tokenizer, chain, eos):
    prompts = text_prompts(tokenizer)
    answers = generate_answers(chain, tokenizer, prompts, max_new_tokens=10, batch_size=5)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    for reference in (hf_one_by_one(chain, encoded, 10, eos),
                      hf_per_batch(chain, encoded, 10, eos, batch_size=5)):
        assert answers == [tokenizer.decode(r, skip_special_tokens=True).strip()
                           for r in reference]
    assert len(set(answers)) >= 3


@pytest.mark.parametrize("batch_size", [1, 3, 5, 64])
def test_token_ids_match_generate_with_shared_prefixes(chain, eos, batch_size):
    prompts = id_prompts(batch_size)
    expected = hf_one_by_one(chain, prompts, 10, eos)
    assert ours(chain, prompts, 10, eos, batch_size) == expected
    assert hf_per_batch(chain, prompts, 10, eos, batch_size) == expected


def test_static_cache_bf16_and_fallback_give_the_same_answers(chain, eos, monkeypatch):
    prompts = id_prompts(1)
    expected = hf_one_by_one(chain, prompts, 8, eos)
    assert ours(chain, prompts, 8, eos, batch_size=4, static_cache=True) == expected
    half = copy.deepcopy(chain).to(torch.bfloat16)
    assert ours(half, prompts, 8, eos, batch_size=4) == hf_one_by_one(half, prompts, 8, eos)
    monkeypatch.setattr(generation, "supports_packed_prefill", lambda model: False)
    assert ours(chain, prompts, 8, eos, batch_size=4) == expected


def test_max_new_tokens_is_respected(chain, eos):
    prompts = id_prompts(2)
    assert all(len(a) == 6 for a in ours(chain, prompts, 6, frozenset(), batch_size=4))
    assert ours(chain, prompts, 1, eos, batch_size=4) == hf_one_by_one(chain, prompts, 1, eos)
    assert all(len(a) <= 3 for a in ours(chain, prompts, 3, eos, batch_size=4))


def test_no_prompts_or_no_tokens(tokenizer, chain):
    assert generate_answers(chain, tokenizer, [], max_new_tokens=8) == []
    assert generate_answers(chain, tokenizer, ["a", "b"], max_new_tokens=0) == ["", ""]


def full_forward(model, sequences):
    """``model`` on left-padded sequences, positions as ``model.generate`` sets them."""
    ids, mask = pad_sequences(sequences, 0, left=True)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return mask, model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("pack_factor", [1, 4])
@pytest.mark.parametrize("static", [False, True])
def test_prefill_and_steps_match_the_full_forward(tokenizer, monkeypatch, attention,
                                                  pack_factor, static):
    """After the shared-prefix prefill and two decode steps, the cache holds what a plain
    left-padded forward over prompt + fed tokens computes (keys carry the positions), and the
    newest tokens are that forward's argmax."""
    monkeypatch.setattr(generation, "PACK_FACTOR", pack_factor)
    model = build_tiny_model(tokenizer, TWO_LAYERS, seed=1).eval()
    model.set_attn_implementation(attention)
    prompts = sorted(id_prompts(3))
    with torch.inference_mode():
        rows = generation.prefill(model, prompts, list(range(len(prompts))), 0, static=static,
                                  max_new_tokens=3)
        fed = []
        for _ in range(2):
            fed.append(rows.tokens.tolist())
            generation.step(model, rows)
        mask, out = full_forward(model, [p + list(t) for p, *t in zip(prompts, *fed)])
    assert torch.equal(rows.mask, mask)
    assert rows.tokens.tolist() == out.logits[:, -1].argmax(-1).tolist()
    real = mask.bool()[:, None, :, None]
    for ours_layer, hf_layer in zip(rows.cache.layers, out.cache.layers):
        for a, b in ((ours_layer.keys, hf_layer.keys), (ours_layer.values, hf_layer.values)):
            assert torch.allclose(a[:, :, :mask.shape[1]] * real, b * real, atol=1e-5)


def test_packing_computes_shared_prefixes_once():
    prompts = sorted([[1, 2, 4, 5, 8], [1, 2, 3, 9], [1, 6, 7], [1, 2, 3, 9]])
    rows, places = pack_prompts(prompts, limit=100)
    (row,) = rows
    assert row.tokens == [1, 2, 3, 4, 5, 6] and row.leaves == [9, 9, 8, 7]
    assert [p.columns for p in places] == [[0, 1, 2], [0, 1, 2], [0, 1, 3, 4], [0, 5]]
    ids, positions, mask = packed_inputs(rows, pad_id=0, dtype=torch.float32)
    assert ids[0].tolist() == [1, 2, 3, 4, 5, 6, 9, 9, 8, 7]
    assert positions[0].tolist() == [0, 1, 2, 2, 3, 1, 3, 3, 4, 2]
    seen = (mask[0, 0] == 0).nonzero().tolist()
    visible = [{b for a, b in seen if a == column} for column in range(ids.shape[1])]
    assert visible[:6] == [{0}, {0, 1}, {0, 1, 2}, {0, 1, 3}, {0, 1, 3, 4}, {0, 5}]
    assert visible[6:] == [{0, 1, 2, 6}, {0, 1, 2, 7}, {0, 1, 3, 4, 8}, {0, 5, 9}]


def test_packing_splits_rows_at_the_limit():
    rows, places = pack_prompts([[1, 2, 3], [1, 2, 4], [5, 6, 7]], limit=4)
    assert [(r.tokens, r.leaves) for r in rows] == [([1, 2], [3, 4]), ([5, 6], [7])]
    assert [p.row for p in places] == [0, 0, 1]


def test_stop_tokens_include_the_generation_config_list(tokenizer, chain):
    assert stop_token_ids(chain, tokenizer) == {tokenizer.eos_token_id}
    chain.generation_config.eos_token_id = [tokenizer.eos_token_id, 7]
    try:
        assert stop_token_ids(chain, tokenizer) == {tokenizer.eos_token_id, 7}
    finally:
        chain.generation_config.eos_token_id = tokenizer.eos_token_id


def test_sliding_window_models_fall_back_to_generate(tokenizer):
    model = build_tiny_model(tokenizer, TWO_LAYERS)
    assert generation.supports_packed_prefill(model)
    model.config.sliding_window = 4
    assert not generation.supports_packed_prefill(model)


def test_backends(tokenizer, chain, monkeypatch):
    assert GENERATORS.names() == ["plain", "vllm"]
    check_backend("plain")
    with pytest.raises(ConfigError, match="unknown"):
        check_backend("hf")
    with pytest.raises(ConfigError, match=r"^unknown generator 'plian' \(did you mean 'plain'\?\) "
                                          r"\(known: plain, vllm\)$"):
        check_backend("plian")
    with pytest.raises(ConfigError, match="unknown"):
        generate_answers(chain, tokenizer, ["a"], backend="hf")
    monkeypatch.setitem(sys.modules, "vllm", None)      # as if not installed
    with pytest.raises(ConfigError, match=r"vllm package is not installed \(pip install vllm\)"):
        check_backend("vllm")
