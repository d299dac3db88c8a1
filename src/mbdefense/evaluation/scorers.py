"""Correctness scorers by name (the registry of judges of answer quality)."""

from __future__ import annotations

from typing import Callable

from mbdefense.data.example import Example
from mbdefense.data.suite import exact_match
from mbdefense.errors import ConfigError


def exact_match_scorer(answer: str, example: Example) -> bool:
    reference = example.meta.get("clean_output", example.output)
    return exact_match(answer, reference)


SCORERS: dict[str, Callable[[str, Example], bool]] = {"exact": exact_match_scorer}


def get_scorer(name: str) -> Callable[[str, Example], bool]:
    try:
        return SCORERS[name]
    except KeyError:
        raise ConfigError(f"scorer: unknown '{name}' (known: {', '.join(sorted(SCORERS))})") from None
