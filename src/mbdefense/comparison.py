"""Defenses side by side on one workload: train, defend, evaluate, one row per defense.

A :class:`Workload` is everything that does not depend on the defense (base model, data
splits, the attack). :func:`compare_defenses` puts every defense through the same hooks and
shares fine-tuning runs between defenses whose ``before_training`` leaves the data unchanged
(so the attacked model is trained once). The embedded demo and the real-model benchmarks both
run through it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from mbdefense.attacks.behaviors import Behavior
from mbdefense.data.example import Example
from mbdefense.defenses import DefensivePoisoningConfig, NeutralizationConfig, make_defense
from mbdefense.defenses.base import Defense
from mbdefense.evaluation.generation import answer_examples
from mbdefense.evaluation.implant import check_implant
from mbdefense.evaluation.metrics import Metrics, compute_metrics
from mbdefense.evaluation.scorers import Scorer
from mbdefense.io_utils import jsonable
from mbdefense.training.config import TrainConfig
from mbdefense.training.sft import finetune


@dataclass
class Workload:
    """The defense-independent inputs of a comparison."""

    model_name: str
    base_model: Any
    tokenizer: Any
    clean_train: list[Example]      # the training set without the attack (clean reference)
    attacked_train: list[Example]   # the training set the defender received
    trusted: list[Example]          # the defender's small trusted clean set
    test_clean: list[Example]
    test_triggered: list[Example]
    attack: str                     # trigger spec, for the rows
    behavior: Behavior
    poison_rate: float


@dataclass
class ComparisonSettings:
    defenses: Sequence[str]
    finetune: TrainConfig
    stage1: DefensivePoisoningConfig
    stage2: NeutralizationConfig
    scorer: Scorer
    seed: int = 0
    include_clean_reference: bool = True
    max_new_tokens: int = 24
    implant_prompts: int = 64
    implant_warning: float = 0.3
    generation_batch_size: int = 64
    progress: bool = True
    n_samples: int = 4


def fingerprint(examples: Sequence[Example]) -> str:
    blob = json.dumps([e.to_dict() for e in examples], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def compare_defenses(work: Workload, settings: ComparisonSettings,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Rows (one per defense, plus the clean reference), samples and diagnostics."""
    for name in settings.defenses:
        make_defense(name)  # unknown names fail before any training
    trained: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    samples: dict[str, Any] = {}
    diagnostics: dict[str, Any] = {}

    def train_on(examples: list[Example], label: str) -> Any:
        key = fingerprint(examples)
        if key not in trained:
            t0 = time.time()
            log(f"fine-tuning the base on {len(examples)} examples ({label}) ...")
            cfg = replace(settings.finetune, progress=settings.progress, seed=settings.seed,
                          description=label)
            model, losses = finetune(copy.deepcopy(work.base_model), work.tokenizer, examples, cfg)
            trained[key] = model
            log(f"  done in {time.time() - t0:.0f}s, final loss {losses[-1]:.3f}")
        return trained[key]

    def evaluate(model: Any, defense: Defense | None) -> tuple[Metrics, list[dict[str, str]]]:
        clean_in = defense.at_inference(work.test_clean) if defense else work.test_clean
        trig_in = defense.at_inference(work.test_triggered) if defense else work.test_triggered
        kwargs = {"max_new_tokens": settings.max_new_tokens,
                  "batch_size": settings.generation_batch_size}
        clean_answers = answer_examples(model, work.tokenizer, clean_in, **kwargs)
        trig_answers = answer_examples(model, work.tokenizer, trig_in, **kwargs)
        metrics = compute_metrics(work.test_clean, clean_answers, work.test_triggered,
                                  trig_answers, work.behavior, settings.scorer)
        n = settings.n_samples
        cell = [{"kind": "clean", "prompt": e.prompt_text, "reference": e.output, "answer": a}
                for e, a in list(zip(work.test_clean, clean_answers))[:n]]
        cell += [{"kind": "triggered", "prompt": e.prompt_text, "reference": e.output,
                  "answer": a} for e, a in list(zip(work.test_triggered, trig_answers))[:n]]
        return metrics, cell

    def add_row(attack: str, defense_name: str, model: Any, defense: Defense | None,
                seconds: float) -> None:
        metrics, cell = evaluate(model, defense)
        row = {"model": work.model_name, "attack": attack, "behavior": work.behavior.spec,
               "defense": defense_name, **metrics.to_dict(), "seed": settings.seed,
               "poison_rate": work.poison_rate if attack != "none" else 0.0,
               "train_seconds": round(seconds, 1)}
        rows.append(row)
        samples[f"{attack}|{defense_name}"] = cell
        log(f"  {defense_name:<12} attack={attack:<28} CACC {row['cacc']:.3f}  "
            f"ASR {row['asr']:.3f}  AACC {row['aacc']:.3f}  clean-ASR {row['clean_asr']:.3f}")

    if settings.include_clean_reference:
        t0 = time.time()
        add_row("none", "none", train_on(list(work.clean_train), "clean reference"), None,
                time.time() - t0)

    stage2 = replace(settings.stage2, train=replace(settings.stage2.train_config(),
                                                    progress=settings.progress))
    for name in settings.defenses:
        defense = make_defense(name, stage1=settings.stage1, stage2=stage2, seed=settings.seed)
        t0 = time.time()
        train_set = defense.before_training(work.attacked_train)
        model = train_on(train_set, "attacked" if not defense.changes_training_data else
                         f"attacked + {name} stage 1")
        if defense.changes_training_data:
            rates, _ = check_implant(model, work.tokenizer, defense.pairs,
                                     work.trusted[:settings.implant_prompts], settings.seed,
                                     settings.max_new_tokens, settings.implant_warning,
                                     log=lambda m: log(f"  {m}"))
            stage1_metrics, _ = evaluate(model, None)
            diagnostics[f"{name}/stage1"] = {"implant_rates": rates,
                                             "metrics": stage1_metrics.to_dict()}
            log(f"  after stage 1: ASR {stage1_metrics.asr:.3f}")
        if defense.changes_model:
            log(f"running {name} after training ...")
            model = defense.after_training(copy.deepcopy(model), work.tokenizer, work.trusted)
        add_row(work.attack, name, model, defense, time.time() - t0)
        diagnostics[name] = defense.diagnostics
    return {"rows": rows, "samples": samples, "diagnostics": jsonable(diagnostics)}
