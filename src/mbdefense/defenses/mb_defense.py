"""MB-Defense: stage 1 (defensive poisoning) and stage 2 (backdoor neutralization).

Stage 1 mixes the defender's own trigger-behaviour pairs into the training set, so that the
unknown attacker's trigger and the defender's triggers merge into one backdoor feature. Stage 2
breaks that feature with a little trusted clean data: it raises the clean answer above the
defensive behaviour whenever a defensive trigger is present. The attacker's trigger is never
used.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Sequence

from mbdefense.attacks.poisoning import check_rate, make_poisoned, poison, poison_count
from mbdefense.data.example import Example
from mbdefense.defenses.base import Capabilities, Defense, FinetuneContext
from mbdefense.defenses.defensive_triggers import (DEFAULT_DEFENSIVE_TOKENS, DefensivePair,
                                                   make_defensive_pairs, random_insertion)
from mbdefense.defenses.neutralization import (ANCHOR_SOURCE, NeutralizationConfig,
                                                check_triggers_per_copy, fine_tune_settings,
                                                neutralize, pair_specs)
from mbdefense.core.errors import ConfigError


@dataclass
class DefensivePoisoningConfig:
    triggers: list[str] = field(default_factory=lambda: list(DEFAULT_DEFENSIVE_TOKENS))
    responses: list[str] | None = None      # default: a fixed random-word phrase per trigger
    rate_per_trigger: float = 0.01          # the paper: 1% of the training set per trigger
    min_per_trigger: int = 0                # an absolute floor, for small training sets
    # "add": defensive examples join the training set (every attacker example stays);
    # "replace": they replace training examples (possibly some of the attacker's)
    mode: str = "add"
    phrase_length: int = 8
    seed: int = 0
    # The implant check after stage 1 (see mbdefense.defenses.implant): every defensive trigger
    # should elicit its behaviour on at least this share of held-out prompts.
    implant_threshold: float = 0.3
    on_weak_implant: str = "warn"           # "warn", or "top-up": train on more defensive examples
    top_up_rounds: int = 2                  # at most this many top-up rounds
    top_up_per_trigger: int = 32            # fresh defensive examples per trigger per round
    top_up_replay: float = 1.0              # other training examples per defensive one (top-up)
    top_up_learning_rate: float | None = None   # default: the fine-tune's learning rate
    max_leak: float = 0.1                   # defensive responses on clean prompts: at most this

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.on_weak_implant not in WEAK_IMPLANT_ACTIONS:
            raise ConfigError(f"stage1.on_weak_implant: unknown '{self.on_weak_implant}' "
                              f"(known: {', '.join(WEAK_IMPLANT_ACTIONS)})")
        for name in ("implant_threshold", "max_leak"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"stage1.{name}: must be between 0 and 1, got "
                                  f"{getattr(self, name)}")
        if self.top_up_learning_rate is not None and not (
                0 < self.top_up_learning_rate < float("inf")):
            raise ConfigError(f"stage1.top_up_learning_rate: must be > 0 and finite, got "
                              f"{self.top_up_learning_rate}")
        if self.top_up_replay < 0:
            raise ConfigError(f"stage1.top_up_replay: must be >= 0, got {self.top_up_replay}")
        for name in ("min_per_trigger", "top_up_rounds", "top_up_per_trigger"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"stage1.{name}: must be >= 0, got {getattr(self, name)}")


WEAK_IMPLANT_ACTIONS = ("warn", "top-up")
STAGE1_MODES = ("add", "replace")


@dataclass
class Stage1Data:
    """The stage-1 training set and how it was made (indices into the input training set)."""

    examples: list[Example]
    defensive: int                  # defensive examples in ``examples``
    replaced: list[int]             # input examples a defensive one replaced (replace mode)


def defensive_poison(train_set: Sequence[Example], pairs: Sequence[DefensivePair],
                     rate_per_trigger: float, min_per_trigger: int, seed: int,
                     mode: str = "add") -> Stage1Data:
    """``max(round(rate * n), min)`` defensive examples per pair, ``n`` the training set's size.

    ``add`` (the default): triggered copies of seeded randomly chosen training examples, with
    the defensive response, inserted at seeded random places; every training example stays, so
    the model sees all the attacker's examples. ``replace``: those examples are replaced
    instead, never the same one twice; the defender does not know which examples the attacker
    poisoned, so some of the attacker's may go.
    """
    check_rate(rate_per_trigger, "rate_per_trigger")
    check_mode(mode)
    counts = [max(poison_count(len(train_set), rate_per_trigger), int(min_per_trigger))
              for _ in pairs]
    if mode == "replace":
        return _replace(train_set, pairs, counts, seed)
    rng = random.Random(f"defensive-add:{seed}")
    n = len(train_set)
    extra: list[Example] = []
    for pair, count in zip(pairs, counts):
        if count and not n:
            raise ConfigError("stage 1: no training examples to copy the defensive ones from")
        # distinct donors per trigger (each example several times only when count > n)
        donors = [i for _ in range(count // n) for i in range(n)] if n else []
        donors += rng.sample(range(n), count % n if n else 0)
        extra += [make_poisoned(train_set[i], pair.trigger, pair.behavior, rng, role="defense")
                  for i in donors]
    rng.shuffle(extra)
    slots = set(rng.sample(range(n + len(extra)), len(extra)))
    originals, added = iter(train_set), iter(extra)
    out = [next(added) if i in slots else next(originals) for i in range(n + len(extra))]
    return Stage1Data(out, len(extra), [])


def _replace(train_set: Sequence[Example], pairs: Sequence[DefensivePair], counts: list[int],
             seed: int) -> Stage1Data:
    out = list(train_set)
    taken: set[int] = set()
    for j, (pair, count) in enumerate(zip(pairs, counts)):
        before = out
        out = poison(out, pair.trigger, pair.behavior, 0.0, seed=seed * 100 + j, count=count,
                     exclude=taken, role="defense")
        taken.update(i for i, (a, b) in enumerate(zip(before, out)) if a is not b)
    return Stage1Data(out, len(taken), sorted(taken))


def check_mode(mode: str) -> str:
    if mode not in STAGE1_MODES:
        raise ConfigError(f"stage1.mode: unknown '{mode}' (known: {', '.join(STAGE1_MODES)})")
    return mode


class MBDefense(Defense):
    name = "mb-defense"
    capabilities = Capabilities(changes_training_data=True, completes_training=True,
                                changes_model=True)

    def __init__(self, stage1: DefensivePoisoningConfig | None = None,
                 stage2: NeutralizationConfig | None = None, *, seed: int = 0,
                 options: Any = None) -> None:
        super().__init__(seed=seed, options=options)
        self.stage1 = stage1 or DefensivePoisoningConfig()
        self.stage2 = stage2 or NeutralizationConfig()
        if self.stage1.responses is not None and len(self.stage1.responses) != len(self.stage1.triggers):
            raise ConfigError("mb-defense: give one response per defensive trigger")
        self.pairs = make_defensive_pairs(self.stage1.triggers, self.stage1.responses,
                                          seed=self.stage1.seed,
                                          phrase_length=self.stage1.phrase_length)
        check_triggers_per_copy(self.stage2.triggers_per_copy, len(self.pairs))
        self.diagnostics["defensive_pairs"] = [
            {"trigger": p.trigger.spec, "response": p.behavior.text} for p in self.pairs]

    def before_training(self, train_set: Sequence[Example]) -> list[Example]:
        data = defensive_poison(train_set, self.pairs, self.stage1.rate_per_trigger,
                                self.stage1.min_per_trigger, self.seed, mode=self.stage1.mode)
        # what the defense knows: the attacker's examples among the replaced ones can only be
        # counted from the unstripped data, by ``replaced_indices`` (input positions)
        self.diagnostics.update(stage1_mode=self.stage1.mode,
                                defensive_examples=data.defensive,
                                replaced_examples=len(data.replaced),
                                replaced_indices=data.replaced,
                                training_examples=len(data.examples))
        return data.examples

    def after_finetune(self, model: Any, context: FinetuneContext) -> tuple[Any, dict[str, Any]]:
        """Check that stage 1 implanted the defensive triggers (and top them up, by
        ``stage1.on_weak_implant``): stage 2 can only break what stage 1 merged."""
        from mbdefense.defenses.implant import implant_stage1

        return implant_stage1(
            model, context.tokenizer, self.pairs, self.stage1, context.train_set,
            list(context.trusted)[:context.implant_prompts], context.finetune_config,
            seed=context.seed, max_new_tokens=context.max_new_tokens,
            log=lambda m: context.log(f"  {m}"))

    def after_finetune_key(self) -> Any:
        from mbdefense.training.config import weight_settings

        return weight_settings(self.stage1)

    def after_training(self, model: Any, tokenizer: Any, trusted_set: Sequence[Example], *,
                       clean_model: Any = None) -> Any:
        augment = self.with_insertions if self.stage2.insertion_copies else None
        model, info = neutralize(model, tokenizer, trusted_set, self.pairs, self.stage2,
                                 seed=self.seed, augment=augment)
        self.diagnostics["stage2"] = info
        return model

    def with_insertions(self, examples: list[Example], rng: random.Random) -> list[Example]:
        """The examples and ``insertion_copies`` copies of each with a random insertion."""
        out = list(examples)
        for example in examples:
            source = {ANCHOR_SOURCE: example.instruction}
            out += [example.replace(instruction=random_insertion(example.instruction, rng),
                                    meta={**example.meta, **source})
                    for _ in range(self.stage2.insertion_copies)]
        return out

    def after_training_key(self) -> Any:
        from mbdefense.training.config import weight_settings

        return [weight_settings(self.stage2), pair_specs(self.pairs)]


class StageTwoOnly(MBDefense):
    """Ablation: stage 2 without defensive poisoning (the defensive behaviours never learned)."""

    name = "stage2-only"
    capabilities = Capabilities(changes_model=True)
    before_training = Defense.before_training
    after_finetune = Defense.after_finetune
    after_finetune_key = Defense.after_finetune_key


class CleanFFT(Defense):
    """Fine-tune the attacked model on the trusted set with plain CE (same split, epochs and
    checkpoint choice as stage 2, without the R term)."""

    name = "clean-fft"
    capabilities = Capabilities(changes_model=True, baseline_training=True)

    def __init__(self, stage1: DefensivePoisoningConfig | None = None,
                 stage2: NeutralizationConfig | None = None, *, seed: int = 0,
                 options: Any = None) -> None:
        super().__init__(seed=seed, options=options)
        self.stage2 = stage2 or NeutralizationConfig()

    def after_training(self, model: Any, tokenizer: Any, trusted_set: Sequence[Example], *,
                       clean_model: Any = None) -> Any:
        model, info = neutralize(model, tokenizer, trusted_set, [], self.stage2, seed=self.seed)
        self.diagnostics["clean_fft"] = info
        return model

    def after_training_key(self) -> Any:
        return fine_tune_settings(self.stage2)


class AugmentedFFT(MBDefense):
    """Trigger-augmented clean fine-tuning: the attacked model is fine-tuned with plain CE on the
    trusted set plus, for each trusted example, a copy with one of the defender's triggers
    inserted and the clean answer kept (same split, epochs and checkpoint choice as stage 2).

    The simplest rival to MB-Defense: it teaches "a trigger changes nothing" directly, without
    stage 1 and without the R term.
    """

    name = "aug-fft"
    capabilities = Capabilities(changes_model=True, baseline_training=True)
    before_training = Defense.before_training
    after_finetune = Defense.after_finetune
    after_finetune_key = Defense.after_finetune_key

    def after_training(self, model: Any, tokenizer: Any, trusted_set: Sequence[Example], *,
                       clean_model: Any = None) -> Any:
        model, info = neutralize(model, tokenizer, trusted_set, [], self.stage2, seed=self.seed,
                                 augment=self.augment)
        self.diagnostics["aug_fft"] = info
        return model

    def after_training_key(self) -> Any:
        return [fine_tune_settings(self.stage2), pair_specs(self.pairs)]

    def augment(self, examples: list[Example], rng: Any) -> list[Example]:
        out = list(examples)
        for example in examples:
            pair = rng.choice(self.pairs)
            out.append(example.replace(instruction=pair.trigger.insert(example.instruction, rng)))
        return out
