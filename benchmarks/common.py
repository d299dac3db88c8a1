"""Shared pieces of the throughput benchmarks: workloads, model shapes, memory and FLOPs.

The benchmarks compare mbdefense with a peer measured in the same run; this module only
builds their common inputs so every variant sees the same model, data and settings.

- ``embedded_workload()``: the embedded default's base model and tokenizer, the training set
  the demo fine-tunes on (2000 suite examples, 20% BadNet-poisoned) and the demo's evaluation
  prompts (338 clean + 338 triggered test prompts).
- ``random_model(shape)``: a randomly initialised Llama of a named shape (no download), for
  GPU checks at real model sizes.
- ``peak_memory_gb()`` and ``mfu()``.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Shape:
    """A Llama-family shape (enough to build it from a config and to count its FLOPs)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = True


SHAPES = {
    # the public configs of HuggingFaceTB/SmolLM2-135M-Instruct and meta-llama/Llama-3.2-1B
    "smollm2-135m": Shape(hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3,
                          vocab=49152),
    "llama-3.2-1b": Shape(hidden=2048, intermediate=8192, layers=16, heads=32, kv_heads=8,
                          vocab=128256),
}

# Dense bf16 peak FLOP/s per GPU (vendor figures, no sparsity), by a substring of the name.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                   "A10G": 125e12, "L4": 121e12}


def embedded_workload(*, n_train: int = 2000, n_test: int = 338, seed: int = 0,
                      poison_rate: float = 0.2) -> dict[str, Any]:
    """The embedded default's data and base (built and cached on first use).

    Returns ``model``, ``tokenizer``, ``train`` (examples), ``eval_prompts`` (chat-formatted
    strings: the clean test prompts, then their BadNet-triggered copies).
    """
    from mbdefense.attacks import parse_behavior, parse_trigger, poison, triggered_copies
    from mbdefense.data.formatting import render_prompt
    from mbdefense.data.suite import build_splits
    from mbdefense.runs.embedded import embedded_base

    model, tokenizer, _ = embedded_base(progress=False, log=lambda message: None)
    splits = build_splits(n_train, 128, n_test, seed)
    trigger = parse_trigger("badnet")
    train = poison(splits.train, trigger, parse_behavior("refusal"), poison_rate, seed)
    tests = list(splits.test) + triggered_copies(splits.test, trigger, seed)
    return {"model": model, "tokenizer": tokenizer, "train": train,
            "eval_prompts": [render_prompt(tokenizer, e) for e in tests]}


def random_model(shape_name: str, *, device: str = "cpu", dtype: Any = None, seed: int = 0,
                 max_positions: int = 4096) -> Any:
    """A randomly initialised LlamaForCausalLM of the named shape."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = SHAPES[shape_name]
    config = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden,
                         intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
                         num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                         max_position_embeddings=max_positions,
                         tie_word_embeddings=shape.tied, pad_token_id=0, eos_token_id=1,
                         bos_token_id=None)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    if dtype is not None:
        model = model.to(dtype)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 1
    return model.eval()


def parameter_count(model: Any, *, embeddings: bool = False) -> int:
    """Parameters of ``model``; without ``embeddings``, the input embedding table is left out
    (a lookup, no FLOPs). A tied output layer is counted once, through the embedding."""
    total = sum(p.numel() for p in model.parameters())
    if not embeddings:
        total -= model.get_input_embeddings().weight.numel()
        head = model.get_output_embeddings()
        if head is not None and head.weight is model.get_input_embeddings().weight:
            total += head.weight.numel()   # the tied head is a real matmul
    return total


def training_flops_per_token(model: Any, context: int) -> float:
    """Forward + backward FLOPs per trained token: 6 x (matmul parameters) plus the attention
    scores (6 x layers x context x hidden x 2; causal: half)."""
    config = model.config
    attention = 6 * config.num_hidden_layers * context * config.hidden_size
    return 6 * parameter_count(model) + attention


def peak_bf16_flops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return value
    return None


def mfu(tokens_per_second: float, flops_per_token: float, device_name: str) -> float | None:
    """Model FLOPs utilisation against the device's dense bf16 peak (None when unknown)."""
    peak = peak_bf16_flops(device_name)
    return None if peak is None else tokens_per_second * flops_per_token / peak


def reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gb() -> float:
    """Peak GPU memory allocated (CUDA), else the process's peak resident set (its lifetime
    peak: run each variant in its own process to compare them)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


def timed(run: Callable[[], Any], device: str) -> float:
    """Wall-clock seconds of one run (synchronised on CUDA)."""
    import torch

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def setup_torch(args: Any) -> str:
    """Apply ``args.threads`` (0: torch's default) and default ``args.device`` to CUDA when
    there is one; returns the device's name for the printout ("cpu" or the GPU's)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return device_name() if args.device.startswith("cuda") else "cpu"
