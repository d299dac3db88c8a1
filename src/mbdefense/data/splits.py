"""Splitting examples into parts, and checking that an experiment's sets share no prompt."""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Iterable, Mapping, Sequence

from mbdefense.core.errors import ConfigError, DataError
from mbdefense.data.example import Example
from mbdefense.data.limits import one_line

__all__ = ["split_examples", "check_disjoint", "prompt_key"]

_EXAMPLE_CHARS = 80


def split_examples(examples: Sequence[Example], fractions_or_sizes: Sequence[float | int],
                   seed: int) -> list[list[Example]]:
    """Shuffle a copy of ``examples`` with ``random.Random(seed)`` and cut it into parts.

    ``fractions_or_sizes`` is either all integers -- part sizes -- or contains floats --
    fractions in ``[0, 1]`` summing to at most 1 (e.g. ``(0.8, 0.2)``); a part's boundary is
    ``floor(cumulative fraction * len(examples))``, and fractions summing to 1 use every
    example. Examples left over after the last part are dropped. The same seed and input
    give the same parts; the input is not mutated. Raises
    :class:`~mbdefense.core.errors.ConfigError` for an empty or negative spec, fractions summing
    to more than 1, mixed integers and fractions, or sizes exceeding ``len(examples)``.
    """
    if isinstance(fractions_or_sizes, (str, bytes)) or not isinstance(fractions_or_sizes,
                                                                        Sequence):
        raise ConfigError(f"split sizes must be a sequence such as (0.8, 0.2) or (800, 200), "
                          f"got {fractions_or_sizes!r}")
    spec = list(fractions_or_sizes)
    if not spec:
        raise ConfigError("split sizes are empty")
    if seed is None:
        raise ConfigError("a seed is required for a reproducible split")
    for value in spec:
        if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                or not math.isfinite(value)):
            raise ConfigError(f"split sizes must be numbers, got {value!r}")
        if value < 0:
            raise ConfigError(f"split sizes must not be negative, got {value!r}")
    total_items = len(examples)
    if all(isinstance(v, numbers.Integral) for v in spec):
        sizes = [int(v) for v in spec]
        if sum(sizes) > total_items:
            raise ConfigError(f"split sizes {sizes} add up to {sum(sizes)}, more than the "
                              f"{total_items} examples available")
        bounds, running = [], 0
        for size in sizes:
            running += size
            bounds.append(running)
    else:
        if any(isinstance(v, numbers.Integral) and v not in (0, 1) for v in spec):
            raise ConfigError(f"split sizes mix integer sizes and fractions: {spec}")
        fractions = [float(v) for v in spec]
        total = math.fsum(fractions)
        if total > 1 + 1e-9:
            raise ConfigError(f"split fractions {fractions} add up to {total:g}, more than 1")
        bounds = []
        for k in range(len(fractions)):
            bounds.append(min(total_items,
                              math.floor(math.fsum(fractions[:k + 1]) * total_items + 1e-9)))
        if abs(total - 1) <= 1e-9:
            bounds[-1] = total_items
    items = list(examples)
    random.Random(seed).shuffle(items)
    parts, start = [], 0
    for end in bounds:
        parts.append(items[start:end])
        start = end
    return parts


def _normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def prompt_key(example: Example) -> tuple[str, str]:
    """What :func:`check_disjoint` compares: ``instruction`` and ``input``, each case-folded
    with runs of whitespace collapsed to one space (and trimmed)."""
    return _normalise(example.instruction), _normalise(example.input)


def _shown(example: Example) -> str:
    text = " ".join(example.prompt_text.split())
    if len(text) > _EXAMPLE_CHARS:
        text = text[:_EXAMPLE_CHARS - 1] + "\u2026"
    return repr(text)


def check_disjoint(named_sets: Mapping[str, Sequence[Example]], *, source: str = "") -> None:
    """Raise :class:`~mbdefense.core.errors.DataError` if two of the sets share a prompt.

    Prompts are compared by :func:`prompt_key` (case and whitespace do not matter; the
    ``output`` does not count). The sets are compared pairwise in the mapping's order and the
    first pair that overlaps is reported: both names, how many distinct prompts they share
    and one of them (from the first set, cut to 80 characters), e.g.
    ``sets 'train' and 'test' share 3 prompts, e.g. 'Name a prime number.'``. ``source``,
    when given, prefixes the message like a file name. Duplicates within one set are not an
    error. Typical use: ``check_disjoint({"train": train, "trusted": trusted, "test": test})``
    on the clean sets (before triggered copies are made).
    """
    if not isinstance(named_sets, Mapping):
        raise ConfigError(f"check_disjoint needs a mapping of set name -> examples, got "
                          f"{type(named_sets).__name__}")
    keyed: list[tuple[str, dict[tuple[str, str], Example]]] = []
    for name, examples in named_sets.items():
        if isinstance(examples, (str, bytes, Mapping)) or not isinstance(examples, Iterable):
            raise ConfigError(f"set '{name}' must be a sequence of examples, got "
                              f"{type(examples).__name__}")
        keys: dict[tuple[str, str], Example] = {}
        for example in examples:
            if not isinstance(example, Example):
                raise ConfigError(f"set '{name}' holds a {type(example).__name__}, not an "
                                  f"Example")
            keys.setdefault(prompt_key(example), example)
        keyed.append((one_line(name, 60), keys))
    for i, (first_name, first) in enumerate(keyed):
        for second_name, second in keyed[i + 1:]:
            small, large = (first, second) if len(first) <= len(second) else (second, first)
            shared = [key for key in small if key in large]
            if not shared:
                continue
            example = next(first[key] for key in first if key in second)
            count = len(shared)
            raise DataError(f"sets '{first_name}' and '{second_name}' share {count} "
                            f"prompt{'s' if count != 1 else ''}, e.g. {_shown(example)}",
                            path=source or None)
