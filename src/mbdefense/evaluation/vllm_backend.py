"""The ``vllm`` generator: greedy evaluation answers from a vLLM engine (optional; CUDA GPUs).

The model and tokenizer are saved to a temporary folder and loaded by ``vllm.LLM`` with tensor
parallelism over every visible CUDA GPU, in the model's dtype. Prompts go in as token ids, so
they are tokenised exactly as in the plain backend, and sampling is greedy
(``temperature=0``) with the same stop tokens. vLLM is imported lazily: the rest of mbdefense
never needs it.
"""

from __future__ import annotations

import tempfile
from typing import Any, Sequence

from mbdefense.core.errors import ConfigError

MISSING = "generator vllm: the vllm package is not installed (pip install vllm); it needs CUDA GPUs"


def require_vllm() -> Any:
    """The ``vllm`` module, or :class:`ConfigError` when it cannot be imported."""
    try:
        import vllm
    except ImportError as error:
        raise ConfigError(MISSING) from error
    return vllm


def dtype_name(model: Any) -> str:
    """The model's parameter dtype as vLLM names it (``bfloat16``, ``float16``, ``float32``)."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def vllm_token_ids(model: Any, tokenizer: Any, prompt_ids: Sequence[Sequence[int]], *,
                   max_new_tokens: int, stop_ids: frozenset[int]) -> list[list[int]]:
    """Greedy continuations of token-id prompts from a vLLM engine, in input order."""
    import torch

    vllm = require_vllm()
    if max_new_tokens <= 0 or not prompt_ids:
        return [[] for _ in prompt_ids]
    params = vllm.SamplingParams(temperature=0.0, max_tokens=max_new_tokens,
                                 stop_token_ids=sorted(stop_ids))
    prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
    with tempfile.TemporaryDirectory(prefix="mbdefense-vllm-") as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        engine = vllm.LLM(model=folder, tensor_parallel_size=max(1, torch.cuda.device_count()),
                          dtype=dtype_name(model), seed=0, trust_remote_code=False)
        results = engine.generate(prompts, params, use_tqdm=False)
    return [list(result.outputs[0].token_ids) for result in results]
