"""The vllm generator's plumbing, against a fake ``vllm`` module (vLLM needs CUDA GPUs)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from mbdefense.core.errors import ConfigError
from mbdefense.evaluation.generation import check_backend, generate_answers


class FakeVLLM(types.ModuleType):
    """Records how it is driven; answers each prompt with its own last tokens reversed, then
    EOS, so an answer shows which prompt it belongs to."""

    def __init__(self, eos_id: int):
        super().__init__("vllm")
        self.eos_id = eos_id
        self.engines: list[dict] = []
        self.calls: list[tuple[list, object]] = []
        fake = self

        class SamplingParams:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

        class LLM:
            def __init__(self, **kwargs):
                folder = Path(kwargs["model"])
                kwargs["saved"] = sorted(p.name for p in folder.iterdir())
                fake.engines.append(kwargs)

            def generate(self, prompts, params, use_tqdm=True):
                fake.calls.append((prompts, params))
                return [fake.result(p["prompt_token_ids"], params) for p in prompts]

        self.SamplingParams, self.LLM = SamplingParams, LLM

    def result(self, ids: list[int], params) -> types.SimpleNamespace:
        tokens = ids[::-1][:params.kwargs["max_tokens"] - 1] + [self.eos_id]
        return types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=tuple(tokens))])


@pytest.fixture()
def fake_vllm(tokenizer, monkeypatch):
    fake = FakeVLLM(tokenizer.eos_token_id)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    return fake


def test_vllm_answers_in_input_order_from_token_ids(tokenizer, tiny_model, fake_vllm):
    prompts = ["What is 8 plus 0?", "Name a colour.", "Count the words below."]
    answers = generate_answers(tiny_model, tokenizer, prompts, max_new_tokens=3,
                               backend="vllm")
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert answers == [tokenizer.decode(ids[::-1][:2], skip_special_tokens=True).strip()
                       for ids in encoded]
    ((sent, params),) = fake_vllm.calls
    assert sent == [{"prompt_token_ids": ids} for ids in encoded]
    assert params.kwargs == {"temperature": 0.0, "max_tokens": 3,
                             "stop_token_ids": [tokenizer.eos_token_id]}


def test_vllm_engine_gets_the_saved_model_all_gpus_and_its_dtype(tokenizer, tiny_model,
                                                                fake_vllm):
    generate_answers(tiny_model.to(torch.bfloat16), tokenizer, ["Hi"], backend="vllm")
    (engine,) = fake_vllm.engines
    assert engine["tensor_parallel_size"] == 4 and engine["dtype"] == "bfloat16"
    assert engine["seed"] == 0 and engine["trust_remote_code"] is False
    assert "config.json" in engine["saved"] and "tokenizer.json" in engine["saved"]
    assert not Path(engine["model"]).exists()           # the temporary folder is gone


def test_vllm_needs_no_engine_for_no_prompts(tokenizer, tiny_model, fake_vllm):
    assert generate_answers(tiny_model, tokenizer, [], backend="vllm") == []
    assert fake_vllm.engines == []


def test_vllm_backend_is_checked(monkeypatch, fake_vllm):
    check_backend("vllm")
    monkeypatch.setitem(sys.modules, "vllm", None)      # as if not installed
    with pytest.raises(ConfigError, match="it needs CUDA GPUs"):
        check_backend("vllm")
