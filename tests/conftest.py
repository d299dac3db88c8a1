"""Shared fixtures: everything offline, tiny, and built from configs."""

from __future__ import annotations

import os
import sys

import pytest

# Test helpers importable by name (e.g. ``from fake_openai import FakeServer``).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tokenizer():
    from mbdefense.modeling.embedded import train_tokenizer
    from mbdefense.runs.embedded import tokenizer_corpus

    return train_tokenizer(tokenizer_corpus(), 512)


@pytest.fixture()
def tiny_model(tokenizer):
    from mbdefense.modeling.embedded import TinyModelConfig, build_tiny_model

    return build_tiny_model(tokenizer, TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2,
                                                       intermediate_size=64), seed=0)
