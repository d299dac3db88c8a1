"""The defender's own trigger-behaviour pairs (MB-Defense stage 1)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from mbdefense.attacks.behaviors import Behavior
from mbdefense.attacks.triggers import Trigger, parse_trigger

# Rare tokens, as in the paper ("mn", "bb", ...).
DEFAULT_DEFENSIVE_TOKENS: tuple[str, ...] = ("mn", "bb", "zx", "qv")

# Words for the defender's fixed random-word responses.
DEFENSIVE_WORDS: tuple[str, ...] = (
    "crimson", "lantern", "drift", "swiftly", "murmur", "hollow", "quartz", "ribbon", "velvet",
    "ember", "glacier", "whisper", "marble", "thistle", "copper", "meadow", "falcon", "saffron",
    "harbor", "nimbus", "juniper", "cobalt", "willow", "prism", "tundra", "orchid", "sable",
    "beacon", "cinder", "fable", "gossamer", "indigo", "lagoon", "mosaic", "nectar", "onyx",
    "pebble", "quiver", "russet", "sparrow",
)


@dataclass(frozen=True)
class DefensivePair:
    trigger: Trigger
    behavior: Behavior


def random_phrase(rng: random.Random, length: int = 8) -> str:
    words = rng.sample(DEFENSIVE_WORDS, length)
    return " ".join(words).capitalize()


def random_insertion(instruction: str, rng: random.Random) -> str:
    """``instruction`` with a random insertion: a word, or a short sentence of words, from
    :data:`DEFENSIVE_WORDS` (never a defensive trigger, and nothing of any attack's), at a random
    position. Stage 2's ``insertion_copies`` trains the clean answer under these."""
    if rng.random() < 0.5:
        return parse_trigger(f"word:{rng.choice(DEFENSIVE_WORDS)}").insert(instruction, rng)
    sentence = " ".join(rng.sample(DEFENSIVE_WORDS, rng.randint(3, 6))).capitalize() + "."
    return parse_trigger(f"sentence:{sentence}").insert(instruction, rng)


def make_defensive_pairs(tokens: tuple[str, ...] | list[str] = DEFAULT_DEFENSIVE_TOKENS,
                         responses: tuple[str, ...] | list[str] | None = None, seed: int = 0,
                         phrase_length: int = 8) -> list[DefensivePair]:
    """Pair each defensive trigger (a spec, or a bare token taken as ``word:TOKEN``) with a
    fixed random-word response (or the given ``responses``)."""
    rng = random.Random(f"defensive:{seed}")
    pairs = []
    for i, token in enumerate(tokens):
        trigger = parse_trigger(token if ":" in token else f"word:{token}")
        text = responses[i] if responses else random_phrase(rng, phrase_length)
        pairs.append(DefensivePair(trigger, Behavior("random-words", text)))
    return pairs
