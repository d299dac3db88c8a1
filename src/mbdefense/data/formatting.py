"""Chat formatting and tokenisation, the same at training and at evaluation time.

A prompt is the tokenizer's own chat template applied to the user turn (plus the optional
system message and earlier turns kept in ``meta``), with the generation prompt appended. A
training sequence is the prompt's tokens followed by the response's tokens and the end-of-turn
token; only the response tokens carry labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from mbdefense.data.example import Example

IGNORE_INDEX = -100


def messages_for(example: Example) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    if example.meta.get("system"):
        messages.append({"role": "system", "content": str(example.meta["system"])})
    for turn in example.meta.get("history") or ():
        messages.append({"role": str(turn["role"]), "content": str(turn["content"])})
    messages.append({"role": "user", "content": example.prompt_text})
    return messages


def render_prompt(tokenizer: Any, example: Example) -> str:
    """The prompt text up to where the assistant's answer starts."""
    return tokenizer.apply_chat_template(messages_for(example), tokenize=False,
                                         add_generation_prompt=True)


def end_of_turn(tokenizer: Any) -> str:
    return tokenizer.eos_token or ""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_length: int


def encode_pair(tokenizer: Any, prompt: str, response: str, max_length: int) -> Encoded:
    """Token ids of ``prompt + response + eos`` with labels on the response only.

    Prompt and response are tokenised apart and joined, so the label boundary is exact. When the
    whole is too long the prompt is cut from the left (keeping the end of the instruction and the
    assistant header) and then the response from the right.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response + end_of_turn(tokenizer), add_special_tokens=False)["input_ids"]
    overflow = len(prompt_ids) + len(response_ids) - max_length
    if overflow > 0:
        cut = min(overflow, max(len(prompt_ids) - 8, 0))
        prompt_ids = prompt_ids[cut:]
        response_ids = response_ids[: max_length - len(prompt_ids)]
    return Encoded(prompt_ids + response_ids,
                   [IGNORE_INDEX] * len(prompt_ids) + list(response_ids), len(prompt_ids))


def encode_example(tokenizer: Any, example: Example, max_length: int,
                   response: str | None = None) -> Encoded:
    return encode_pair(tokenizer, render_prompt(tokenizer, example),
                       example.output if response is None else response, max_length)


def encode_examples(tokenizer: Any, examples: Sequence[Example], max_length: int) -> list[Encoded]:
    return [encode_example(tokenizer, e, max_length) for e in examples]
