"""Supervised fine-tuning of a causal LM on instruction data (loss on response tokens only)."""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

from mbdefense.data.example import Example
from mbdefense.data.formatting import encode_examples
from mbdefense.training.batching import TokenBatch, iterate_batches
from mbdefense.training.config import ALL_LINEAR, LoraSettings, TrainConfig
from mbdefense.training.logprobs import sequence_logprobs
from mbdefense.training.loop import run_steps
from mbdefense.training.seeding import device_of, seeded


def apply_lora(model: Any, config: TrainConfig) -> Any:
    """Wrap ``model`` with LoRA adapters when ``config.lora`` is set; their initial weights
    are drawn from ``config.seed`` (the caller's torch RNG state is left as it was)."""
    if config.lora is None:
        return model
    from peft import LoraConfig, get_peft_model

    lora = config.lora
    with seeded(config.seed, "lora-init", device_of(model)), warnings.catch_warnings():
        # peft reads transformers' renamed ``is_gradient_checkpointing``: not the user's concern
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                                category=FutureWarning)
        return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha,
                                                lora_dropout=lora.dropout,
                                                target_modules=peft_targets(lora),
                                                task_type="CAUSAL_LM"))


def peft_targets(lora: LoraSettings) -> str | list[str]:
    """``lora.target_modules`` as peft takes them (its own ``"all-linear"``: every linear layer
    but the output layer)."""
    names = list(lora.target_modules)
    return ALL_LINEAR if names == [ALL_LINEAR] else names


def merge_lora(model: Any) -> Any:
    """Fold LoRA adapters back into the weights (no-op for a plain model)."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def response_loss(model: Any, batch: TokenBatch) -> Any:
    """Cross-entropy on the response tokens (the output layer sees only those), summed and
    divided by the global batch's labelled tokens: the token mean for a whole batch."""
    values = sequence_logprobs(model, batch.items, batch.pad_id).values
    return -values.sum() * (batch.weight / max(batch.labelled_tokens, 1))


def finetune(model: Any, tokenizer: Any, examples: Sequence[Example],
             config: TrainConfig) -> tuple[Any, list[float]]:
    """Fine-tune ``model`` on ``examples``; returns the (merged) model and the step losses.

    Seeded by ``config.seed``: the batch order, LoRA's initial weights and the dropout masks
    (:mod:`mbdefense.training.seeding`), so one seed and config give one set of weights."""
    if not examples:
        raise ValueError("finetune: no training examples")
    encoded = encode_examples(tokenizer, examples, config.max_length)
    model = apply_lora(model, config)
    steps_per_epoch = math.ceil(len(encoded) / config.batch_size)

    def batches(epoch: int):
        return iterate_batches(encoded, config.batch_size, config.seed * 1000 + epoch,
                               tokenizer.pad_token_id)

    model, losses = run_steps(model, batches, steps_per_epoch, response_loss, config)
    return merge_lora(model), losses
