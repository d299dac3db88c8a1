"""Wanda pruning: the share zeroed per row, which weights go, what stays untouched."""

from __future__ import annotations

import pytest

from mbdefense.core.errors import ConfigError
from mbdefense.data.suite import generate
from mbdefense.defenses import DEFENSES, make_defense
from mbdefense.defenses.pruning import (block_linears, calibration_batches, decoder_layers,
                                        input_sq_norms, prune_rows)

SHAPE = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
TRUSTED = generate(12, 0)


def _tiny(tokenizer, seed: int = 0):
    from mbdefense.modeling.embedded import TinyModelConfig, build_tiny_model

    return build_tiny_model(tokenizer, TinyModelConfig(**SHAPE), seed=seed)


def test_prune_rows_zeroes_the_lowest_weight_times_input_norm():
    import torch

    weight = torch.tensor([[1.0, -2.0, 3.0, 0.5],
                           [4.0, 1.0, -1.0, 2.0]])
    norms = torch.tensor([1.0, 10.0, 0.1, 3.0])        # ||X_j||
    # scores |W| * ||X||: row 0 [1, 20, 0.3, 1.5], row 1 [4, 10, 0.1, 6]
    k = prune_rows(weight, norms ** 2, 0.5)
    assert k == 2
    assert weight.tolist() == [[0.0, -2.0, 0.0, 0.5],     # scores 1 and 0.3 go
                               [0.0, 1.0, 0.0, 2.0]]      # scores 4 and 0.1 go
    # (by magnitude alone row 1 would have lost its 1 and -1 and kept the 4)
    assert prune_rows(torch.ones(3, 4), torch.ones(4), 0.0) == 0


def test_input_norms_are_the_unpadded_calibration_activations(tokenizer):
    """The statistic Wanda scores with: each Linear input feature's sum of squares over the
    real tokens, measured here against inputs captured independently."""
    import torch

    model = _tiny(tokenizer).eval()
    batches = list(calibration_batches(model, tokenizer, TRUSTED, 5, 256))
    assert any(bool((mask == 0).any()) for _, mask in batches)     # some rows are padded
    block = decoder_layers(model)[1]
    target = block.mlp.down_proj
    seen = []
    handle = target.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0]))
    with torch.no_grad():
        for ids, mask in batches:
            model(input_ids=ids, attention_mask=mask)
    handle.remove()
    expected = sum((x[mask.bool()] ** 2).sum(0) for x, (_, mask) in zip(seen, batches))
    sums, tokens = input_sq_norms(model, block, batches)
    assert tokens == sum(int(mask.sum()) for _, mask in batches)
    assert set(sums) == set(block_linears(block))
    torch.testing.assert_close(sums["mlp.down_proj"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sparsity", [0.5, 0.25])
def test_pruning_zeroes_the_share_of_every_row_and_leaves_the_rest(tokenizer, sparsity):
    import torch

    model = _tiny(tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    defense = make_defense("pruning", options={"sparsity": sparsity})
    out = defense.after_training(model, tokenizer, TRUSTED)
    assert out is model
    pruned = set()
    for i, block in enumerate(decoder_layers(model)):
        for name, linear in block_linears(block).items():
            w = linear.weight
            zeros = (w == 0).sum(dim=1)
            assert zeros.tolist() == [int(w.shape[1] * sparsity)] * w.shape[0], name
            kept = w != 0
            assert torch.equal(w[kept], before[f"model.layers.{i}.{name}.weight"][kept])
            pruned.add(f"model.layers.{i}.{name}.weight")
    assert len(pruned) == 2 * 7
    for name, param in model.named_parameters():     # embeddings, head, norms untouched
        if name not in pruned:
            assert torch.equal(param, before[name]), name
    d = defense.diagnostics
    assert d["pruned_layers"] == 14 and d["calibration_examples"] == len(TRUSTED)
    assert d["zeroed_share"] == pytest.approx(sparsity)


def test_the_first_block_keeps_its_highest_scoring_weights(tokenizer):
    """In the first block (nothing pruned before it) every zeroed weight scores no higher
    than any kept weight of its row."""
    import torch

    model = _tiny(tokenizer)
    batches = list(calibration_batches(model, tokenizer, TRUSTED, 8, 256))
    block = decoder_layers(model)[0]
    sums, _ = input_sq_norms(model, block, batches)
    scores = {n: m.weight.detach().abs() * sums[n].sqrt() for n, m in block_linears(block).items()}
    make_defense("wanda", options={"sparsity": 0.5}).after_training(model, tokenizer, TRUSTED)
    for name, linear in block_linears(block).items():
        zero = linear.weight == 0
        s = scores[name]
        low = torch.where(zero, s, torch.full_like(s, -1.0)).max(dim=1).values
        high = torch.where(zero, torch.full_like(s, float("inf")), s).min(dim=1).values
        assert bool((low <= high).all()), name


def test_calibration_depends_on_the_data(tokenizer):
    one, two = _tiny(tokenizer), _tiny(tokenizer)
    make_defense("pruning").after_training(one, tokenizer, TRUSTED)
    make_defense("pruning").after_training(two, tokenizer, generate(12, 5)[6:])
    masks = [[(p == 0) for p in m.parameters()] for m in (one, two)]
    assert any(not bool((a == b).all()) for a, b in zip(*masks))


@pytest.mark.parametrize("options,needle", [
    ({"sparsity": 1.0}, "sparsity"), ({"sparsity": -0.1}, "sparsity"),
    ({"sparsity": "half"}, "sparsity"), ({"sparsity": float("nan")}, "sparsity"),
    ({"batch_size": 0}, "batch_size"), ({"ratio": 0.5}, "unknown option")])
def test_bad_options_are_config_errors(options, needle):
    with pytest.raises(ConfigError, match=needle):
        make_defense("pruning", options=options)


def test_registered_with_its_alias(tokenizer):
    assert DEFENSES.canonical("wanda") == "pruning"
    defense = make_defense("wanda")
    assert defense.changes_model and not defense.changes_inputs
    with pytest.raises(ConfigError, match="trusted"):
        defense.after_training(_tiny(tokenizer), tokenizer, [])
