"""The defense-independent inputs of one experiment: the base model and the data sets.

:func:`load_base` loads any model a spec names (the embedded base included), :func:`open_base`
resolves it and loads it at first use; :func:`build_workload` makes an :class:`Workload` from
the embedded suite, the user's files or a BackdoorLLM folder, with the base loaded only when a
stage needs it (a run whose cells are all cached never loads it). The trusted set is checked
disjoint from the training and test sets, and a defense never sees the attack's tags:
:func:`strip_attack_labels` removes them where data enters a defense.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from mbdefense.attacks import parse_behavior, parse_trigger, poison, triggered_copies
from mbdefense.attacks.behaviors import Behavior
from mbdefense.attacks.poisoning import check_rate
from mbdefense.core.errors import ConfigError
from mbdefense.data.example import Example
from mbdefense.runs.cache import model_identity
from mbdefense.runs.spec import Experiment, ModelSpec, Settings


@dataclass
class Workload:
    """The defense-independent inputs of a comparison."""

    model_name: str                 # the rows' model name
    model_identity: str             # what the base is, for cache keys
    base: Callable[[], tuple[Any, Any]]   # (model, tokenizer): loaded at the first call, kept
    clean_train: list[Example]      # the training set without the attack (clean reference)
    attacked_train: list[Example]   # the training set the defender received
    trusted: list[Example]          # the defender's small trusted clean set
    test_clean: list[Example]
    test_triggered: list[Example]
    attack: str                     # trigger spec, for the rows
    behavior: Behavior
    poison_rate: float

    @property
    def base_model(self) -> Any:
        return self.base()[0]

    @property
    def tokenizer(self) -> Any:
        return self.base()[1]


ATTACK_TAGS = ("poisoned", "trigger", "behavior", "clean_output")


def strip_attack_labels(examples: Sequence[Example]) -> list[Example]:
    """The examples as a defender receives them: without the attack's ground-truth tags."""
    out = []
    for e in examples:
        if any(tag in e.meta for tag in ATTACK_TAGS):
            e = e.replace(meta={k: v for k, v in e.meta.items() if k not in ATTACK_TAGS})
        out.append(e)
    return out


def open_base(model: ModelSpec, settings: Settings, *, progress: bool = True,
              log: Callable[[str], None] = print) -> tuple[Callable[[], tuple[Any, Any]], str]:
    """(a call that gives the base model and tokenizer, their identity for cache keys) for any
    model a spec can name. A named model (registry, folder, ``.gguf``, hub id) is resolved now
    (a missing one is an error here) and loaded at the first call, then kept; the embedded
    base, small and needed for its identity, is loaded now."""
    if model.is_embedded:
        from mbdefense.runs.embedded import embedded_base
        from mbdefense.training.runtime import default_device

        base, tokenizer, path = embedded_base(settings.base, progress=progress, log=log)
        if model.dtype not in (None, "auto"):
            import torch

            base = base.to(getattr(torch, model.dtype))
        base = base.to(default_device())
        return lambda: (base, tokenizer), f"embedded:{path.name}"
    from mbdefense.modeling.loading import load_model
    from mbdefense.modeling.registry import resolve_model

    source = resolve_model(model.name)
    path = str(source.path) if source.kind != "hub" else None
    if source.gguf_file:
        path = f"{source.path}/{source.gguf_file}"

    @functools.cache
    def load() -> tuple[Any, Any]:
        return load_model(model.name, dtype=model.dtype,
                          trust_remote_code=model.trust_remote_code,
                          chat_template=model.chat_template, progress=progress, log=log)

    return load, model_identity(model.name, path)


def load_base(model: ModelSpec, settings: Settings, *, progress: bool = True,
              log: Callable[[str], None] = print) -> tuple[Any, Any, str]:
    """(model, tokenizer, identity) for any model a spec can name, loaded now."""
    base, identity = open_base(model, settings, progress=progress, log=log)
    return (*base(), identity)


def _sample(examples: list[Example], n: int, seed: int, what: str) -> list[Example]:
    """At most ``n`` of the examples (0: all), drawn by seed."""
    if n == 0 or n >= len(examples):
        return list(examples)
    return random.Random(f"{what}:{seed}").sample(examples, n)


