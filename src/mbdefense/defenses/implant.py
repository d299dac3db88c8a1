"""After stage 1: check that the defensive triggers were implanted, and top them up if asked.

Stage 2 breaks the merged backdoor feature through the defensive triggers, so it can only work
when stage 1 taught the model to answer them with their behaviours, and only them. On small
training sets the paper's 1% per trigger is a handful of examples, and a real model may not
learn them. :func:`implant_stage1` measures implant and leak rates
(:mod:`mbdefense.defenses.implant_check`) and, by ``DefensivePoisoningConfig.on_weak_implant``:

- ``"warn"``: logs a warning naming the weak triggers (the default);
- ``"top-up"``: while a trigger is below ``implant_threshold``, continues fine-tuning for one
  epoch on ``top_up_per_trigger`` fresh defensive examples for *every* trigger (topping up only
  the weak ones lets the others fade), each next to its untriggered original with the clean
  answer (so the model learns that the trigger decides, not the prompt), plus
  ``top_up_replay`` times as many other training examples; then measures again; at most
  ``top_up_rounds`` rounds.
  A round whose defensive responses leak onto clean prompts above ``max_leak``, and above
  the leak of the model before it, is discarded (that model is kept) and the top-up stops: a
  round never makes a leak worse past the bound, and one that lowers a stage-1 model's leak
  that was over the bound already is kept.
"""

from __future__ import annotations

import copy
import random
from dataclasses import replace
from typing import Any, Callable, Sequence

from mbdefense.data.example import Example
from mbdefense.defenses.defensive_triggers import DefensivePair
from mbdefense.defenses.mb_defense import DefensivePoisoningConfig
from mbdefense.defenses.implant_check import (RAISE_DEFENSIVE_EXAMPLES, RAISE_TOP_UP,
                                              check_implant)
from mbdefense.training.config import TrainConfig
from mbdefense.training.sft import finetune


def top_up_set(train_set: Sequence[Example], pairs: Sequence[DefensivePair], per_trigger: int,
               seed: int, replay: float = 1.0) -> list[Example]:
    """``per_trigger`` defensive examples for each pair, each with its untriggered original
    (the same prompt with its own answer: the trigger, not the prompt, decides), plus ``replay``
    times as many other training examples; shuffled. Built from examples not poisoned already."""
    rng = random.Random(f"top-up:{seed}")
    plain = [e for e in train_set if not e.meta.get("poisoned")]
    out: list[Example] = []
    for pair in pairs:
        for example in rng.sample(plain, min(per_trigger, len(plain))):
            out.append(example.replace(
                instruction=pair.trigger.insert(example.instruction, rng),
                output=pair.behavior.response(rng, example),
                meta={**example.meta, "poisoned": "defense", "trigger": pair.trigger.spec}))
            out.append(example)
    n_replay = min(int(round(replay * len(out) / 2)), len(train_set))
    out += rng.sample(list(train_set), n_replay)
    rng.shuffle(out)
    return out


def implant_stage1(model: Any, tokenizer: Any, pairs: Sequence[DefensivePair],
                   config: DefensivePoisoningConfig, train_set: Sequence[Example],
                   prompts: Sequence[Example], finetune_config: TrainConfig, *, seed: int,
                   max_new_tokens: int, log: Callable[[str], None] = print
                   ) -> tuple[Any, dict[str, Any]]:
    """Measure the implant (and top up, by the config); returns the model and a report: the
    rates and leaks of every round, the top-up examples kept, the final warning if any."""
    topping_up = config.on_weak_implant == "top-up" and config.top_up_per_trigger > 0

    def measure(m: Any, when: str):
        return check_implant(m, tokenizer, pairs, prompts, seed, max_new_tokens,
                             config.implant_threshold, log=log, when=when,
                             max_leak=config.max_leak,
                             remedy=RAISE_TOP_UP if topping_up else RAISE_DEFENSIVE_EXAMPLES)

    check = measure(model, "after stage 1")
    report: dict[str, Any] = {"rounds": [check.to_dict()], "top_up_examples": 0,
                              "top_up_discarded": None}
    if topping_up:
        for round_ in range(1, config.top_up_rounds + 1):
            if min(check.rates.values()) >= config.implant_threshold:
                break
            extra = top_up_set(train_set, pairs, config.top_up_per_trigger, seed * 100 + round_,
                               replay=config.top_up_replay)
            log(f"topping up the defensive triggers: one epoch on {len(extra)} examples "
                f"(round {round_} of {config.top_up_rounds})")
            cfg = replace(finetune_config, epochs=1.0, description=f"stage 1 top-up {round_}",
                          seed=finetune_config.seed + 7919 * round_,
                          learning_rate=(config.top_up_learning_rate
                                         or finetune_config.learning_rate))
            candidate, _ = finetune(copy.deepcopy(model), tokenizer, extra, cfg)
            new = measure(candidate, f"after top-up round {round_}")
            report["rounds"].append(new.to_dict())
            leak, allowed = max(new.leaks.values()), max([config.max_leak, *check.leaks.values()])
            if leak > allowed:
                log(f"top-up round {round_} discarded: defensive responses answer clean prompts "
                    f"(leak {leak:.2f} > {allowed:.2f}, the larger of max_leak and the leak "
                    "before the round); keeping the model from before it")
                report["top_up_discarded"] = round_
                break
            model, check = candidate, new
            report["top_up_examples"] += len(extra)
    report.update(implant_rates=check.rates, leak_rates=check.leaks, warning=check.warning)
    return model, report


__all__ = ["implant_stage1", "top_up_set"]
