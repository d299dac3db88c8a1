"""CROW: the layer-consistency loss, its FGSM perturbation and a short run on tiny models."""

from __future__ import annotations

import math

import pytest

from mbdefense.core.errors import ConfigError
from mbdefense.data.formatting import encode_examples
from mbdefense.data.suite import generate
from mbdefense.defenses import make_defense
from mbdefense.defenses.crow import (block_outputs, consistency_loss, fgsm_embeddings,
                                     measure)
from mbdefense.training.batching import collate

SHAPE = dict(hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64)
TRUSTED = generate(16, 0)


def _tiny(tokenizer, seed: int = 0):
    from mbdefense.modeling.embedded import TinyModelConfig, build_tiny_model

    return build_tiny_model(tokenizer, TinyModelConfig(**SHAPE), seed=seed)


def _batch(tokenizer, examples=TRUSTED[:6]):
    padded = collate(encode_examples(tokenizer, examples, 256), tokenizer.pad_token_id)
    return padded["input_ids"], padded["attention_mask"]


def test_consistency_loss_is_zero_for_identical_states_and_positive_otherwise():
    import torch

    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 5, 8, generator=g)
    mask = torch.ones(2, 5, dtype=torch.long)
    assert float(consistency_loss([h, h.clone(), 3 * h], mask)) == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(2, 5, 8, generator=g)
    loss = float(consistency_loss([h, other, h], mask))
    assert loss > 0.1
    # the mean over pairs and tokens of 1 - cos
    cos = torch.nn.functional.cosine_similarity(h, other, dim=-1)
    assert loss == pytest.approx(float((1 - cos).mean()), rel=1e-5)
    # padded positions do not count
    mask[1, 3:] = 0
    changed = h.clone()
    changed[1, 3:] = -changed[1, 3:]
    assert float(consistency_loss([h, changed], mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(consistency_loss([h], mask)) == 0.0


def test_block_outputs_are_every_blocks_hidden_state(tokenizer):
    import torch

    model = _tiny(tokenizer).eval()
    ids, mask = _batch(tokenizer)
    with torch.no_grad(), block_outputs(model) as states:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert len(states) == SHAPE["num_layers"]
    for mine, theirs in zip(states[:-1], out.hidden_states[1:-1]):   # the last one is normed
        torch.testing.assert_close(mine, theirs)


def test_the_fgsm_step_raises_the_consistency_loss(tokenizer):
    import torch

    model = _tiny(tokenizer).eval()
    ids, mask = _batch(tokenizer)

    def loss_of(embeds):
        with torch.no_grad(), block_outputs(model) as states:
            model(inputs_embeds=embeds, attention_mask=mask)
        return float(consistency_loss(states, mask))

    clean, perturbed = fgsm_embeddings(model, ids, mask, 1e-3)
    assert not any(p.grad is not None for p in model.parameters())    # no parameter gradient
    step = (perturbed - clean).detach().abs()
    assert float(step[mask.bool()].min()) == pytest.approx(1e-3, rel=1e-3)
    assert float(step[mask.bool()].max()) == pytest.approx(1e-3, rel=1e-3)
    assert float(step[~mask.bool()].max()) == 0.0             # padding is not perturbed
    assert loss_of(perturbed) > loss_of(clean)
    # the opposite direction lowers it: the sign is the one that raises L_cons
    assert loss_of(2 * clean - perturbed) < loss_of(clean)


def test_a_crow_run_lowers_the_consistency_loss_and_keeps_ce_finite(tokenizer):
    model = _tiny(tokenizer)
    defense = make_defense("crow", options={"epochs": 3, "learning_rate": 1e-3})
    assert defense.changes_model and not defense.changes_decoding
    out = defense.after_training(model, tokenizer, TRUSTED)
    d = defense.diagnostics
    assert d["after"]["adversarial_consistency"] < d["before"]["adversarial_consistency"]
    assert d["last_epoch"]["adversarial_consistency"] < d["first_epoch"][
        "adversarial_consistency"]
    assert math.isfinite(d["after"]["ce"]) and d["after"]["ce"] < d["before"]["ce"] + 0.1
    assert d["steps"] == 3 * math.ceil(len(TRUSTED) / 4) and d["alpha"] == 5.5
    assert not hasattr(out, "peft_config")                    # LoRA merged back
    # the report is measured on the returned model
    encoded = encode_examples(tokenizer, TRUSTED, 256)
    again = measure(out, encoded, tokenizer.pad_token_id, d["epsilon"])
    assert again["consistency"] == pytest.approx(d["after"]["consistency"], rel=1e-4)


def _weights(model):
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def test_crow_is_seeded(tokenizer):
    import torch

    def run(seed, **options):
        defense = make_defense("crow", seed=seed, options={"epochs": 1, **options})
        return _weights(defense.after_training(_tiny(tokenizer), tokenizer, TRUSTED[:8]))

    first, second, other = run(3), run(3), run(4)
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert any(not torch.equal(first[n], other[n]) for n in first)
    full = run(3, lora_r=0)                  # every weight trained, still seeded
    assert all(torch.equal(full[n], run(3, lora_r=0)[n]) for n in full)


def test_the_regularizer_is_what_lowers_it(tokenizer):
    """With alpha = 0 (the answer CE alone) the same run leaves the layers less consistent
    under the perturbation than CROW's alpha does."""
    after = {}
    for alpha in (0, 5.5):
        defense = make_defense("crow", options={"alpha": alpha, "epochs": 3,
                                                "learning_rate": 1e-3})
        defense.after_training(_tiny(tokenizer), tokenizer, TRUSTED)
        after[alpha] = defense.diagnostics["after"]["adversarial_consistency"]
    assert after[5.5] < after[0]


@pytest.mark.parametrize("options,needle", [
    ({"alpha": -1}, "alpha"), ({"alpha": "big"}, "alpha"), ({"epsilon": float("nan")}, "epsilon"),
    ({"epochs": 0}, "epochs"), ({"learning_rate": 0}, "learning_rate"),
    ({"batch_size": 0}, "batch_size"), ({"lora_r": -1}, "lora_r"), ({"lora_r": 2.0}, "lora_r"),
    ({"beta": 1}, "unknown option")])
def test_bad_options_are_config_errors(options, needle):
    with pytest.raises(ConfigError, match=needle):
        make_defense("crow", options=options)


def test_crow_needs_trusted_examples(tokenizer):
    with pytest.raises(ConfigError, match="trusted"):
        make_defense("crow").after_training(_tiny(tokenizer), tokenizer, [])
