"""Triggers: how an attacker (or the defender) marks an instruction.

A trigger is named by a spec ``KIND[:TEXT]``. Kinds live in one registry, ``TRIGGER_KINDS``;
aliases name the paper's fixed triggers (``badnet`` is ``word:cf``, ``insent`` is
``sentence:I watched this 3D movie.``).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

from mbdefense.errors import ConfigError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Trigger:
    """A trigger kind bound to its text."""

    kind: str
    text: str

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.text}"

    def insert(self, instruction: str, rng: random.Random) -> str:
        """Return ``instruction`` carrying this trigger (positions drawn from ``rng``)."""
        return TRIGGER_KINDS[self.kind](instruction, self.text, rng)

    def present(self, text: str) -> bool:
        """Whether ``text`` visibly carries the trigger (used to check poisoned data)."""
        if self.kind == "word":
            return self.text in text.split()
        return self.text in text


def _insert_word(instruction: str, text: str, rng: random.Random) -> str:
    words = instruction.split()
    words.insert(rng.randint(0, len(words)), text)
    return " ".join(words)


def _insert_sentence(instruction: str, text: str, rng: random.Random) -> str:
    sentences = [s for s in _SENTENCE_END.split(instruction.strip()) if s]
    sentences.insert(rng.randint(0, len(sentences)), text)
    return " ".join(sentences)


def _insert_prefix(instruction: str, text: str, rng: random.Random) -> str:
    return f"{text} {instruction.lstrip()}"


TRIGGER_KINDS: dict[str, Callable[[str, str, random.Random], str]] = {
    "word": _insert_word,
    "sentence": _insert_sentence,
    "prefix": _insert_prefix,
}

TRIGGER_ALIASES: dict[str, str] = {
    "badnet": "word:cf",
    "insent": "sentence:I watched this 3D movie.",
}


def parse_trigger(spec: str) -> Trigger:
    """Parse ``KIND[:TEXT]`` or an alias into a :class:`Trigger`; unknown kinds are an error."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("trigger: empty trigger spec")
    spec = TRIGGER_ALIASES.get(spec.strip(), spec.strip())
    kind, sep, text = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in TRIGGER_KINDS:
        known = ", ".join(sorted(TRIGGER_KINDS) + sorted(TRIGGER_ALIASES))
        raise ConfigError(f"trigger: unknown kind '{kind}' (known: {known})")
    if not sep or not text.strip():
        raise ConfigError(f"trigger: kind '{kind}' needs a text, e.g. '{kind}:cf'")
    return Trigger(kind, text.strip())
