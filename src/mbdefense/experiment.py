"""One experiment on the embedded world: suite data -> attack -> defenses -> results.

The embedded base and the bundled suite make the workload; :mod:`mbdefense.comparison` puts
every defense through the same hooks.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from mbdefense.attacks import parse_behavior, parse_trigger, poison, triggered_copies
from mbdefense.attacks.poisoning import check_rate
from mbdefense.comparison import ComparisonSettings, Workload, compare_defenses
from mbdefense.data.suite import build_splits
from mbdefense.defenses import DefensivePoisoningConfig, NeutralizationConfig, make_defense
from mbdefense.core.errors import ConfigError
from mbdefense.evaluation.generation import check_backend
from mbdefense.evaluation.scorers import get_scorer
from mbdefense.core.io import jsonable
from mbdefense.modeling.base import BaseRecipe, embedded_base
from mbdefense.training.config import TrainConfig

EMBEDDED_MODEL = "embedded-tiny-llama"


@dataclass
class WorldConfig:
    """Sizes of the bundled suite's splits (the defender's trusted set included)."""

    n_train: int = 2000
    n_trusted: int = 128
    n_test: int = 338


@dataclass
class ExperimentConfig:
    attack: str = "badnet"
    behavior: str = "refusal"
    poison_rate: float = 0.2
    seed: int = 0
    defenses: list[str] = field(default_factory=lambda: ["none", "clean-fft", "mb-defense"])
    defense_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # by defense name
    include_clean_reference: bool = True
    world: WorldConfig = field(default_factory=WorldConfig)
    base: BaseRecipe = field(default_factory=BaseRecipe)
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=2, learning_rate=3e-4, batch_size=8, description="instruction-tune"))
    stage1: DefensivePoisoningConfig = field(default_factory=lambda: DefensivePoisoningConfig(
        min_per_trigger=40))
    # margin 5 (per-token nats) chosen by measurement over every trigger kind: without it the
    # syntactic and style backdoors survive stage 2 (docs/results.md)
    stage2: NeutralizationConfig = field(default_factory=lambda: NeutralizationConfig(
        margin=5.0, triggers_per_step="all",
        train=TrainConfig(epochs=5, learning_rate=1e-4, batch_size=8, description="stage 2")))
    max_new_tokens: int = 24
    generator: str = "plain"         # evaluation backend: "plain" (transformers) or "vllm"
    scorer: str = "exact"
    implant_prompts: int = 64
    progress: bool = True
    cache_dir: str | None = None     # keep finished stages here, keyed by their inputs
    model_name: str = EMBEDDED_MODEL  # the rows' model label (part of the cache keys)


def smoke_config(**overrides: Any) -> ExperimentConfig:
    """A minute-long version of the demo: a 2-layer, 128-wide model on 600 training examples.

    Too small for good clean accuracy; meant for smoke tests of an installation and for the
    test suite. The backdoor is still learned and removed.
    """
    from mbdefense.modeling.embedded import TinyModelConfig

    config = ExperimentConfig(
        world=WorldConfig(n_train=600, n_trusted=64, n_test=104),
        base=BaseRecipe(shape=TinyModelConfig(vocab_size=768, hidden_size=128, num_layers=2,
                                              num_heads=4, intermediate_size=384),
                        n_per_pool=1500, n_pools=1,
                        train=TrainConfig(epochs=2, learning_rate=1e-3, batch_size=8)),
        finetune=TrainConfig(epochs=2, learning_rate=1e-3, batch_size=8),
        stage1=DefensivePoisoningConfig(triggers=["mn", "bb"], min_per_trigger=30),
        stage2=NeutralizationConfig(margin=0.0, triggers_per_step="all",
                                    train=TrainConfig(epochs=5, learning_rate=3e-4,
                                                      batch_size=8)),
        implant_prompts=32)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ValueError(f"unknown experiment setting {key!r}")
        setattr(config, key, value)
    return config


def versions() -> dict[str, str]:
    import torch
    import transformers

    import mbdefense

    return {"mbdefense": mbdefense.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def run_experiment(config: ExperimentConfig, log: Callable[[str], None] = print,
                   on_cell: Callable[[str, bool], None] | None = None,
                   keep_models: bool = False) -> dict[str, Any]:
    """Run the attack, every defense in ``config.defenses`` and the clean reference; return the
    results document (rows, config, versions, diagnostics, samples). ``on_cell(label,
    cached)`` is called as each row's cell finishes (progress). With ``keep_models`` the
    document also holds ``models`` (by defense; stage-1 models as ``NAME:stage1``) and the
    ``workload`` (not JSON: for analyses)."""
    start = time.time()
    # validate every name and number before any work
    trigger = parse_trigger(config.attack)
    behavior = parse_behavior(config.behavior)
    if behavior.kind == "jailbreak":
        raise ConfigError("behavior: jailbreak needs harmful requests with compliant answers, "
                          "which the embedded suite does not have; poison your own data with "
                          "`mbdefense poison --behavior jailbreak --source FILE`")
    check_rate(config.poison_rate, "poison_rate")
    check_backend(config.generator)
    for name in config.defenses:
        make_defense(name, options=config.defense_options.get(name))
    scorer = get_scorer(config.scorer)
    splits = build_splits(config.world.n_train, config.world.n_trusted, config.world.n_test,
                          config.seed)
    base_model, tokenizer, base_path = embedded_base(config.base, progress=config.progress, log=log)
    work = Workload(
        model_name=config.model_name, base_model=base_model, tokenizer=tokenizer,
        clean_train=list(splits.train),
        attacked_train=poison(splits.train, trigger, behavior, config.poison_rate, config.seed),
        trusted=list(splits.trusted), test_clean=list(splits.test),
        test_triggered=triggered_copies(splits.test, trigger, config.seed),
        attack=trigger.spec, behavior=behavior, poison_rate=config.poison_rate)
    settings = ComparisonSettings(
        defenses=config.defenses, finetune=config.finetune, stage1=config.stage1,
        stage2=config.stage2, scorer=scorer, seed=config.seed,
        include_clean_reference=config.include_clean_reference,
        max_new_tokens=config.max_new_tokens, implant_prompts=config.implant_prompts,
        generator=config.generator,
        progress=config.progress, cache_dir=config.cache_dir,
        defense_options=config.defense_options, on_cell=on_cell, keep_models=keep_models)
    outcome = compare_defenses(work, settings, log=log)
    extra = {"models": outcome["models"], "workload": work} if keep_models else {}
    return {
        **extra,
        "rows": outcome["rows"],
        "config": jsonable(asdict(config)),
        "versions": versions(),
        "base_model": str(base_path),
        "diagnostics": outcome["diagnostics"],
        "samples": outcome["samples"],
        "wall_seconds": round(time.time() - start, 1),
    }

