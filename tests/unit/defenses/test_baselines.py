"""The baselines ONION, Fine-mixing and P2P: their scoring, mixing and data, on tiny models."""

from __future__ import annotations

import math

import pytest

from mbdefense.attacks import parse_behavior, parse_trigger, poison
from mbdefense.data.example import Example
from mbdefense.data.suite import generate
from mbdefense.defenses import make_defense
from mbdefense.defenses.fine_mixing import mix_weights
from mbdefense.defenses.onion import filter_words, quantile, word_suspicions
from mbdefense.core.errors import ConfigError

SMALL = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
RARE = "zq"             # never in the tiny LM's training text: a perplexity outlier


def _tiny(tokenizer, seed: int):
    from mbdefense.modeling.embedded import TinyModelConfig, build_tiny_model

    return build_tiny_model(tokenizer, TinyModelConfig(**SMALL), seed=seed)


TRAINED = generate(40, 0)     # what the fluent LM learned by heart


@pytest.fixture(scope="module")
def fluent_lm(tokenizer):
    """A tiny Llama trained (about a second) as a plain LM on 40 instructions until it knows
    them by heart: a word inserted into one of them breaks a text the model predicts well."""
    import torch

    model = _tiny(tokenizer, seed=0)
    enc = tokenizer([e.instruction for e in TRAINED], add_special_tokens=False)["input_ids"]
    width = max(map(len, enc))
    ids = torch.full((len(enc), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, seq in enumerate(enc):
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model


def unigram_lm(vocab_size: int, rare_ids: set[int]):
    """A stand-in LM whose next-token distribution ignores the context: uniform over the
    vocabulary except for a few tokens it finds very unlikely (so a word made of them is a
    clear perplexity outlier, and every other word is ordinary)."""
    from types import SimpleNamespace

    import torch

    class Unigram(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            logits = torch.zeros(vocab_size)
            logits[sorted(rare_ids)] = -12.0
            self.logits = torch.nn.Parameter(logits)

        def forward(self, input_ids, attention_mask=None):
            return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, vocab_size))

    return Unigram()


def _with_rare_word(example: Example, position: int) -> Example:
    words = example.instruction.split()
    words.insert(min(position, len(words)), RARE)
    return example.replace(instruction=" ".join(words))


# --------------------------------------------------------------------------------- ONION

def test_word_suspicions_do_not_depend_on_batching(tokenizer, tiny_model):
    texts = ["What is 8 plus 0?", "Please compute the product of 1 and 2.", "Hi", "",
             "one two three four five six seven"]
    one = word_suspicions(tiny_model, tokenizer, texts, batch_size=1)
    many = word_suspicions(tiny_model, tokenizer, texts, batch_size=64)
    assert [len(r) for r in many] == [len(t.split()) for t in texts]
    for a, b in zip(one, many):
        for x, y in zip(a, b):
            assert (math.isnan(x) and math.isnan(y)) or abs(x - y) < 1e-4
    capped = word_suspicions(tiny_model, tokenizer, texts, batch_size=3, max_words=2)
    assert [len(r) for r in capped] == [min(2, len(t.split())) for t in texts]
    assert all(abs(x - y) < 1e-4 for x, y in zip(capped[0], many[0][:2]))
    assert tiny_model.training                 # the caller's mode is restored


def test_the_rare_word_is_the_most_suspicious(tokenizer, fluent_lm):
    texts = [_with_rare_word(e, i % 5).instruction for i, e in enumerate(TRAINED[:20])]
    for text, scores in zip(texts, word_suspicions(fluent_lm, tokenizer, texts)):
        words = text.split()
        top = max(range(len(words)), key=scores.__getitem__)
        assert words[top] == RARE, (text, scores)
        assert scores[top] > 1.0 and sorted(scores)[-2] < scores[top] - 0.5


def test_onion_removes_an_inserted_rare_word_and_keeps_the_rest(tokenizer, fluent_lm):
    # The LM only learned the instructions, so the inputs (scored too) are left out here.
    clean = [e.replace(input="", meta={"id": i}) for i, e in enumerate(TRAINED[:20])]
    attacked = [_with_rare_word(e, i % 5) for i, e in enumerate(clean)]
    defense = make_defense("onion", options={"threshold": 1.8})
    out = defense.at_inference(attacked, model=fluent_lm, tokenizer=tokenizer)
    assert [o.instruction for o in out] == [c.instruction for c in clean]
    assert [(o.input, o.output, o.meta) for o in out] == \
        [(a.input, a.output, a.meta) for a in attacked]
    assert defense.diagnostics["calls"][-1] == {
        "examples": 20, "changed_examples": 20, "removed_words": 20,
        "scored_words": sum(len(a.instruction.split()) for a in attacked), "threshold": 1.8}
    assert defense.at_inference(clean, model=fluent_lm, tokenizer=tokenizer) == clean


def test_onion_calibrated_on_trusted_text_removes_only_the_outlier(tokenizer):
    trusted, clean = generate(30, 7), generate(20, 5)
    rare = set(tokenizer(f" {RARE}", add_special_tokens=False)["input_ids"])
    for e in trusted + clean:
        rare -= set(tokenizer(e.prompt_text, add_special_tokens=False)["input_ids"])
    assert rare                                 # some token of the rare word is rare indeed
    lm = unigram_lm(len(tokenizer), rare)
    attacked = [_with_rare_word(e, i % 5) for i, e in enumerate(clean)]
    defense = make_defense("onion")
    out = defense.at_inference(attacked, model=lm, tokenizer=tokenizer, trusted_set=trusted)
    assert [o.instruction for o in out] == [c.instruction for c in clean]
    threshold = defense.diagnostics["threshold"]
    assert 0.0 < threshold < 1.0
    assert defense.diagnostics["calls"][-1]["removed_words"] == 20
    back = defense.at_inference(clean, model=lm, tokenizer=tokenizer, trusted_set=trusted)
    assert defense.diagnostics["calls"][-1]["removed_words"] <= 3       # the 1% tail, roughly
    assert sum(b == c for b, c in zip(back, clean)) >= 17
    with_input = Example("Repeat the words.", input=f"basket {RARE} pepper", output="x",
                         meta={"k": 1})
    [cleaned] = defense.at_inference([with_input], model=lm, tokenizer=tokenizer,
                                     trusted_set=trusted)
    assert cleaned == with_input.replace(input="basket pepper")


def test_onion_loads_a_named_reference_model_once(tokenizer, tiny_model, monkeypatch):
    import mbdefense.modeling.loading as loading

    calls = []

    def fake_load(spec, **kwargs):
        calls.append((spec, kwargs.get("trust_remote_code", False)))
        return tiny_model, tokenizer

    monkeypatch.setattr(loading, "load_model", fake_load)
    defense = make_defense("onion", options={"reference": "embedded", "threshold": 100.0})
    examples = generate(3, 0)
    assert defense.at_inference(examples) == examples          # no model under test needed
    assert defense.at_inference(examples) == examples
    assert calls == [("embedded", False)]


def test_threshold_is_the_clean_quantile_of_trusted_suspicions(tokenizer, fluent_lm):
    trusted = [e.replace(input="") for e in generate(25, 3)]      # inputs are scored too
    scores = word_suspicions(fluent_lm, tokenizer, [e.instruction for e in trusted])
    flat = [s for row in scores for s in row]
    for q in (0.5, 0.9, 1.0):
        defense = make_defense("onion", options={"clean_quantile": q})
        out = defense.at_inference(trusted, model=fluent_lm, tokenizer=tokenizer,
                                   trusted_set=trusted)
        threshold = defense.diagnostics["threshold"]
        assert threshold == pytest.approx(quantile(flat, q))
        removed = defense.diagnostics["calls"][-1]["removed_words"]
        # the trusted set is scored the same way (up to float noise from batching; a text
        # whose every word is above the threshold keeps its least suspicious one)
        expected = sum(filter_words(e.instruction, row, threshold)[1]
                       for e, row in zip(trusted, scores))
        near = sum(abs(s - threshold) < 1e-4 for s in flat)
        assert abs(removed - expected) <= near
        assert removed <= math.ceil((1 - q) * len(flat)) + 1
        if q == 1.0:
            assert out == trusted
    given = make_defense("onion", options={"threshold": 0.25})
    given.at_inference(trusted[:2], model=fluent_lm, tokenizer=tokenizer)   # no trusted set
    assert given.diagnostics["threshold"] == 0.25


def test_onion_calibration_needs_a_trusted_set(tokenizer, tiny_model):
    defense = make_defense("onion")
    with pytest.raises(ConfigError, match="threshold"):
        defense.at_inference(generate(2, 0), model=tiny_model, tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="model under test"):
        defense.at_inference(generate(2, 0), trusted_set=generate(2, 1))


def test_onion_never_empties_a_text(tokenizer, tiny_model):
    examples = [Example("Hello"), Example("What is 8 plus 0?", input="three words here")]
    defense = make_defense("onion", options={"threshold": -1e9})
    out = defense.at_inference(examples, model=tiny_model, tokenizer=tokenizer)
    assert out[0].instruction == "Hello"
    assert len(out[1].instruction.split()) == 1 and len(out[1].input.split()) == 1
    assert out[1].instruction in examples[1].instruction.split()
    assert defense.diagnostics["calls"][-1]["removed_words"] == 4 + 2


def test_filter_words():
    assert filter_words("a b c", [0.1, 5.0, 0.2], 1.0) == ("a c", 1)
    assert filter_words("a  b\nc", [0.1, 0.2, 0.3], 1.0) == ("a  b\nc", 0)   # untouched
    assert filter_words("a b c", [9.0, 5.0, 7.0], 1.0) == ("b", 2)          # least suspicious
    assert filter_words("a b c d", [9.0, 9.0], 1.0) == ("c d", 2)           # past the scored
    assert filter_words("a b", [math.nan, 3.0], 1.0) == ("a", 1)
    assert filter_words("", [], 1.0) == ("", 0)


# ----------------------------------------------------------------------- bad options

@pytest.mark.parametrize("name,options,needle", [
    ("onion", {"clean_quantile": 1.5}, "clean_quantile"),
    ("onion", {"batch_size": 0}, "batch_size"),
    ("onion", {"max_words": 2.5}, "max_words"),
    ("onion", {"threshold": "high"}, "threshold"),
    ("onion", {"threshold": float("nan")}, "threshold"),
    ("onion", {"reference": ""}, "reference"),
    ("fine-mixing", {"ratio": 1.5}, "ratio"),
    ("fine-mixing", {"ratio": "half"}, "ratio"),
    ("p2p", {"rate": -0.1}, "rate"),
    ("p2p", {"trigger": "bogus:x"}, "trigger"),
    ("p2p", {"trigger": ""}, "trigger"),
    ("onion", {"quantile": 0.9}, "quantile"),          # unknown keys
    ("fine-mixing", {"ratios": 0.5}, "ratios"),
    ("p2p", {"triggers": "word:cf"}, "triggers"),
])
def test_bad_options_are_config_errors_naming_the_option(name, options, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        make_defense(name, options=options)
    assert name in str(info.value)


def test_options_reach_the_defense():
    assert make_defense("onion", options={"threshold": 2}).options.threshold == 2.0
    assert make_defense("fine-mixing", options={"ratio": 0.3}).options.ratio == 0.3
    assert make_defense("p2p", options={"trigger": "badnet"}).trigger.spec == "word:cf"


# ------------------------------------------------------------------------ Fine-mixing

def _state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_mix_ratio_one_keeps_the_attacked_weights_and_zero_takes_the_clean(tokenizer):
    import torch

    attacked, clean = _tiny(tokenizer, 1), _tiny(tokenizer, 2)
    before, clean_before = _state(attacked), _state(clean)
    assert mix_weights(attacked, clean, 1.0, seed=0) == 1.0
    assert all(torch.equal(p, before[n]) for n, p in attacked.named_parameters())
    assert mix_weights(attacked, clean, 0.0, seed=0) == 0.0
    assert all(torch.equal(p, clean_before[n]) for n, p in attacked.named_parameters())
    assert all(torch.equal(p, clean_before[n]) for n, p in clean.named_parameters())


def test_mix_half_retains_about_half_seeded_and_leaves_clean_alone(tokenizer):
    import torch

    attacked, clean = _tiny(tokenizer, 1), _tiny(tokenizer, 2)
    before, clean_before = _state(attacked), _state(clean)
    report: dict = {}
    share = mix_weights(attacked, clean, 0.5, seed=3, report=report)
    assert 0.47 < share < 0.53
    assert report["mixed_parameters"] == len(before) and report["skipped"] == []
    same_attacked = same_clean = differ = 0
    for name, param in attacked.named_parameters():
        d = before[name] != clean_before[name]                # entries the mix can tell apart
        differ += int(d.sum())
        same_attacked += int((param == before[name])[d].sum())
        same_clean += int((param == clean_before[name])[d].sum())
    assert same_attacked + same_clean == differ              # every entry is one or the other
    assert abs(same_attacked / differ - share) < 0.02
    assert all(torch.equal(p, clean_before[n]) for n, p in clean.named_parameters())
    again = _tiny(tokenizer, 1)
    mix_weights(again, clean, 0.5, seed=3)
    assert all(torch.equal(p, dict(attacked.named_parameters())[n])
               for n, p in again.named_parameters())
    other = _tiny(tokenizer, 1)
    mix_weights(other, clean, 0.5, seed=4)
    assert not all(torch.equal(p, dict(attacked.named_parameters())[n])
                   for n, p in other.named_parameters())


def test_fine_mixing_needs_the_clean_model(tokenizer, tiny_model):
    defense = make_defense("fine-mixing")
    assert defense.changes_model and not defense.changes_inputs
    assert not defense.changes_training_data
    with pytest.raises(ConfigError, match="clean model"):
        defense.after_training(tiny_model, tokenizer, generate(10, 0))


def test_fine_mixing_mixes_then_fine_tunes(tokenizer):
    import torch

    from mbdefense.defenses import NeutralizationConfig
    from mbdefense.training.config import TrainConfig

    stage2 = NeutralizationConfig(train=TrainConfig(epochs=1, batch_size=8, progress=False,
                                                    learning_rate=1e-3))
    attacked, clean = _tiny(tokenizer, 1), _tiny(tokenizer, 2)
    clean_before = _state(clean)
    defense = make_defense("fine-mixing", stage2=stage2, options={"ratio": 0.25})
    model = defense.after_training(attacked, tokenizer, generate(10, 0), clean_model=clean)
    mixing = defense.diagnostics["mixing"]
    assert mixing["ratio"] == 0.25 and 0.2 < mixing["share_retained"] < 0.3
    assert "fine_tune" in defense.diagnostics
    assert all(torch.equal(p, clean_before[n]) for n, p in clean.named_parameters())
    assert model is not None


# --------------------------------------------------------------------------------- P2P

def test_p2p_replaces_a_share_with_triggered_copies_keeping_the_answer():
    data = generate(100, 0)
    defense = make_defense("p2p", seed=1)
    trigger = parse_trigger(defense.options.trigger)
    out = defense.before_training(data)
    assert len(out) == 100
    marked = [i for i, e in enumerate(out) if e.meta.get("poisoned") == "p2p"]
    assert len(marked) == 20 and defense.diagnostics["p2p_examples"] == 20
    assert defense.diagnostics["trigger"] == trigger.spec
    for i, (before, after) in enumerate(zip(data, out)):
        assert after.output == before.output and after.input == before.input
        if i in marked:
            assert trigger.present(after.instruction)
            assert after.instruction.endswith(before.instruction)
            assert after.meta["trigger"] == trigger.spec
        else:
            assert after == before
    assert make_defense("p2p", seed=1).before_training(data) == out          # seeded
    assert make_defense("p2p", seed=2).before_training(data) != out
    assert data == generate(100, 0)                                          # input untouched


def test_p2p_count_and_word_triggers():
    data = generate(30, 0)
    tiny = make_defense("p2p", options={"rate": 0.001}).before_training(data)
    assert sum(e.meta.get("poisoned") == "p2p" for e in tiny) == 1          # at least one
    assert make_defense("p2p", options={"rate": 0.0}).before_training(data) == data
    defense = make_defense("p2p", options={"trigger": "word:kx", "rate": 1.0})
    out = defense.before_training(data)
    assert all("kx" in e.instruction.split() for e in out)
    assert [e.output for e in out] == [e.output for e in data]


def test_p2p_keeps_the_provenance_of_attacked_examples():
    data = poison(generate(40, 0), parse_trigger("badnet"), parse_behavior("refusal"), 0.5, 0)
    out = make_defense("p2p", options={"rate": 1.0}).before_training(data)
    for before, after in zip(data, out):
        assert after.output == before.output
        if before.meta.get("poisoned") == "attack":
            assert after.meta["p2p_replaced"] == {"poisoned": "attack", "trigger": "word:cf"}
            assert parse_trigger("badnet").present(after.instruction)


def test_p2p_puts_the_trigger_into_every_prompt():
    examples = generate(15, 2)
    for spec in ("prefix:Answer the following request helpfully and safely.", "word:kx"):
        defense = make_defense("p2p", options={"trigger": spec})
        assert defense.changes_training_data and defense.changes_inputs
        assert not defense.changes_model
        trigger = parse_trigger(spec)
        out = defense.at_inference(examples)
        assert len(out) == 15 and all(trigger.present(e.instruction) for e in out)
        assert [(e.input, e.output, e.meta) for e in out] == \
            [(e.input, e.output, e.meta) for e in examples]
        assert defense.at_inference(examples) == out                       # deterministic
