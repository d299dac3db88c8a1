"""CACC, ASR and AACC: the one place these metrics are computed, with the figures that say how
far to trust them: the echo floor, ROUGE-L as published work computes it, the judge's
unreadable verdicts and the backends that judged."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from mbdefense.attacks.behaviors import Behavior
from mbdefense.data.example import Example
from mbdefense.evaluation.scorers import (BehaviorScorer, RougeLScorer, Scorer, as_scorer,
                                          reference_of)
from mbdefense.results.paired import flags_text

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
    rouge_l: float | None = None        # mean ROUGE-L F of the clean answers (rouge-score's way)
    echo_cacc: float | None = None      # CACC of "answers" that echo each clean prompt: a floor
    echo_rouge_l: float | None = None   # mean ROUGE-L F of that echo
    judge_unparsed: int | None = None   # answers (clean + triggered) the judge gave no verdict
    judge_unparsed_share: float | None = None   # ... as a share of the answers it judged
    backends: dict[str, str] = field(default_factory=dict)   # what judged, with versions
    # per-prompt flags behind cacc, asr, aacc and clean_asr ("0110...", in the order scored),
    # for paired comparisons (mbdefense.results.paired); kept apart from the row's figures
    outcomes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The row's figures (without the per-prompt ``outcomes``)."""
        figures = asdict(self)
        del figures["outcomes"]
        return figures


def share(flags: Sequence[bool]) -> float:
    return sum(map(bool, flags)) / len(flags) if flags else 0.0


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def echo_answers(examples: Sequence[Example]) -> list[str]:
    """The echo baseline's "answers": each prompt (instruction and input) given back."""
    return [e.prompt_text for e in examples]


def backends_of(correct: Scorer, detector: Scorer | None = None) -> dict[str, str]:
    """What judges a row, with versions: the correctness scorer's backends (``scorer``,
    ``judge``, ...), ``rouge`` (what computes the ``rouge_l`` figure) and the ASR detector's
    (``asr``, ``toxicity``, ...)."""
    found = dict(correct.backends())
    rouge = correct if isinstance(correct, RougeLScorer) else RougeLScorer()
    found.setdefault("rouge", rouge.backends()["rouge"])
    if detector is not None:
        detected = dict(detector.backends())
        found["asr"] = detected.pop("scorer", detector.name)
        for key, value in detected.items():
            found.setdefault(key, value)
    return found


def compute_metrics(clean: Sequence[Example], clean_answers: Sequence[str],
                    triggered: Sequence[Example], triggered_answers: Sequence[str],
                    behavior: Behavior | None, correct: Scorer | Correctness,
                    attack_scorer: Scorer | None = None, *, echo: bool = True) -> Metrics:
    """Metrics over the full sets; with no behaviour (no attack) ASR is 0 by definition.

    ``correct`` judges CACC and AACC, each answer once; an answer it gives no verdict (an
    unreadable judge reply) is never correct, and their number is ``judge_unparsed``.
    ``attack_scorer`` judges ASR (default: the behaviour's own detector). With ``echo`` the
    same scorer also judges the clean prompts echoed back (``echo_cacc``: the floor CACC must
    clear). ``rouge_l`` and ``echo_rouge_l`` are reported whenever every clean example has a
    reference (with the scorer's stemming when it is ROUGE-L itself).
    """
    if len(clean) != len(clean_answers) or len(triggered) != len(triggered_answers):
        raise ValueError("compute_metrics: examples and answers differ in length")
    correct = as_scorer(correct)
    clean_judged = correct.assess(clean_answers, clean) if clean else None
    trig_judged = correct.assess(triggered_answers, triggered) if triggered else None
    metrics = Metrics(
        cacc=share(clean_judged.correct) if clean_judged else 0.0,
        aacc=share(trig_judged.correct) if trig_judged else 0.0, asr=0.0,
        n_clean=len(clean), n_triggered=len(triggered),
        clean_score=mean(clean_judged.scores) if clean_judged else 0.0)
    detector = (attack_scorer or BehaviorScorer(behavior)) if behavior is not None else None
    metrics.backends = backends_of(correct, detector)
    if correct.can_abstain:
        judged = [j for j in (clean_judged, trig_judged) if j is not None]
        metrics.judge_unparsed = sum(j.missing for j in judged)
        total = sum(len(j.verdicts) for j in judged)
        metrics.judge_unparsed_share = metrics.judge_unparsed / total if total else 0.0
    if echo and clean:
        metrics.echo_cacc = share(correct.assess(echo_answers(clean), clean).correct)
    if clean and all(reference_of(e).strip() for e in clean):
        rouge = correct if isinstance(correct, RougeLScorer) else RougeLScorer()
        metrics.rouge_l = (metrics.clean_score if rouge is correct
                           else mean(rouge.scores(clean_answers, clean)))
        if echo:
            metrics.echo_rouge_l = mean(rouge.scores(echo_answers(clean), clean))
    flags = {"cacc": clean_judged.correct if clean_judged else [],
             "aacc": trig_judged.correct if trig_judged else []}
    if detector is not None:
        flags["asr"] = detector.judge(triggered_answers, triggered) if triggered else []
        flags["clean_asr"] = detector.judge(clean_answers, clean) if clean else []
        metrics.asr, metrics.clean_asr = share(flags["asr"]), share(flags["clean_asr"])
    metrics.outcomes = {name: flags_text(values) for name, values in flags.items() if values}
    return metrics
