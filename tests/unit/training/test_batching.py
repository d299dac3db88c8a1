from mbdefense.data.formatting import IGNORE_INDEX, Encoded
from mbdefense.training.batching import collate, length_grouped_batches


def test_every_index_once_and_deterministic():
    lengths = [((i * 37) % 50) + 1 for i in range(203)]
    batches = length_grouped_batches(lengths, 8, seed=3)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(203))
    assert batches == length_grouped_batches(lengths, 8, seed=3)
    assert batches != length_grouped_batches(lengths, 8, seed=4)


def test_grouping_reduces_padding():
    lengths = [((i * 37) % 120) + 5 for i in range(512)]
    grouped = length_grouped_batches(lengths, 16, seed=0, group_factor=16)
    random_batches = length_grouped_batches(lengths, 16, seed=0, group_factor=1)

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert padding(grouped) < 0.5 * padding(random_batches)


def test_collate_pads_to_longest_only():
    items = [Encoded([5, 6, 7], [IGNORE_INDEX, 6, 7], 1), Encoded([5, 6], [IGNORE_INDEX, 6], 1)]
    batch = collate(items, pad_id=0)
    assert batch["input_ids"].shape == (2, 3)
    assert batch["input_ids"][1].tolist() == [5, 6, 0]
    assert batch["labels"][1].tolist() == [IGNORE_INDEX, 6, IGNORE_INDEX]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_pack_rows_fits_every_sequence_once_within_the_width():
    import random

    from mbdefense.training.batching import pack_rows

    lengths = [random.Random(i).randint(3, 40) for i in range(50)]
    rows = pack_rows(lengths, max(lengths))
    assert sorted(i for row in rows for i in row) == list(range(50))
    assert all(sum(lengths[i] for i in row) <= max(lengths) for row in rows)
    assert len(rows) <= -(-sum(lengths) // max(lengths)) + 3   # near-full rows


def test_collate_packed_restarts_positions_per_sequence(monkeypatch):
    from mbdefense.data.formatting import IGNORE_INDEX, Encoded
    from mbdefense.training import batching

    items = [Encoded([5] * 8, [IGNORE_INDEX] * 4 + [5] * 4, 4),
             Encoded([6] * 3, [IGNORE_INDEX] * 2 + [6], 2),
             Encoded([7] * 4, [IGNORE_INDEX] * 2 + [7] * 2, 2)]
    packed = batching.collate_packed(items, pad_id=0)
    assert packed["input_ids"].shape == (1, 15)             # all fit in one row
    assert packed["sequence_ids"][0].tolist() == [0] * 8 + [2] * 4 + [1] * 3
    monkeypatch.setattr(batching, "PACK_TOKENS", 8)         # rows of 8: [8] and [4, 3] + pad
    packed = batching.collate_packed(items, pad_id=0)
    assert packed["input_ids"].shape == (2, 8)
    assert packed["sequence_ids"][1].tolist() == [2, 2, 2, 2, 1, 1, 1, -1]
    assert packed["position_ids"][1].tolist() == [0, 1, 2, 3, 0, 1, 2, 0]
    assert packed["labels"][1, -1].item() == IGNORE_INDEX
