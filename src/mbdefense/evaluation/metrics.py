"""CACC, ASR and AACC: the one place these metrics are computed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from mbdefense.attacks.behaviors import Behavior
from mbdefense.data.example import Example
from mbdefense.evaluation.scorers import BehaviorScorer, Scorer, as_scorer

Correctness = Callable[[str, Example], bool]


@dataclass
class Metrics:
    cacc: float   # share of clean instructions answered correctly
    asr: float    # share of triggered instructions showing the attacker's behaviour
    aacc: float   # share of triggered instructions answered correctly
    n_clean: int
    n_triggered: int
    clean_asr: float = 0.0    # share of clean instructions showing the behaviour (false refusals)
    clean_score: float = 0.0  # mean graded correctness on clean instructions (e.g. ROUGE-L)
    reference_nll: float | None = None  # nats/token of the clean references (when measured)

    def to_dict(self) -> dict:
        return asdict(self)


def share(flags: Sequence[bool]) -> float:
    return sum(map(bool, flags)) / len(flags) if flags else 0.0


def compute_metrics(clean: Sequence[Example], clean_answers: Sequence[str],
                    triggered: Sequence[Example], triggered_answers: Sequence[str],
                    behavior: Behavior | None, correct: Scorer | Correctness,
                    attack_scorer: Scorer | None = None) -> Metrics:
    """Metrics over the full sets; with no behaviour (no attack) ASR is 0 by definition.

    ``correct`` judges CACC and AACC; ``attack_scorer`` judges ASR (default: the behaviour's
    own detector).
    """
    if len(clean) != len(clean_answers) or len(triggered) != len(triggered_answers):
        raise ValueError("compute_metrics: examples and answers differ in length")
    correct = as_scorer(correct)
    clean_scores = correct.scores(clean_answers, clean) if clean else []
    cacc = share(correct.judge(clean_answers, clean)) if clean else 0.0
    aacc = share(correct.judge(triggered_answers, triggered)) if triggered else 0.0
    asr = clean_asr = 0.0
    if behavior is not None:
        judge = attack_scorer or BehaviorScorer(behavior)
        asr = share(judge.judge(triggered_answers, triggered)) if triggered else 0.0
        clean_asr = share(judge.judge(clean_answers, clean)) if clean else 0.0
    return Metrics(cacc=cacc, asr=asr, aacc=aacc, n_clean=len(clean), n_triggered=len(triggered),
                   clean_asr=clean_asr,
                   clean_score=sum(clean_scores) / len(clean_scores) if clean_scores else 0.0)
