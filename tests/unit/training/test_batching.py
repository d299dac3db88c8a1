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
