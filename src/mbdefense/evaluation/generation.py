"""Batched greedy generation: prompts sorted by length, left padding, answers in input order."""

from __future__ import annotations

from typing import Any, Sequence

from mbdefense.data.example import Example
from mbdefense.data.formatting import render_prompt
from mbdefense.training.batching import pad_id_of, pad_sequences


def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[str], *,
                     max_new_tokens: int = 32, batch_size: int = 64,
                     progress: bool = False, description: str = "generate") -> list[str]:
    """Greedy answers to already-formatted prompts, returned in the order given."""
    import torch
    from tqdm.auto import tqdm

    if not prompts:
        return []
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]), reverse=True)
    device = next(model.parameters()).device
    pad_id = pad_id_of(tokenizer)
    answers: list[str] = [""] * len(prompts)
    model.eval()
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=description, disable=not progress, leave=False):
        index = order[start:start + batch_size]
        ids, mask = pad_sequences([encoded[i] for i in index], pad_id, left=True)
        width = ids.shape[1]
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
        for row, i in enumerate(index):
            answers[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
    return answers


def answer_examples(model: Any, tokenizer: Any, examples: Sequence[Example], **kwargs: Any) -> list[str]:
    """Greedy answers to examples, prompted with the tokenizer's chat template."""
    return generate_answers(model, tokenizer, [render_prompt(tokenizer, e) for e in examples],
                            **kwargs)
