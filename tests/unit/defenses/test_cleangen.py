"""CleanGen: reference-checked greedy decoding on tiny models."""

from __future__ import annotations

import pytest

from mbdefense.core.errors import ConfigError
from mbdefense.data.formatting import render_prompt
from mbdefense.data.suite import generate
from mbdefense.defenses import make_defense
from mbdefense.defenses.cleangen import cleangen_token_ids
from mbdefense.evaluation.generation import answer_examples, generate_token_ids

SHAPE = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
EXAMPLES = generate(10, 0)


def _tiny(tokenizer, seed: int = 0):
    from mbdefense.modeling.embedded import TinyModelConfig, build_tiny_model

    return build_tiny_model(tokenizer, TinyModelConfig(**SHAPE), seed=seed).eval()


def _prompts(tokenizer, examples=EXAMPLES):
    return [tokenizer(render_prompt(tokenizer, e), add_special_tokens=False)["input_ids"]
            for e in examples]


def biased(model, token: int, bias: float):
    """A suspect model: ``model`` with ``bias`` added to one token's logit everywhere (a
    stand-in for a backdoor that pushes that token)."""
    from types import SimpleNamespace

    import torch

    class Biased(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model
            self.config, self.dtype = model.config, model.dtype

        def forward(self, **kwargs):
            logits = self.inner(**kwargs).logits.clone()
            logits[..., token] += bias
            return SimpleNamespace(logits=logits)

    return Biased().eval()


def _greedy(model, prompts, n, stop):
    return generate_token_ids(model, prompts, max_new_tokens=n, batch_size=4, stop_ids=stop,
                              pad_id=0)


@pytest.mark.parametrize("k", [1, 4, 7])
def test_with_the_suspect_as_reference_nothing_is_replaced_and_output_is_greedy(tokenizer, k):
    """Whatever the horizon: no token is suspicious, and the answer is plain greedy decoding."""
    model = _tiny(tokenizer)
    prompts = _prompts(tokenizer)
    stop = frozenset({tokenizer.eos_token_id})
    out, replaced = cleangen_token_ids(model, model, prompts, alpha=20.0, k=k,
                                       max_new_tokens=15, stop_ids=stop, pad_id=0,
                                       batch_size=3)
    assert replaced == 0
    assert out == _greedy(model, prompts, 15, stop)
    assert all(len(o) == 15 or o[-1] in stop for o in out)


def test_decode_through_the_defense_equals_plain_answers(tokenizer):
    model = _tiny(tokenizer, seed=1)
    defense = make_defense("cleangen", options={"k": 3})
    assert defense.changes_decoding and not defense.changes_model
    answers = defense.decode(EXAMPLES, model=model, tokenizer=tokenizer, clean_model=model,
                             max_new_tokens=12, batch_size=4)
    assert answers == answer_examples(model, tokenizer, EXAMPLES, max_new_tokens=12)
    d = defense.diagnostics
    assert d["replaced_tokens"] == 0 and d["generated_tokens"] == 12 * len(EXAMPLES)


def test_a_pushed_token_is_replaced_by_the_references_choice(tokenizer):
    """The suspect model puts nearly all its mass on one token the reference finds unlikely:
    every time it is drafted it is replaced, so the answer is the reference's greedy answer,
    and each replacement is counted."""
    reference = _tiny(tokenizer)
    pushed = 300
    suspect = biased(reference, pushed, 30.0)
    prompts = _prompts(tokenizer)
    stop = frozenset({tokenizer.eos_token_id})
    assert all(set(o) == {pushed} for o in _greedy(suspect, prompts, 6, stop))
    for k in (1, 4):
        out, replaced = cleangen_token_ids(suspect, reference, prompts, alpha=20.0, k=k,
                                           max_new_tokens=6, stop_ids=stop, pad_id=0)
        expected = _greedy(reference, prompts, 6, stop)
        assert out == expected
        assert pushed not in {t for o in expected for t in o}
        assert replaced == sum(len(o) for o in out)


def test_the_threshold_is_the_probability_ratio(tokenizer):
    """A push of 100x on one token: the suspect's probability of it is at most 100 times the
    reference's, so alpha = 200 keeps the suspect's answer (the pushed token throughout) and
    alpha = 20 replaces it."""
    import math

    reference = _tiny(tokenizer)
    suspect = biased(reference, 300, math.log(100.0))
    prompts = _prompts(tokenizer)
    stop = frozenset({tokenizer.eos_token_id})
    greedy = _greedy(suspect, prompts, 8, stop)
    assert all(set(o) == {300} for o in greedy)
    out, replaced = cleangen_token_ids(suspect, reference, prompts, alpha=200.0, k=4,
                                       max_new_tokens=8, stop_ids=stop, pad_id=0)
    assert replaced == 0 and out == greedy
    out, replaced = cleangen_token_ids(suspect, reference, prompts, alpha=20.0, k=4,
                                       max_new_tokens=8, stop_ids=stop, pad_id=0)
    assert replaced == sum(len(o) for o in out) and out == _greedy(reference, prompts, 8, stop)


def test_diagnostics_count_replacements_per_call(tokenizer):
    reference = _tiny(tokenizer)
    defense = make_defense("cleangen")
    for _ in range(2):
        defense.decode(EXAMPLES[:4], model=biased(reference, 300, 30.0), tokenizer=tokenizer,
                       clean_model=reference, max_new_tokens=5)
    d = defense.diagnostics
    assert [c["replaced_tokens"] for c in d["calls"]] == [20, 20]
    assert d["replaced_tokens"] == 40 and d["generated_tokens"] == 40


def test_reference_base_needs_the_clean_model(tokenizer):
    with pytest.raises(ConfigError, match="reference 'base'"):
        make_defense("cleangen").decode(EXAMPLES[:1], model=_tiny(tokenizer),
                                        tokenizer=tokenizer)


@pytest.mark.parametrize("options,needle", [
    ({"alpha": 1.0}, "alpha"), ({"alpha": "big"}, "alpha"), ({"alpha": float("inf")}, "alpha"),
    ({"k": 0}, "'k'"), ({"k": 2.5}, "'k'"), ({"reference": ""}, "reference"),
    ({"horizon": 4}, "unknown option")])
def test_bad_options_are_config_errors(options, needle):
    with pytest.raises(ConfigError, match=needle):
        make_defense("cleangen", options=options)


# --------------------------------------------------------------------------- the KV cache


def _peaked(tokenizer, seed: int):
    """A tiny model with its weight matrices at 10x the usual initial scale: its next-token
    distributions are peaked and depend on the prompt, so two seeds agree on some tokens and
    not on others (at the usual scale both are nearly uniform and never disagree enough)."""
    import torch

    model = _tiny(tokenizer, seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10.0)
    return model


def recorded(model, calls: list):
    """``model`` behind a wrapper that forwards every keyword and records their names."""
    from types import SimpleNamespace

    import torch

    class Recorded(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model
            self.config, self.dtype = model.config, model.dtype

        def forward(self, **kwargs):
            calls.append(sorted(kwargs))
            return SimpleNamespace(logits=self.inner(**kwargs).logits)

    return Recorded().eval()


def _both_ways(suspect, reference, prompts, **kwargs):
    """CleanGen with and without the KV caches: ``(cached, uncached)``, each (outputs,
    replaced)."""
    return tuple(cleangen_token_ids(suspect, reference, prompts, pad_id=0, use_cache=use,
                                    **kwargs) for use in (True, False))


@pytest.mark.parametrize("k", [1, 3, 4])
def test_cached_decoding_equals_recomputing_every_prefix(tokenizer, k):
    """Two different models, some tokens replaced and not others, prompts of 20-30 tokens in
    batches of 4, 4 and 2, rows stopping at different steps: the same tokens and the same
    count of replacements with the caches (holes of rejected drafts, rows leaving the batch)
    as without them."""
    suspect, reference = _peaked(tokenizer, 0), _peaked(tokenizer, 1)
    prompts = _prompts(tokenizer)
    assert len({len(p) for p in prompts}) > 3
    settings = dict(alpha=50.0, k=k, batch_size=4)
    free, _ = cleangen_token_ids(suspect, reference, prompts, max_new_tokens=13,
                                 stop_ids=frozenset(), pad_id=0, use_cache=False, **settings)
    stop = frozenset({free[0][4]})      # a token the answers reach at different steps
    cached, uncached = _both_ways(suspect, reference, prompts, max_new_tokens=13,
                                  stop_ids=stop, **settings)
    assert cached == uncached
    out, replaced = cached
    assert 0 < replaced < sum(len(o) for o in out)
    stopped = [len(o) for o in out if o[-1] in stop]
    assert stopped and min(stopped) < 13 and len(set(stopped)) > 1
    assert any(len(o) == 13 and o[-1] not in stop for o in out)
    assert out != _greedy(suspect, prompts, 13, stop)   # the replacements changed answers


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("batch_size", [3, 8])
def test_cached_decoding_with_one_token_prompts(tokenizer, batch_size, attention):
    """Prompts of one token leave nothing to prefill: a batch of only such prompts starts
    with empty caches (batches of 3), one among longer prompts with a fully padded row
    (batches of 8)."""
    suspect, reference = _peaked(tokenizer, 0), _peaked(tokenizer, 1)
    for model in (suspect, reference):
        model.set_attn_implementation(attention)
    full = _prompts(tokenizer)
    prompts = [p[:1] for p in full[:3]] + [full[3][:2]] + full[4:8]
    cached, uncached = _both_ways(suspect, reference, prompts, alpha=50.0, k=3,
                                  max_new_tokens=7, stop_ids=frozenset(), batch_size=batch_size)
    assert cached == uncached
    out, replaced = cached
    assert 0 < replaced < sum(len(o) for o in out) and all(len(o) == 7 for o in out)


def test_the_cache_is_used_when_both_models_allow_it(tokenizer):
    """By default both models get a KV cache; a model the cached loop does not handle (here
    one with a sliding window) makes both decode without, to the same tokens."""
    suspect, reference = _peaked(tokenizer, 0), _peaked(tokenizer, 1)
    prompts = _prompts(tokenizer, EXAMPLES[:4])
    settings = dict(alpha=50.0, k=3, max_new_tokens=5, stop_ids=frozenset(), pad_id=0)
    calls: list = []
    out = cleangen_token_ids(recorded(suspect, calls), recorded(reference, calls), prompts,
                             **settings)
    assert calls and all("cache" in names for names in calls)
    calls.clear()
    reference.config.sliding_window = 4
    assert cleangen_token_ids(recorded(suspect, calls), recorded(reference, calls), prompts,
                              **settings) == out
    assert calls and not any("cache" in names for names in calls)
