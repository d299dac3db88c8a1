"""Paired comparisons of two models scored on the same prompts.

Two defenses of one attacked model answer the same clean and triggered prompts, so whether
one is ahead of the other is a paired question: only the prompts where they disagree carry
evidence. A row's per-prompt outcomes are stored as flag strings (``"0110..."``, one character
per prompt, in the order the prompts were scored; :func:`flags_text`), and
:func:`compare_flags` gives, for a metric, the difference of the two rates with

- Newcombe's interval for a difference of paired proportions (method 10 of "Improved
  confidence intervals for the difference between binomial proportions based on paired
  data", Statistics in Medicine 17, 1998: the two rates' Wilson intervals combined with the
  correlation of the pairs),
- the exact (binomial) McNemar test's two-sided p-value on the discordant prompts.

Over several seeds the prompts of every seed are pooled (each pair within its seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Sequence

from mbdefense.results.intervals import CONFIDENCE, wilson

#: The per-prompt outcomes a row can carry, named as the metrics they make up.
OUTCOME_METRICS = ("cacc", "asr", "aacc", "clean_asr")


def flags_text(flags: Iterable[bool]) -> str:
    """Per-prompt flags as a string of ``0`` and ``1``."""
    return "".join("1" if flag else "0" for flag in flags)


def is_flags_text(value: object) -> bool:
    """Whether ``value`` is a string of ``0`` and ``1``."""
    return isinstance(value, str) and not set(value) - {"0", "1"}


def parse_flags(text: str) -> list[bool]:
    """The flags of :func:`flags_text`; anything but ``0`` and ``1`` is an error."""
    if not is_flags_text(text):
        raise ValueError(f"per-prompt outcomes must be 0s and 1s, got {text[:20]!r}")
    return [c == "1" for c in text]


@dataclass(frozen=True)
class PairedDifference:
    """Model A against model B on the same ``n`` prompts: ``both`` flagged for both,
    ``only_a`` / ``only_b`` for one of them; ``difference`` = rate(A) - rate(B) with its
    interval, and the McNemar test's ``p_value``."""

    n: int
    both: int
    only_a: int
    only_b: int
    difference: float
    low: float
    high: float
    p_value: float

    @property
    def rate_a(self) -> float:
        return (self.both + self.only_a) / self.n

    @property
    def rate_b(self) -> float:
        return (self.both + self.only_b) / self.n


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: under "no difference" each discordant prompt falls
    to either side with probability 1/2. Exact integer arithmetic, so pooled comparisons with
    a thousand or more discordant prompts neither overflow nor lose the tail."""
    m = only_a + only_b
    if m == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = Fraction(sum(math.comb(m, i) for i in range(k + 1)), 2 ** m)
    return min(1.0, float(2 * tail))


def _phi(both: int, only_a: int, only_b: int, neither: int) -> float:
    """The correlation of the paired flags as Newcombe's method 10 uses it: the cross-product
    ``both * neither - only_a * only_b`` shrunk by ``n / 2`` when positive (0 when that takes
    it below 0), kept when negative; 0 where a margin is empty."""
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    if margins == 0:
        return 0.0
    n = both + only_a + only_b + neither
    cross = both * neither - only_a * only_b
    corrected = max(cross - n / 2, 0.0) if cross > 0 else float(cross)
    return corrected / math.sqrt(margins)


def compare_counts(n: int, both: int, only_a: int, only_b: int,
                   confidence: float = CONFIDENCE) -> PairedDifference:
    """:class:`PairedDifference` from the counts of the 2x2 table of paired flags."""
    neither = n - both - only_a - only_b
    if n <= 0 or min(both, only_a, only_b, neither) < 0:
        raise ValueError(f"paired counts do not add up: n={n}, both={both}, only_a={only_a}, "
                         f"only_b={only_b}")
    a, b = wilson(both + only_a, n, confidence), wilson(both + only_b, n, confidence)
    assert a is not None and b is not None
    (lo_a, hi_a), (lo_b, hi_b) = a, b
    p_a, p_b = (both + only_a) / n, (both + only_b) / n
    phi = _phi(both, only_a, only_b, neither)
    below = (p_a - lo_a) ** 2 - 2 * phi * (p_a - lo_a) * (hi_b - p_b) + (hi_b - p_b) ** 2
    above = (hi_a - p_a) ** 2 - 2 * phi * (hi_a - p_a) * (p_b - lo_b) + (p_b - lo_b) ** 2
    difference = (only_a - only_b) / n
    return PairedDifference(n=n, both=both, only_a=only_a, only_b=only_b,
                            difference=difference,
                            low=max(-1.0, difference - math.sqrt(max(below, 0.0))),
                            high=min(1.0, difference + math.sqrt(max(above, 0.0))),
                            p_value=mcnemar_exact(only_a, only_b))


def compare_flags(pairs: Sequence[tuple[Sequence[bool], Sequence[bool]]],
                  confidence: float = CONFIDENCE) -> PairedDifference:
    """A against B over one or more (A's flags, B's flags) pairs (one per seed), pooled; each
    pair must cover the same prompts."""
    n = both = only_a = only_b = 0
    for flags_a, flags_b in pairs:
        if len(flags_a) != len(flags_b):
            raise ValueError(f"paired outcomes differ in length: {len(flags_a)} against "
                             f"{len(flags_b)} prompts")
        for x, y in zip(flags_a, flags_b):
            n += 1
            both += x and y
            only_a += x and not y
            only_b += y and not x
    if n == 0:
        raise ValueError("no paired prompts to compare")
    return compare_counts(n, both, only_a, only_b, confidence)
