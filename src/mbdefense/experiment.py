"""One experiment: data -> attack -> defense -> train -> evaluate -> results.

Every defense goes through the same hooks; fine-tuning runs are shared between defenses whose
``before_training`` leaves the data unchanged (so the attacked model is trained once).
"""

from __future__ import annotations

import copy
import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Sequence

from mbdefense.attacks import parse_behavior, parse_trigger, poison, triggered_copies
from mbdefense.attacks.poisoning import check_rate
from mbdefense.data.example import Example
from mbdefense.data.suite import build_splits
from mbdefense.defenses import (DefensivePoisoningConfig, NeutralizationConfig, make_defense)
from mbdefense.defenses.base import Defense
from mbdefense.evaluation.generation import answer_examples
from mbdefense.evaluation.implant import implant_rates, weak_implant_warning
from mbdefense.evaluation.metrics import Metrics, compute_metrics
from mbdefense.evaluation.scorers import get_scorer
from mbdefense.modeling.base import BaseRecipe, embedded_base
from mbdefense.training.config import TrainConfig
from mbdefense.training.sft import finetune

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
    include_clean_reference: bool = True
    world: WorldConfig = field(default_factory=WorldConfig)
    base: BaseRecipe = field(default_factory=BaseRecipe)
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=2, learning_rate=3e-4, batch_size=8, description="instruction-tune"))
    stage1: DefensivePoisoningConfig = field(default_factory=lambda: DefensivePoisoningConfig(
        min_per_trigger=40))
    stage2: NeutralizationConfig = field(default_factory=lambda: NeutralizationConfig(
        train=TrainConfig(epochs=5, learning_rate=1e-4, batch_size=8, description="stage 2")))
    max_new_tokens: int = 24
    scorer: str = "exact"
    implant_prompts: int = 64
    implant_warning: float = 0.3
    progress: bool = True


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
        stage2=NeutralizationConfig(train=TrainConfig(epochs=5, learning_rate=3e-4,
                                                      batch_size=8)),
        implant_prompts=32)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ValueError(f"unknown experiment setting {key!r}")
        setattr(config, key, value)
    return config


def _fingerprint(examples: Sequence[Example]) -> str:
    blob = json.dumps([e.to_dict() for e in examples], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def versions() -> dict[str, str]:
    import torch
    import transformers

    import mbdefense

    return {"mbdefense": mbdefense.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def run_experiment(config: ExperimentConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the attack, every defense in ``config.defenses`` and the clean reference; return the
    results document (rows, config, versions, diagnostics, samples)."""
    start = time.time()
    # validate every name and number before any work
    trigger = parse_trigger(config.attack)
    behavior = parse_behavior(config.behavior)
    check_rate(config.poison_rate, "poison_rate")
    for name in config.defenses:
        make_defense(name)
    scorer = get_scorer(config.scorer)
    splits = build_splits(config.world.n_train, config.world.n_trusted, config.world.n_test,
                          config.seed)
    base_model, tokenizer, base_path = embedded_base(config.base, progress=config.progress, log=log)
    attacked_train = poison(splits.train, trigger, behavior, config.poison_rate, config.seed)
    test_clean = splits.test
    test_triggered = triggered_copies(test_clean, trigger, config.seed)
    trained: dict[str, Any] = {}

    def train_on(examples: list[Example], label: str):
        key = _fingerprint(examples)
        if key not in trained:
            t0 = time.time()
            log(f"fine-tuning the base on {len(examples)} examples ({label}) ...")
            cfg = replace(config.finetune, progress=config.progress, seed=config.seed,
                          description=label)
            model, losses = finetune(copy.deepcopy(base_model), tokenizer, examples, cfg)
            trained[key] = model
            log(f"  done in {time.time() - t0:.0f}s, final loss {losses[-1]:.3f}")
        return trained[key]

    def evaluate(model: Any, defense: Defense | None) -> tuple[Metrics, list[dict[str, str]]]:
        clean_in = defense.at_inference(test_clean) if defense else test_clean
        trig_in = defense.at_inference(test_triggered) if defense else test_triggered
        kwargs = {"max_new_tokens": config.max_new_tokens}
        clean_answers = answer_examples(model, tokenizer, clean_in, **kwargs)
        trig_answers = answer_examples(model, tokenizer, trig_in, **kwargs)
        metrics = compute_metrics(test_clean, clean_answers, test_triggered, trig_answers,
                                  behavior, scorer)
        samples = [
            {"kind": "clean", "prompt": e.prompt_text, "reference": e.output, "answer": a}
            for e, a in list(zip(test_clean, clean_answers))[:4]
        ] + [
            {"kind": "triggered", "prompt": e.prompt_text, "reference": e.output, "answer": a}
            for e, a in list(zip(test_triggered, trig_answers))[:4]
        ]
        return metrics, samples

    rows: list[dict[str, Any]] = []
    samples: dict[str, Any] = {}
    diagnostics: dict[str, Any] = {}

    def add_row(attack: str, defense_name: str, model: Any, defense: Defense | None,
                seconds: float) -> None:
        metrics, cell_samples = evaluate(model, defense)
        row = {"model": EMBEDDED_MODEL, "attack": attack, "behavior": behavior.spec,
               "defense": defense_name, **metrics.to_dict(), "seed": config.seed,
               "poison_rate": config.poison_rate if attack != "none" else 0.0,
               "train_seconds": round(seconds, 1)}
        rows.append(row)
        samples[f"{attack}|{defense_name}"] = cell_samples
        log(f"  {defense_name:<12} attack={attack:<28} CACC {row['cacc']:.3f}  "
            f"ASR {row['asr']:.3f}  AACC {row['aacc']:.3f}")

    if config.include_clean_reference:
        t0 = time.time()
        add_row("none", "none", train_on(list(splits.train), "clean reference"), None,
                time.time() - t0)

    stage2 = replace(config.stage2, train=replace(config.stage2.train_config(),
                                                  progress=config.progress))
    for name in config.defenses:
        defense = make_defense(name, stage1=config.stage1, stage2=stage2, seed=config.seed)
        t0 = time.time()
        train_set = defense.before_training(attacked_train)
        model = train_on(train_set, "attacked" if not defense.changes_training_data else
                         f"attacked + {name} stage 1")
        if defense.changes_training_data:
            rates = implant_rates(model, tokenizer, defense.pairs,
                                  splits.trusted[:config.implant_prompts],
                                  config.seed, config.max_new_tokens)
            stage1_metrics, _ = evaluate(model, None)
            diagnostics[f"{name}/stage1"] = {"implant_rates": rates,
                                             "metrics": stage1_metrics.to_dict()}
            shown = ", ".join(f"{t} {r:.2f}" for t, r in rates.items())
            log(f"  after stage 1: implant rates {shown}; ASR {stage1_metrics.asr:.3f}")
            warning = weak_implant_warning(rates, config.implant_warning)
            if warning:
                log(f"  {warning}")
        if defense.changes_model:
            log(f"running {name} after training ...")
            model = defense.after_training(copy.deepcopy(model), tokenizer, splits.trusted)
        add_row(trigger.spec, name, model, defense, time.time() - t0)
        diagnostics[name] = defense.diagnostics

    return {
        "rows": rows,
        "config": _jsonable(asdict(config)),
        "versions": versions(),
        "base_model": str(base_path),
        "diagnostics": _jsonable(diagnostics),
        "samples": samples,
        "wall_seconds": round(time.time() - start, 1),
    }


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
