"""The stage-1 implant check: do the defender's triggers elicit their behaviours, and only them?

Stage 2 of MB-Defense can only break a merged backdoor feature that stage 1 implanted, so the
comparison, the benchmarks and ``defend`` measure after stage 1, per defensive trigger:

- the **implant rate**: how often the trigger elicits its defensive response on held-out
  prompts;
- the **leak rate**: how often that response comes out for the same prompts *without* any
  trigger. A model that answers clean prompts with a defensive phrase has learned the phrase,
  not the trigger (a high implant rate then means nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from mbdefense.attacks import triggered_copies
from mbdefense.data.example import Example
from mbdefense.defenses.defensive_triggers import DefensivePair
from mbdefense.evaluation.generation import answer_examples


@dataclass
class ImplantCheck:
    rates: dict[str, float]    # trigger spec -> share of triggered prompts with its response
    leaks: dict[str, float]    # trigger spec -> share of clean prompts with its response
    warning: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"rates": self.rates, "leaks": self.leaks}


def implant_rates(model: Any, tokenizer: Any, pairs: Sequence[DefensivePair],
                  prompts: Sequence[Example], seed: int, max_new_tokens: int) -> dict[str, float]:
    """How often each defensive trigger elicits its defensive behaviour on held-out prompts."""
    rates = {}
    for pair in pairs:
        triggered = triggered_copies(prompts, pair.trigger, seed)
        answers = answer_examples(model, tokenizer, triggered, max_new_tokens=max_new_tokens)
        rates[pair.trigger.spec] = sum(map(pair.behavior.detect, answers)) / max(len(answers), 1)
    return rates


def leak_rates(model: Any, tokenizer: Any, pairs: Sequence[DefensivePair],
               prompts: Sequence[Example], max_new_tokens: int) -> dict[str, float]:
    """How often each defensive response comes out for the prompts without any trigger."""
    answers = answer_examples(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    return {p.trigger.spec: sum(map(p.behavior.detect, answers)) / max(len(answers), 1)
            for p in pairs}


#: What a weak implant's warning suggests, without and with the top-up on.
RAISE_DEFENSIVE_EXAMPLES = "raise min_per_trigger or rate_per_trigger, or on_weak_implant='top-up'"
RAISE_TOP_UP = "top-up rounds follow while any remain; else raise top_up_rounds or min_per_trigger"


def weak_implant_warning(rates: dict[str, float], threshold: float,
                         leaks: dict[str, float] | None = None,
                         max_leak: float = 1.0,
                         remedy: str = RAISE_DEFENSIVE_EXAMPLES) -> str | None:
    """A warning naming the defensive triggers implanted below ``threshold`` (with ``remedy``)
    and the responses that leak onto clean prompts above ``max_leak``, or None."""
    notes = []
    weak = [t for t, r in rates.items() if r < threshold]
    if weak:
        notes.append(f"defensive triggers {', '.join(weak)} elicit their behaviour on fewer than "
                     f"{threshold:.0%} of held-out prompts; stage 2 relies on them ({remedy})")
    leaky = [t for t, r in (leaks or {}).items() if r > max_leak]
    if leaky:
        notes.append(f"the defensive responses of {', '.join(leaky)} also answer more than "
                     f"{max_leak:.0%} of clean prompts: the model learned the response, not "
                     "the trigger")
    return "warning: " + "; ".join(notes) if notes else None


def check_implant(model: Any, tokenizer: Any, pairs: Sequence[DefensivePair],
                  prompts: Sequence[Example], seed: int, max_new_tokens: int, threshold: float,
                  log: Callable[[str], None] = print, when: str = "after stage 1",
                  max_leak: float = 0.1,
                  remedy: str = RAISE_DEFENSIVE_EXAMPLES) -> ImplantCheck:
    """Measure implant and leak rates, log them, and log the warning (if any)."""
    rates = implant_rates(model, tokenizer, pairs, prompts, seed, max_new_tokens)
    leaks = leak_rates(model, tokenizer, pairs, prompts, max_new_tokens)
    log(f"{when}: implant rates " + ", ".join(f"{t} {r:.2f}" for t, r in rates.items())
        + "; leak onto clean prompts " + ", ".join(f"{t} {r:.2f}" for t, r in leaks.items()))
    warning = weak_implant_warning(rates, threshold, leaks, max_leak, remedy)
    if warning:
        log(warning)
    return ImplantCheck(rates, leaks, warning)