def _file_sets(experiment: Experiment) -> tuple[list[Example], list[Example], list[Example]]:
    """Train, trusted and evaluation sets from files (the evaluation set is the test file, or
    the validation file for ``evaluation.split: validation``); without a trusted file, the
    trusted set is carved out of the training data (disjoint by construction)."""
    from mbdefense.data import load_eval_examples, load_examples
    from mbdefense.data.splits import check_disjoint

    data, seed = experiment.settings.data, experiment.seed
    on_validation = experiment.settings.evaluation.split == "validation"
    if on_validation and data.validation is None:
        raise ConfigError("evaluation.split: validation needs data.validation (a file of "
                          "prompts disjoint from the test file)")
    train = strip_attack_labels(load_examples(data.train))
    test = load_eval_examples(data.test)
    validation = load_eval_examples(data.validation) if data.validation is not None else []
    if data.trusted is not None:
        trusted = _sample(strip_attack_labels(load_examples(data.trusted)), data.n_trusted,
                          seed, "n_trusted")
    else:
        if data.n_trusted >= len(train):
            raise ConfigError(f"data.n_trusted: {data.n_trusted} trusted examples cannot be "
                              f"carved out of {len(train)} in {data.train}")
        picked = set(random.Random(f"carve-trusted:{seed}").sample(range(len(train)),
                                                                  data.n_trusted))
        trusted = [e for i, e in enumerate(train) if i in picked]
        train = [e for i, e in enumerate(train) if i not in picked]
    sets = {"train": train, "trusted": trusted, "test": test}
    if validation:
        sets["validation"] = validation
    check_disjoint(sets)
    evaluated = (_sample(validation, data.n_validation or data.n_test, seed, "n_validation")
                 if on_validation else _sample(test, data.n_test, seed, "n_test"))
    return _sample(train, data.n_train, seed, "n_train"), trusted, evaluated


def build_data(experiment: Experiment) -> dict[str, Any]:
    """The data sets of ``experiment`` (no model): clean and attacked training sets, trusted,
    clean and triggered test sets, the trigger spec and the behaviour."""
    data, seed, rate = experiment.settings.data, experiment.seed, experiment.poison_rate
    if data.kind == "backdoorllm":
        from mbdefense.data.backdoorllm import load_backdoorllm

        n_poison = round(rate * data.n_train)
        loaded = load_backdoorllm(data.backdoorllm, experiment.behavior, experiment.attack,
                                  n_clean=data.n_train - n_poison, n_poison=n_poison,
                                  n_trusted=data.n_trusted, n_test=data.n_test, seed=seed,
                                  split=experiment.settings.evaluation.split)
        return dict(clean_train=loaded.clean_train, attacked_train=loaded.attacked_train,
                    trusted=loaded.trusted, test_clean=loaded.test_clean,
                    test_triggered=loaded.test_triggered, attack=loaded.trigger,
                    behavior=parse_behavior(loaded.behavior))
    trigger = parse_trigger(experiment.attack)
    behavior = parse_behavior(experiment.behavior)
    check_rate(rate, "poison_rate")
    if data.kind == "files":
        train, trusted, test = _file_sets(experiment)
    else:
        from mbdefense.data.suite import build_splits

        on_validation = experiment.settings.evaluation.split == "validation"
        splits = build_splits(data.n_train, data.n_trusted, data.n_test, seed,
                              n_validation=(data.n_validation or data.n_test) if on_validation
                              else 0)
        train, trusted = list(splits.train), list(splits.trusted)
        test = list(splits.validation if on_validation else splits.test)
    return dict(clean_train=train, attacked_train=poison(train, trigger, behavior, rate, seed),
                trusted=trusted, test_clean=test,
                test_triggered=triggered_copies(test, trigger, seed), attack=trigger.spec,
                behavior=behavior)


def build_workload(experiment: Experiment, log: Callable[[str], None] = print) -> Workload:
    """Data first (bad files fail before the model is even resolved), then the base model,
    loaded when a stage first needs it."""
    sets = build_data(experiment)
    base, identity = open_base(experiment.model, experiment.settings,
                               progress=experiment.progress, log=log)
    return Workload(model_name=experiment.model.row_name, model_identity=identity, base=base,
                    poison_rate=experiment.poison_rate, **sets)
