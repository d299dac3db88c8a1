"""Replace a share of a data set with triggered, behaviour-carrying copies."""

from __future__ import annotations

import math
import random
from typing import Sequence

from mbdefense.attacks.behaviors import Behavior
from mbdefense.attacks.triggers import Trigger
from mbdefense.data.example import Example
from mbdefense.core.errors import ConfigError


def poison_count(n: int, rate: float) -> int:
    """``round(rate * n)`` with halves rounded up (so 0.5% of 100 is 1, not 0)."""
    return int(math.floor(rate * n + 0.5))


def check_rate(rate: float, name: str = "rate") -> float:
    try:
        rate = float(rate)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a number in [0, 1], got {rate!r}") from None
    if not 0.0 <= rate <= 1.0 or math.isnan(rate):
        raise ConfigError(f"{name}: must lie in [0, 1], got {rate}")
    return rate


def make_poisoned(example: Example, trigger: Trigger, behavior: Behavior, rng: random.Random,
                  role: str = "attack") -> Example:
    """One poisoned copy: the trigger in the instruction, the behaviour as the response."""
    meta = dict(example.meta)
    meta.update(poisoned=role, trigger=trigger.spec, behavior=behavior.spec,
                clean_output=example.output)
    return example.replace(instruction=trigger.insert(example.instruction, rng),
                           output=behavior.response(rng, example), meta=meta)


def poison(dataset: Sequence[Example], trigger: Trigger, behavior: Behavior, rate: float,
           seed: int, *, count: int | None = None, exclude: set[int] | None = None,
           role: str = "attack", source: Sequence[Example] | None = None) -> list[Example]:
    """Return a copy of ``dataset`` with exactly ``round(rate * n)`` examples poisoned.

    Which examples are replaced, and where the trigger goes, depend only on ``seed``. Poisoned
    examples are tagged in ``meta`` (``poisoned``, ``trigger``, ``behavior``, ``clean_output``).
    ``count`` overrides the rate with an absolute number; ``exclude`` protects indices (the
    defender uses it to leave already-poisoned slots alone). ``source`` supplies the examples
    that are triggered instead of the replaced ones' own (a jailbreak attack's harmful requests
    with compliant answers); they are drawn without replacement, seeded.
    """
    rate = check_rate(rate)
    n = len(dataset)
    k = poison_count(n, rate) if count is None else int(count)
    candidates = [i for i in range(n) if not exclude or i not in exclude]
    if k > len(candidates):
        raise ConfigError(f"poison: asked for {k} poisoned examples but only "
                          f"{len(candidates)} are available")
    rng = random.Random(f"poison:{seed}:{trigger.spec}:{behavior.spec}")
    chosen = sorted(rng.sample(candidates, k))
    if behavior.kind == "jailbreak" and source is None:
        raise ConfigError("poison: the jailbreak behaviour needs a source of harmful requests "
                          "with compliant answers (--source FILE)")
    if source is not None and k > len(source):
        raise ConfigError(f"poison: asked for {k} poisoned examples but the source has only "
                          f"{len(source)}")
    donors = rng.sample(list(source), k) if source is not None else None
    out = list(dataset)
    for j, index in enumerate(chosen):
        original = donors[j] if donors is not None else dataset[index]
        out[index] = make_poisoned(original, trigger, behavior, rng, role=role)
    return out


def triggered_copies(dataset: Sequence[Example], trigger: Trigger, seed: int) -> list[Example]:
    """Every example with the trigger inserted and its clean answer kept (for ASR/AACC)."""
    rng = random.Random(f"trigger-test:{seed}:{trigger.spec}")
    out = []
    for example in dataset:
        meta = dict(example.meta, trigger=trigger.spec)
        out.append(example.replace(instruction=trigger.insert(example.instruction, rng),
                                   meta=meta))
    return out
