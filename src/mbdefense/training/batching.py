"""Batches padded to their longest member, grouped by length so little compute goes to padding."""

from __future__ import annotations

import random
from typing import Any, Iterator, Sequence

from mbdefense.data.formatting import IGNORE_INDEX, Encoded


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int,
                           group_factor: int = 1) -> list[list[int]]:
    """Index batches: shuffle, sort within mega-batches of ``group_factor`` batches by length,
    cut, then shuffle the order of the batches. Every index appears exactly once."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * group_factor
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start:start + mega], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def pad_id_of(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id, else 0."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return value
    return 0


def pad_sequences(sequences: Sequence[Sequence[int]], pad_id: int, *,
                  left: bool = False) -> tuple[Any, Any]:
    """Token-id lists as one padded ``[B, longest]`` batch: ``(input_ids, attention_mask)``.

    ``left`` pads on the left (generation and last-token reads: the last column is every
    row's last real token); otherwise on the right.
    """
    import torch

    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def collate(items: Sequence[Encoded], pad_id: int) -> dict[str, Any]:
    """Right-pad a list of encoded sequences to the longest one."""
    import torch

    width = max(len(item.input_ids) for item in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def iterate_batches(encoded: Sequence[Encoded], batch_size: int, seed: int,
                    pad_id: int) -> Iterator[dict[str, Any]]:
    for index in length_grouped_batches([len(e.input_ids) for e in encoded], batch_size, seed):
        yield collate([encoded[i] for i in index], pad_id)
