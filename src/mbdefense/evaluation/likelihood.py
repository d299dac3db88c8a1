"""Clean reference NLL: how likely the model finds the reference answers of clean prompts.

A smoother measure of clean quality than generation-based scores: it moves when a defense
damages instruction following even slightly, and does not depend on decoding.
"""

from __future__ import annotations

from typing import Any, Sequence

from mbdefense.data.example import Example
from mbdefense.data.formatting import encode_examples
from mbdefense.training.batching import collate
from mbdefense.training.logprobs import labelled_logprobs


def reference_nll(model: Any, tokenizer: Any, examples: Sequence[Example], *,
                  batch_size: int = 16, max_length: int = 512) -> float:
    """Token-mean negative log-likelihood of the examples' reference outputs (nats/token)."""
    import torch

    encoded = [e for e in encode_examples(tokenizer, [x for x in examples if x.output.strip()],
                                          max_length) if len(e.input_ids) > e.prompt_length]
    if not encoded:
        raise ValueError("reference_nll: no examples with a reference answer")
    encoded.sort(key=lambda e: len(e.input_ids))
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = {k: v.to(device) for k, v in
                     collate(encoded[start:start + batch_size], tokenizer.pad_token_id).items()}
            lp = labelled_logprobs(model, batch["input_ids"], batch["attention_mask"],
                                   batch["labels"])
            total -= float(lp.values.sum())
            count += int(lp.values.numel())
    model.train(was_training)
    return total / max(count, 1)


__all__ = ["reference_nll"]
