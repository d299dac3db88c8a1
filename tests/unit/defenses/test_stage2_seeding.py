"""Stage 2 is reproducible with LoRA and dropout: its training config takes the defense's
seed."""

import copy

import pytest
import torch

from mbdefense.core.errors import ConfigError
from mbdefense.data.suite import generate
from mbdefense.defenses.defensive_triggers import make_defensive_pairs
from mbdefense.defenses.neutralization import NeutralizationConfig, neutralize
from mbdefense.training.config import LoraSettings, TrainConfig


def test_neutralize_with_lora_and_dropout_is_seeded(tiny_model, tokenizer):
    trusted = generate(20, 0)
    pairs = make_defensive_pairs(["mn"])
    config = NeutralizationConfig(train=TrainConfig(
        epochs=2, learning_rate=1e-2, batch_size=8, progress=False,
        lora=LoraSettings(r=4, alpha=8, dropout=0.3)))

    def run(seed):
        torch.rand(3)                                   # the caller's RNG moves on
        model, _ = neutralize(copy.deepcopy(tiny_model), tokenizer, trusted, pairs, config,
                              seed=seed)
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    one, two, other = run(0), run(0), run(1)
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert any(not torch.equal(one[k], other[k]) for k in one)


def test_every_eval_loss_is_measured_without_dropout(tiny_model, tokenizer):
    """The epoch kept is chosen on eval losses measured alike: in eval mode, every epoch."""
    trusted = generate(20, 0)
    config = NeutralizationConfig(train=TrainConfig(
        epochs=3, learning_rate=1e-2, batch_size=8, progress=False,
        lora=LoraSettings(r=4, alpha=8, dropout=0.3)))
    modes = []

    def record(module, args, kwargs):
        if not torch.is_grad_enabled():              # the eval passes run under no_grad
            modes.append(module.training)

    model = copy.deepcopy(tiny_model)
    model.train()
    # on a layer inside: LoRA wraps the model and calls its forward directly
    model.model.layers[0].register_forward_pre_hook(record, with_kwargs=True)
    _, info = neutralize(model, tokenizer, trusted, make_defensive_pairs(["mn"]), config, seed=0)
    assert len(info["history"]) == 4 and modes and not any(modes)


def test_the_repair_phase_starts_from_the_break_and_trains_the_triggered_answer(
        tiny_model, tokenizer):
    """``repair_epochs``: after the break, more epochs with CE(x_d, y) weighted in; its own
    history (starting from the break's kept weights) and best epoch; off by default."""
    trusted = generate(20, 0)
    pairs = make_defensive_pairs(["mn"])
    train = TrainConfig(epochs=1, learning_rate=1e-2, batch_size=8, progress=False)
    plain = NeutralizationConfig(train=train)
    repaired = NeutralizationConfig(train=train, repair_epochs=2, repair_weight=1.0)
    m_plain, info_plain = neutralize(copy.deepcopy(tiny_model), tokenizer, trusted, pairs,
                                     plain, seed=0)
    m_rep, info_rep = neutralize(copy.deepcopy(tiny_model), tokenizer, trusted, pairs,
                                 repaired, seed=0)
    assert "repair" not in info_plain
    assert info_rep["history"] == info_plain["history"]          # the same break first
    repair = info_rep["repair"]
    assert len(repair["history"]) == 3 and 0 <= repair["best_epoch"] <= 2
    # the repair's epoch 0 is the break's kept model; its loss weighs the triggered CE in
    start, kept = repair["history"][0], info_plain["history"][info_plain["best_epoch"]]
    assert abs(start["ce"] - kept["ce"]) < 1e-4
    assert abs(start["loss"] - (kept["loss"] + start["triggered_ce"])) < 1e-4
    if repair["best_epoch"] > 0:
        assert any(not torch.equal(a, b) for a, b in zip(m_plain.parameters(),
                                                          m_rep.parameters()))


def _drift(start, model, tokenizer, examples):
    """Token-mean KL(start || model) on the examples' answers."""
    from mbdefense.data.formatting import encode_example
    from mbdefense.training.logprobs import labelled_log_distributions

    items = [encode_example(tokenizer, e, 128) for e in examples]
    with torch.no_grad():
        a = labelled_log_distributions(start, items, tokenizer.pad_token_id)
        b = labelled_log_distributions(model, items, tokenizer.pad_token_id)
    return float((a.exp() * (a - b)).sum(-1).mean())


def test_the_anchor_holds_the_clean_behaviour_near_the_starting_model(tiny_model, tokenizer):
    """``anchor``: with LoRA or all weights, stage 2 moves the model's distribution on clean
    prompts it never trained on less than without the term, while R is still raised."""
    from mbdefense.training.config import LoraSettings

    trusted, held_out = generate(24, 0), generate(12, 5)
    pairs = make_defensive_pairs(["mn"])
    for lora in (None, LoraSettings(r=4, alpha=8, dropout=0.0)):
        train = TrainConfig(epochs=3, learning_rate=3e-2 if lora else 1e-2, batch_size=8,
                            progress=False, lora=lora)
        drift, reg = {}, {}
        for anchor in (0.0, 16.0):
            model, info = neutralize(copy.deepcopy(tiny_model), tokenizer, trusted, pairs,
                                     NeutralizationConfig(train=train, anchor=anchor), seed=0)
            drift[anchor] = _drift(tiny_model, model, tokenizer, held_out)
            reg[anchor] = info["history"][info["best_epoch"]]["reg"]
            assert ("anchor_kl" in info["history"][0]) == bool(anchor)
        assert drift[16.0] < 0.6 * drift[0.0], (lora, drift)
        assert reg[16.0] > info["history"][0]["reg"], (lora, reg)


