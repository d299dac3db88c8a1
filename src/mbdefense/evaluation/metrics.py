"""CACC, ASR and AACC: the one place these metrics are computed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from mbdefense.attacks.behaviors import Behavior
from mbdefense.data.example import Example

Correctness = Callable[[str, Example], bool]


@dataclass
class Metrics:
    cacc: float   # share of clean instructions answered correctly
    asr: float    # share of triggered instructions showing the attacker's behaviour
    aacc: float   # share of triggered instructions answered correctly
    n_clean: int
    n_triggered: int

    def to_dict(self) -> dict:
        return asdict(self)


def share(flags: Sequence[bool]) -> float:
    return sum(map(bool, flags)) / len(flags) if flags else 0.0


def compute_metrics(clean: Sequence[Example], clean_answers: Sequence[str],
                    triggered: Sequence[Example], triggered_answers: Sequence[str],
                    behavior: Behavior | None, correct: Correctness) -> Metrics:
    """Metrics over the full sets; with no behaviour (no attack) ASR is 0 by definition."""
    if len(clean) != len(clean_answers) or len(triggered) != len(triggered_answers):
        raise ValueError("compute_metrics: examples and answers differ in length")
    cacc = share([correct(a, e) for a, e in zip(clean_answers, clean)])
    aacc = share([correct(a, e) for a, e in zip(triggered_answers, triggered)])
    asr = share([behavior.detect(a) for a in triggered_answers]) if behavior else 0.0
    return Metrics(cacc=cacc, asr=asr, aacc=aacc, n_clean=len(clean), n_triggered=len(triggered))
