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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from mbdefense.attacks.behaviors import Behavior
from mbdefense.data.example import Example
from mbdefense.defenses import DefensivePoisoningConfig, NeutralizationConfig, make_defense
from mbdefense.defenses.base import Defense
from mbdefense.defenses.implant import implant_stage1
from mbdefense.evaluation.generation import answer_examples
from mbdefense.evaluation.likelihood import reference_nll
from mbdefense.evaluation.metrics import Metrics, compute_metrics
from mbdefense.evaluation.scorers import Scorer
from mbdefense.io_utils import atomic_directory, jsonable
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
    generation_batch_size: int = 64
    progress: bool = True
    n_samples: int = 4
    reference_nll: bool = False          # add the clean reference NLL to every row
    stage1_rows: bool = False            # add a row for each stage-1 model (before stage 2)
    evaluate_stage1: bool = True         # stage-1 metrics in the diagnostics (rows imply it)
    cache_dir: str | None = None         # keep fine-tuned models on disk, keyed by their inputs


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (cache keys)."""
    blob = json.dumps(list(parts), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fingerprint(examples: Sequence[Example]) -> str:
    return digest(*(e.to_dict() for e in examples))


def finetune_key(model_name: str, examples: Sequence[Example], config: TrainConfig) -> str:
    """A key for a fine-tuning run: the base, the data and the settings that change weights."""
    settings = {k: v for k, v in asdict(config).items()
                if k not in ("progress", "description", "gradient_checkpointing")}
    return digest(model_name, fingerprint(examples), settings)


def compare_defenses(work: Workload, settings: ComparisonSettings,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Rows (one per defense, plus the clean reference), samples and diagnostics."""
    for name in settings.defenses:
        make_defense(name)  # unknown names fail before any training
    trained: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    samples: dict[str, Any] = {}
    diagnostics: dict[str, Any] = {}

    def disk_cached(kind: str, key: str, label: str,
                    build: Callable[[], tuple[Any, dict[str, Any]]]) -> tuple[Any, dict[str, Any]]:
        """``build()`` once per key; with ``cache_dir`` the model and its info live on disk."""
        saved = Path(settings.cache_dir) / f"{kind}-{key}" if settings.cache_dir else None
        if saved is not None and (saved / "info.json").is_file():
            log(f"loading {label} from {saved}")
            like = next(work.base_model.parameters())
            model = type(work.base_model).from_pretrained(saved, dtype=like.dtype).to(like.device)
            return model, json.loads((saved / "info.json").read_text())
        model, info = build()
        if saved is not None:
            with atomic_directory(saved) as tmp:
                model.save_pretrained(tmp)
                (tmp / "info.json").write_text(json.dumps(jsonable(info), indent=1))
        return model, info

    def train_on(examples: list[Example], label: str) -> tuple[Any, str]:
        cfg = replace(settings.finetune, progress=settings.progress, seed=settings.seed,
                      description=label)
        key = finetune_key(work.model_name, examples, cfg)

        def build() -> tuple[Any, dict[str, Any]]:
            t0 = time.time()
            log(f"fine-tuning the base on {len(examples)} examples ({label}) ...")
            model, losses = finetune(copy.deepcopy(work.base_model), work.tokenizer, examples,
                                     cfg)
            log(f"  done in {time.time() - t0:.0f}s, final loss {losses[-1]:.3f}")
            return model, {"seconds": round(time.time() - t0, 1), "final_loss": losses[-1]}

        if key not in trained:
            trained[key] = disk_cached("finetune", key, f"the fine-tuned model ({label})",
                                       build)[0]
        return trained[key], key

    def evaluate(model: Any, defense: Defense | None) -> tuple[Metrics, list[dict[str, str]]]:
        clean_in = defense.at_inference(work.test_clean) if defense else work.test_clean
        trig_in = defense.at_inference(work.test_triggered) if defense else work.test_triggered
        kwargs = {"max_new_tokens": settings.max_new_tokens,
                  "batch_size": settings.generation_batch_size}
        clean_answers = answer_examples(model, work.tokenizer, clean_in, **kwargs)
        trig_answers = answer_examples(model, work.tokenizer, trig_in, **kwargs)
        metrics = compute_metrics(work.test_clean, clean_answers, work.test_triggered,
                                  trig_answers, work.behavior, settings.scorer)
        if settings.reference_nll:
            metrics.reference_nll = reference_nll(model, work.tokenizer, work.test_clean,
                                                  max_length=settings.finetune.max_length)
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
        nll = "" if row["reference_nll"] is None else f"  ref-NLL {row['reference_nll']:.3f}"
        log(f"  {defense_name:<12} attack={attack:<28} CACC {row['cacc']:.3f}  "
            f"ASR {row['asr']:.3f}  AACC {row['aacc']:.3f}  clean-ASR {row['clean_asr']:.3f}"
            f"{nll}")

    if settings.include_clean_reference:
        t0 = time.time()
        add_row("none", "none", train_on(list(work.clean_train), "clean reference")[0], None,
                time.time() - t0)

    stage2 = replace(settings.stage2, train=replace(settings.stage2.train_config(),
                                                    progress=settings.progress))
    for name in settings.defenses:
        defense = make_defense(name, stage1=settings.stage1, stage2=stage2, seed=settings.seed)
        t0 = time.time()
        train_set = defense.before_training(work.attacked_train)
        model, key = train_on(train_set, "attacked" if not defense.changes_training_data else
                              f"attacked + {name} stage 1")
        if defense.changes_training_data:
            prompts = work.trusted[:settings.implant_prompts]

            def check(model: Any = model) -> tuple[Any, dict[str, Any]]:
                # a top-up trains copies, so the cached fine-tuned model stays as trained
                return implant_stage1(
                    model, work.tokenizer, defense.pairs, defense.stage1, train_set, prompts,
                    replace(settings.finetune, progress=settings.progress, seed=settings.seed),
                    seed=settings.seed, max_new_tokens=settings.max_new_tokens,
                    log=lambda m: log(f"  {m}"))

            stage1_key = digest(key, asdict(defense.stage1), fingerprint(prompts),
                                settings.max_new_tokens)
            model, implant = disk_cached("stage1", stage1_key, f"the {name} stage-1 model",
                                         check)
            diagnostics[f"{name}/stage1"] = dict(implant)
            stage1_metrics = None
            if settings.stage1_rows:
                add_row(work.attack, f"{name}:stage1", model, None, time.time() - t0)
                stage1_metrics = {k: rows[-1][k] for k in Metrics.__dataclass_fields__}
            elif settings.evaluate_stage1:
                stage1_metrics = evaluate(model, None)[0].to_dict()
            if stage1_metrics is not None:
                diagnostics[f"{name}/stage1"]["metrics"] = stage1_metrics
                log(f"  after stage 1: ASR {stage1_metrics['asr']:.3f}")
        if defense.changes_model:
            log(f"running {name} after training ...")
            model = defense.after_training(copy.deepcopy(model), work.tokenizer, work.trusted)
        add_row(work.attack, name, model, defense, time.time() - t0)
        diagnostics[name] = defense.diagnostics
    return {"rows": rows, "samples": samples, "diagnostics": jsonable(diagnostics)}