def test_baselines_never_get_the_anchor(tiny_model, tokenizer):
    """Clean-FFT (no defensive pairs) trains the same with or without ``anchor`` set."""
    trusted = generate(20, 0)
    train = TrainConfig(epochs=1, learning_rate=1e-2, batch_size=8, progress=False)
    plain, _ = neutralize(copy.deepcopy(tiny_model), tokenizer, trusted, [],
                          NeutralizationConfig(train=train), seed=0)
    held, info = neutralize(copy.deepcopy(tiny_model), tokenizer, trusted, [],
                            NeutralizationConfig(train=train, anchor=4.0), seed=0)
    assert "anchor_kl" not in info["history"][0]
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), held.parameters()))


def test_the_anchor_under_a_sharded_engine_is_a_clear_error(tiny_model, tokenizer, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    config = NeutralizationConfig(anchor=1.0, train=TrainConfig(epochs=1, progress=False))
    with pytest.raises(ConfigError, match="stage2.anchor"):
        neutralize(copy.deepcopy(tiny_model), tokenizer, generate(10, 0),
                   make_defensive_pairs(["mn"]), config, seed=0)
    from mbdefense.training.runtime import launched_with_sharded_weights

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    assert not launched_with_sharded_weights()
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert launched_with_sharded_weights()
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    assert not launched_with_sharded_weights()


def test_stacked_copies_reach_the_r_term(tiny_model, tokenizer, monkeypatch):
    """``triggers_per_copy=2``: every triggered prompt stage 2 trains and evaluates on carries
    two distinct defensive triggers, and the defensive answer is one of theirs."""
    from mbdefense.defenses import neutralization

    seen = []
    real = neutralization.encode_example

    def spy(tok, example, max_len, response=None):
        seen.append((example.instruction, response))
        return real(tok, example, max_len, response=response)

    monkeypatch.setattr(neutralization, "encode_example", spy)
    pairs = make_defensive_pairs(["mn", "bb", "zx"])
    config = NeutralizationConfig(triggers_per_copy=2, train=TrainConfig(
        epochs=1, learning_rate=1e-3, batch_size=8, progress=False))
    neutralize(copy.deepcopy(tiny_model), tokenizer, generate(10, 0), pairs, config, seed=0)
    defensive = [(text, answer) for text, answer in seen if answer is not None]
    assert len(defensive) == 10                     # one triggered copy per trusted example
    for text, answer in defensive:
        present = [p for p in pairs if p.trigger.present(text)]
        assert len(present) == 2, text
        assert answer in {p.behavior.text for p in present}


def test_neutralize_checks_triggers_per_copy_before_training(tiny_model, tokenizer, monkeypatch):
    """A direct caller with more triggers per copy than pairs gets the tool's clear error,
    not a bare ValueError from the sampler, and nothing is trained."""
    from mbdefense.defenses import neutralization

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the check")

    monkeypatch.setattr(neutralization, "_train_phase", no_training)
    config = NeutralizationConfig(triggers_per_copy=3)
    with pytest.raises(ConfigError, match="3 is more than the 2 defensive triggers"):
        neutralize(tiny_model, tokenizer, generate(10, 0), make_defensive_pairs(["mn", "bb"]),
                   config, seed=0)


def test_stage2_keeps_the_lowest_eval_loss_epoch_or_the_last(tiny_model, tokenizer):
    """``keep="best"`` (the paper's rule) returns the weights of the epoch with the lowest eval
    loss; ``keep="last"`` the final ones. The training is the same either way."""
    trusted, pairs = generate(10, 0), make_defensive_pairs(["mn"])

    def run(lr, keep):
        train = TrainConfig(epochs=4, learning_rate=lr, batch_size=8, progress=False)
        return neutralize(copy.deepcopy(tiny_model), tokenizer, trusted, pairs,
                          NeutralizationConfig(train=train, keep=keep), seed=0)

    # at lr 1 the tiny model diverges after its first epoch: the best epoch is not the last
    best_model, best = run(1.0, "best")
    last_model, last = run(1.0, "last")
    assert best["history"] == last["history"]
    assert (best["best_epoch"], best["kept_epoch"], best["kept"]) == (1, 1, "best")
    assert (last["best_epoch"], last["kept_epoch"], last["kept"]) == (1, 4, "last")
    assert any(not torch.equal(a, b) for a, b in zip(best_model.parameters(),
                                                      last_model.parameters()))
    # where the eval loss falls every epoch, both keep the same (last) weights
    calm_best, info = run(3e-2, "best")
    calm_last, _ = run(3e-2, "last")
    assert info["best_epoch"] == 4
    assert all(torch.equal(a, b) for a, b in zip(calm_best.parameters(), calm_last.parameters()))
    with pytest.raises(ConfigError, match="stage2.keep: must be 'best'"):
        NeutralizationConfig(keep="first")
