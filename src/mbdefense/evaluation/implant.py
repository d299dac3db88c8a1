"""The stage-1 implant check: do the defender's triggers elicit their behaviours?

Stage 2 of MB-Defense can only break a merged backdoor feature that stage 1 implanted, so
both the experiment and ``defend`` measure this after stage 1 and warn when it is weak.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from mbdefense.attacks import triggered_copies
from mbdefense.data.example import Example
from mbdefense.defenses.defensive_triggers import DefensivePair
from mbdefense.evaluation.generation import answer_examples


def implant_rates(model: Any, tokenizer: Any, pairs: Sequence[DefensivePair],
                  prompts: Sequence[Example], seed: int, max_new_tokens: int) -> dict[str, float]:
    """How often each defensive trigger elicits its defensive behaviour on held-out prompts."""
    rates = {}
    for pair in pairs:
        triggered = triggered_copies(prompts, pair.trigger, seed)
        answers = answer_examples(model, tokenizer, triggered, max_new_tokens=max_new_tokens)
        rates[pair.trigger.spec] = sum(map(pair.behavior.detect, answers)) / max(len(answers), 1)
    return rates


def weak_implant_warning(rates: dict[str, float], threshold: float) -> str | None:
    """A warning naming the defensive triggers implanted below ``threshold``, or None."""
    weak = [t for t, r in rates.items() if r < threshold]
    if not weak:
        return None
    return (f"warning: defensive triggers {', '.join(weak)} elicit their behaviour on fewer "
            f"than {threshold:.0%} of held-out prompts; stage 2 relies on them (raise "
            "min_per_trigger or rate_per_trigger, or top them up: on_weak_implant='top-up')")


def check_implant(model: Any, tokenizer: Any, pairs: Sequence[DefensivePair],
                  prompts: Sequence[Example], seed: int, max_new_tokens: int, threshold: float,
                  log: Callable[[str], None] = print, when: str = "after stage 1"
                  ) -> tuple[dict[str, float], str | None]:
    """Measure the implant rates after stage 1, log them, and log and return the warning."""
    rates = implant_rates(model, tokenizer, pairs, prompts, seed, max_new_tokens)
    log(f"{when}: implant rates " + ", ".join(f"{t} {r:.2f}" for t, r in rates.items()))
    warning = weak_implant_warning(rates, threshold)
    if warning:
        log(warning)
    return rates, warning
