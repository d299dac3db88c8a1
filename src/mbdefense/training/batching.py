"""Batches padded to their longest member, grouped by length so little compute goes to padding."""

from __future__ import annotations

import random
from dataclasses import dataclass
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


def collate(items: Sequence[Encoded], pad_id: int, width: int | None = None) -> dict[str, Any]:
    """Right-pad a list of encoded sequences to ``width`` (default: the longest one)."""
    import torch

    width = width or max(len(item.input_ids) for item in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# Packed rows hold up to this many tokens: longer rows waste attention compute on masked pairs
# (quadratic in the row), shorter ones leave more padding.
PACK_TOKENS = 256


def pack_rows(lengths: Sequence[int], width: int) -> list[list[int]]:
    """First-fit decreasing: indices of the sequences in each row, no row longer than
    ``width`` (at least the longest sequence)."""
    width = max([width, *lengths])
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True):
        row = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if row is None:
            rows.append([])
            room.append(width)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    return rows


def collate_packed(items: Sequence[Encoded], pad_id: int) -> dict[str, Any]:
    """Sequences packed into rows of up to :data:`PACK_TOKENS` tokens (or the longest
    sequence), each with its own positions from 0, so a model attends only within a sequence (transformers reads the boundaries from ``position_ids`` when there is no
    ``attention_mask``). ``sequence_ids[r, t]`` is the index in ``items`` of the token's
    sequence (-1 on padding, which gets positions of its own and no labels)."""
    import torch

    lengths = [len(item.input_ids) for item in items]
    rows = pack_rows(lengths, min(sum(lengths), PACK_TOKENS))
    width = max(sum(lengths[i] for i in row) for row in rows)
    shape = (len(rows), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    sequence_ids = torch.full(shape, -1, dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            span = slice(start, start + lengths[i])
            ids[r, span] = torch.tensor(items[i].input_ids)
            labels[r, span] = torch.tensor(items[i].labels)
            positions[r, span] = torch.arange(lengths[i])
            sequence_ids[r, span] = i
            start += lengths[i]
        positions[r, start:] = torch.arange(width - start)
    return {"input_ids": ids, "labels": labels, "position_ids": positions,
            "sequence_ids": sequence_ids}


def labelled_count(item: Encoded) -> int:
    """Tokens of ``item`` that carry a loss (a label, predicted from the token before)."""
    return sum(1 for label in item.labels[1:] if label != IGNORE_INDEX)


@dataclass
class TokenBatch:
    """One global micro-batch of encoded sequences.

    ``labelled_tokens`` counts the loss-carrying tokens of the whole global batch, so a
    process's shard is normalised by it and the shards' losses add up to the batch's
    token-mean loss. ``weight`` is 0 for the stand-in item of a process left without any.
    """

    items: list[Encoded]
    labelled_tokens: int
    pad_id: int
    weight: float = 1.0

    def shard(self, rank: int, world: int) -> "TokenBatch":
        part = self.items[rank::world]
        if part:
            return TokenBatch(part, self.labelled_tokens, self.pad_id)
        return TokenBatch(self.items[:1], self.labelled_tokens, self.pad_id, weight=0.0)


def iterate_batches(encoded: Sequence[Encoded], batch_size: int, seed: int, pad_id: int,
                    group_factor: int = 1) -> Iterator[TokenBatch]:
    """Batches of ``encoded`` in a seeded random order (``group_factor`` > 1 groups them by
    length, see :func:`length_grouped_batches`; packing makes that unnecessary)."""
    lengths = [len(e.input_ids) for e in encoded]
    for index in length_grouped_batches(lengths, batch_size, seed, group_factor):
        items = [encoded[i] for i in index]
        yield TokenBatch(items, sum(labelled_count(e) for e in items), pad_id)
