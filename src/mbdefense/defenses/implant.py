"""After stage 1: check that the defensive triggers were implanted, and top them up if asked.

Stage 2 breaks the merged backdoor feature through the defensive triggers, so it can only work
when stage 1 taught the model to answer them with their behaviours. On small training sets the
paper's 1% per trigger is a handful of examples, and a real model may not learn them (the
implant rate stays near 0). :func:`implant_stage1` measures the rate per trigger on held-out
prompts and, by ``DefensivePoisoningConfig.on_weak_implant``:

- ``"warn"``: logs a warning naming the weak triggers (the default);
- ``"top-up"``: continues fine-tuning for one epoch on ``top_up_per_trigger`` fresh defensive
  examples per weak trigger, mixed 1:1 with ordinary examples of the same training set (so the
  rest of what the model learned is rehearsed), then measures again; at most
  ``top_up_rounds`` rounds.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any, Callable, Sequence

from mbdefense.data.example import Example
from mbdefense.defenses.defensive_triggers import DefensivePair
from mbdefense.defenses.mb_defense import DefensivePoisoningConfig
from mbdefense.evaluation.implant import check_implant
from mbdefense.training.config import TrainConfig
from mbdefense.training.sft import finetune


def top_up_set(train_set: Sequence[Example], pairs: Sequence[DefensivePair], per_trigger: int,
               seed: int) -> list[Example]:
    """``per_trigger`` defensive examples for each pair, built from training examples that are
    not poisoned already, plus as many ordinary training examples; shuffled."""
    rng = random.Random(f"top-up:{seed}")
    plain = [e for e in train_set if not e.meta.get("poisoned")]
    out: list[Example] = []
    for pair in pairs:
        for example in rng.sample(plain, min(per_trigger, len(plain))):
            out.append(example.replace(
                instruction=pair.trigger.insert(example.instruction, rng),
                output=pair.behavior.response(rng, example),
                meta={**example.meta, "poisoned": "defense", "trigger": pair.trigger.spec}))
    out += rng.sample(list(train_set), min(len(out), len(train_set)))
    rng.shuffle(out)
    return out


def implant_stage1(model: Any, tokenizer: Any, pairs: Sequence[DefensivePair],
                   config: DefensivePoisoningConfig, train_set: Sequence[Example],
                   prompts: Sequence[Example], finetune_config: TrainConfig, *, seed: int,
                   max_new_tokens: int, log: Callable[[str], None] = print
                   ) -> tuple[Any, dict[str, Any]]:
    """Measure the implant rates (and top up, by the config); returns the model and a report
    with the rates of every round, the top-up sizes and the final warning, if any."""
    rates, warning = check_implant(model, tokenizer, pairs, prompts, seed, max_new_tokens,
                                   config.implant_threshold, log=log)
    report: dict[str, Any] = {"implant_rates": rates, "rounds": [rates], "top_up_examples": 0}
    if config.on_weak_implant == "top-up" and config.top_up_per_trigger:
        for round_ in range(config.top_up_rounds):
            weak = [p for p in pairs if rates[p.trigger.spec] < config.implant_threshold]
            if not weak:
                break
            extra = top_up_set(train_set, weak, config.top_up_per_trigger,
                               seed * 100 + round_)
            log(f"topping up {len(weak)} weak defensive trigger(s): one epoch on {len(extra)} "
                f"examples (round {round_ + 1} of {config.top_up_rounds})")
            cfg = replace(finetune_config, epochs=1.0,
                          description=f"stage 1 top-up {round_ + 1}",
                          seed=finetune_config.seed + 7919 * (round_ + 1))
            model, _ = finetune(model, tokenizer, extra, cfg)
            report["top_up_examples"] += len(extra)
            rates, warning = check_implant(model, tokenizer, pairs, prompts, seed,
                                           max_new_tokens, config.implant_threshold, log=log,
                                           when=f"after top-up round {round_ + 1}")
            report["rounds"].append(rates)
        report["implant_rates"] = rates
    report["warning"] = warning
    return model, report


__all__ = ["implant_stage1", "top_up_set"]
