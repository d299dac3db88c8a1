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
