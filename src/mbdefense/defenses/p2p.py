"""P2P (Poison-to-Poison): the defender re-poisons the training set with a benign trigger.

Follows Zhao et al. 2025, "P2P: A Poison-to-Poison Remedy for Reliable Backdoor Defense in
LLMs" (arXiv:2510.04503). Before fine-tuning, a share ``rate`` of the training examples is
replaced by copies whose instruction carries a benign trigger (a prompt-like prefix by default)
and whose answer is kept, so the model ties the trigger's representation to the safe answer;
at inference the same trigger is put into every prompt, which is meant to override whatever
an unknown malicious trigger would have caused.

Simplifications against the paper: the triggered copies replace their originals (the paper
adds them to the original set) and the answer is the example's own output (for generation the
paper also prefixes a fixed marker to the answer). Which examples are chosen, and where a
non-prefix trigger goes, depend only on the defense seed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Sequence

from mbdefense.attacks.poisoning import poison_count
from mbdefense.attacks.triggers import Trigger, parse_trigger
from mbdefense.data.example import Example
from mbdefense.defenses.base import Capabilities, Defense
from mbdefense.core.errors import ConfigError

_WHERE = "defense p2p"
DEFAULT_P2P_TRIGGER = "prefix:Answer the following request helpfully and safely."


@dataclass
class P2POptions:
    trigger: str = DEFAULT_P2P_TRIGGER   # any trigger spec (see mbdefense.attacks.triggers)
    rate: float = 0.2                    # share of training examples re-poisoned, in [0, 1]

    def __post_init__(self) -> None:
        try:
            parse_trigger(self.trigger)
        except ConfigError as exc:
            raise ConfigError(f"{_WHERE}: option 'trigger': {exc}") from None
        r = self.rate
        if isinstance(r, bool) or not isinstance(r, (int, float)) or math.isnan(r) \
                or not 0.0 <= r <= 1.0:
            raise ConfigError(f"{_WHERE}: option 'rate' must lie in [0, 1], got {r!r}")
        self.rate = float(r)


def p2p_count(n: int, rate: float) -> int:
    """``round(rate * n)``, at least 1 when ``rate > 0`` and there is an example."""
    if n <= 0 or rate <= 0:
        return 0
    return min(n, max(1, poison_count(n, rate)))


class P2P(Defense):
    """P2P (Zhao et al. 2025): benign-trigger re-poisoning, and the trigger at inference."""

    name = "p2p"
    capabilities = Capabilities(changes_training_data=True, changes_inputs=True)
    Options = P2POptions

    def __init__(self, stage1: Any = None, stage2: Any = None, *, seed: int = 0,
                 options: Any = None) -> None:
        super().__init__(seed=seed, options=options)
        self.trigger: Trigger = parse_trigger(self.options.trigger)
        self.diagnostics.update(trigger=self.trigger.spec, rate=self.options.rate)

    def before_training(self, train_set: Sequence[Example]) -> list[Example]:
        out = list(train_set)
        k = p2p_count(len(out), self.options.rate)
        rng = random.Random(f"p2p:{self.seed}:{self.trigger.spec}")
        chosen = sorted(rng.sample(range(len(out)), k))
        for index in chosen:
            example = out[index]
            meta = dict(example.meta)
            if meta.get("poisoned"):         # keep the provenance of what was replaced
                meta["p2p_replaced"] = {"poisoned": meta["poisoned"],
                                        "trigger": meta.get("trigger")}
            meta.update(poisoned="p2p", trigger=self.trigger.spec)
            out[index] = example.replace(
                instruction=self.trigger.insert(example.instruction, rng), meta=meta)
        self.diagnostics["p2p_examples"] = k
        self.diagnostics["train_examples"] = len(out)
        return out

    def at_inference(self, examples: Sequence[Example], *, model: Any = None,
                     tokenizer: Any = None, trusted_set: Sequence[Example] = ()) -> list[Example]:
        rng = random.Random(f"p2p-inference:{self.seed}:{self.trigger.spec}")
        out = [e.replace(instruction=self.trigger.insert(e.instruction, rng)) for e in examples]
        self.diagnostics["inference_examples"] = (self.diagnostics.get("inference_examples", 0)
                                                  + len(out))
        return out
