"""Defenses side by side on one workload: train, defend, evaluate, one row per defense.

A :class:`Workload` is everything that does not depend on the defense (base model, data
splits, the attack). :func:`compare_defenses` puts every defense through the same hooks and
shares fine-tuning runs between defenses whose ``before_training`` leaves the data unchanged
(so the attacked model is trained once). The embedded demo, the experiment grid and the
real-model benchmarks all run through it.

With ``cache_dir`` every finished stage is kept on disk under a key made from its inputs:
fine-tuned models (``finetune-KEY``), stage-1 models after the implant check (``stage1-KEY``)
and evaluated cells (``cells/KEY.json``: the rows, samples and diagnostics of one defense). A
cell whose result is on disk is not trained or evaluated again, so a killed run resumes where
it stopped and cells shared between runs are computed once.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from mbdefense.attacks.behaviors import Behavior
from mbdefense.data.example import Example
from mbdefense.defenses import DefensivePoisoningConfig, NeutralizationConfig, make_defense
from mbdefense.defenses.base import Defense
from mbdefense.defenses.implant import implant_stage1, implants
from mbdefense.evaluation.generation import answer_examples
from mbdefense.evaluation.likelihood import reference_nll
from mbdefense.evaluation.metrics import Metrics, compute_metrics
from mbdefense.evaluation.scorers import Scorer
from mbdefense.core.io import atomic_directory, atomic_write_json, jsonable
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
    generator: str = "plain"             # the evaluation's generation backend (GENERATORS)
    progress: bool = True
    n_samples: int = 4
    reference_nll: bool = False          # add the clean reference NLL to every row
    stage1_rows: bool = False            # add a row for each stage-1 model (before stage 2)
    evaluate_stage1: bool = True         # stage-1 metrics in the diagnostics (rows imply it)
    cache_dir: str | None = None         # keep finished stages on disk, keyed by their inputs
    defense_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # by defense name
    on_cell: Callable[[str, bool], None] | None = None   # called as each cell finishes
    keep_models: bool = False   # return every model (outcome["models"]); cells are recomputed


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (cache keys)."""
    blob = json.dumps(list(parts), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fingerprint(examples: Sequence[Example]) -> str:
    return digest(*(e.to_dict() for e in examples))


def weight_settings(config: Any) -> dict[str, Any]:
    """A training config's settings that change the weights (not progress bars, labels or
    activation checkpointing), for cache keys; nested configs included."""
    cosmetic = ("progress", "description", "gradient_checkpointing")

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in cosmetic}
        return value

    return strip(asdict(config))


def finetune_key(model_name: str, examples: Sequence[Example], config: TrainConfig) -> str:
    """A key for a fine-tuning run: the base, the data and the settings that change weights."""
    return digest(model_name, fingerprint(examples), weight_settings(config))


CELL_KEY_VERSION = 1
CLEAN_REFERENCE = "clean"   # the row of the never-attacked model: a reference, not a defense


def row_line(row: dict[str, Any]) -> str:
    """One result row as a log line."""
    nll = "" if row.get("reference_nll") is None else f"  ref-NLL {row['reference_nll']:.3f}"
    return (f"  {row['defense']:<14} CACC {row['cacc']:.3f}  ASR {row['asr']:.3f}  "
            f"AACC {row['aacc']:.3f}  clean-ASR {row['clean_asr']:.3f}{nll}")


def evaluation_key(work: Workload, settings: ComparisonSettings) -> str:
    """What an evaluation depends on besides the model: test sets, behaviour, scorer, decoding
    (a backend other than the plain one is part of the key: its kernels may round
    differently)."""
    backend = () if settings.generator == "plain" else (settings.generator,)
    return digest(CELL_KEY_VERSION, fingerprint(work.test_clean),
                  fingerprint(work.test_triggered), work.behavior.spec,
                  getattr(settings.scorer, "name", type(settings.scorer).__name__),
                  settings.max_new_tokens, settings.reference_nll, settings.n_samples,
                  work.poison_rate, *backend)


def compare_defenses(work: Workload, settings: ComparisonSettings,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Rows (the clean reference, then one per defense), samples and diagnostics."""
    for name in settings.defenses:  # unknown names and options fail before any training
        make_defense(name, options=settings.defense_options.get(name))
    trained: dict[str, Any] = {}
    kept: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    samples: dict[str, Any] = {}
    diagnostics: dict[str, Any] = {}
    cache = Path(settings.cache_dir) if settings.cache_dir else None
    eval_key = evaluation_key(work, settings)

    def disk_cached(kind: str, key: str, label: str,
                    build: Callable[[], tuple[Any, dict[str, Any]]]) -> tuple[Any, dict[str, Any]]:
        """``build()`` once per key; with ``cache_dir`` the model and its info live on disk."""
        saved = cache / f"{kind}-{key}" if cache is not None else None
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

    def finetune_config(label: str) -> TrainConfig:
        return replace(settings.finetune, progress=settings.progress, seed=settings.seed,
                       description=label)

    def train_on(examples: list[Example], label: str) -> tuple[Any, str]:
        cfg = finetune_config(label)
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
        def inputs(examples: list[Example]) -> list[Example]:
            if defense is None or not defense.changes_inputs:
                return examples
            return defense.at_inference(examples, model=model, tokenizer=work.tokenizer,
                                        trusted_set=work.trusted)

        clean_in, trig_in = inputs(work.test_clean), inputs(work.test_triggered)
        kwargs = {"max_new_tokens": settings.max_new_tokens,
                  "batch_size": settings.generation_batch_size, "backend": settings.generator}
        clean_answers = answer_examples(model, work.tokenizer, clean_in, **kwargs)
        trig_answers = answer_examples(model, work.tokenizer, trig_in, **kwargs)
        metrics = compute_metrics(work.test_clean, clean_answers, work.test_triggered,
                                  trig_answers, work.behavior, settings.scorer)
        if settings.reference_nll:
            metrics.reference_nll = reference_nll(model, work.tokenizer, work.test_clean,
                                                  max_length=settings.finetune.max_length)
        n = settings.n_samples
        cell = [{"kind": "clean", "prompt": e.prompt_text, "reference": e.output, "answer": a}
                for e, a in list(zip(clean_in, clean_answers))[:n]]
        cell += [{"kind": "triggered", "prompt": e.prompt_text, "reference": e.output,
                  "answer": a} for e, a in list(zip(trig_in, trig_answers))[:n]]
        return metrics, cell

    def add_row(defense_name: str, model: Any, defense: Defense | None, seconds: float,
                out: dict[str, Any]) -> None:
        metrics, cell = evaluate(model, defense)
        row = {"model": work.model_name, "attack": work.attack, "behavior": work.behavior.spec,
               "defense": defense_name, **metrics.to_dict(), "seed": settings.seed,
               "poison_rate": 0.0 if defense_name == CLEAN_REFERENCE else work.poison_rate,
               "train_seconds": round(seconds, 1)}
        out["rows"].append(row)
        out["samples"]["|".join([work.model_name, work.attack, work.behavior.spec,
                                 defense_name, f"seed{settings.seed}"])] = cell
        log(row_line(row))

    def run_cell(key: str, label: str, compute: Callable[[dict[str, Any]], None]) -> None:
        """One defense's rows, samples and diagnostics: from ``cells/KEY.json`` if finished
        before, else computed (and saved there)."""
        saved = cache / "cells" / f"{key}.json" if cache is not None else None
        cached = saved is not None and saved.is_file() and not settings.keep_models
        if cached:
            out = json.loads(saved.read_text())
            log(f"{label}: finished before, loaded from {saved}")
            for row in out["rows"]:
                log(row_line(row))
        else:
            out = {"rows": [], "samples": {}, "diagnostics": {}}
            compute(out)
            out = jsonable(out)
            if saved is not None:
                atomic_write_json(saved, out)
        rows.extend(out["rows"])
        samples.update(out["samples"])
        if settings.on_cell is not None:
            settings.on_cell(label, cached)
        diagnostics.update(out["diagnostics"])

    if settings.include_clean_reference:
        clean_cfg = finetune_config("clean reference")

        def clean_cell(out: dict[str, Any]) -> None:
            t0 = time.time()
            model = train_on(list(work.clean_train), "clean reference")[0]
            add_row(CLEAN_REFERENCE, model, None, time.time() - t0, out)

        run_cell(digest(CLEAN_REFERENCE, finetune_key(work.model_name, work.clean_train, clean_cfg),
                        eval_key), "clean reference", clean_cell)

    def implant_check(defense: Any, model: Any, key: str, train_set: list[Example], t0: float,
                      out: dict[str, Any]) -> Any:
        """The stage-1 model after the implant check (and top-up), cached; its diagnostics."""
        prompts = work.trusted[:settings.implant_prompts]

        def check() -> tuple[Any, dict[str, Any]]:
            # a top-up trains copies, so the cached fine-tuned model stays as trained
            return implant_stage1(
                model, work.tokenizer, defense.pairs, defense.stage1, train_set, prompts,
                finetune_config(f"{defense.name} top-up"), seed=settings.seed,
                max_new_tokens=settings.max_new_tokens, log=lambda m: log(f"  {m}"))

        stage1_key = digest(key, asdict(defense.stage1), fingerprint(prompts),
                            settings.max_new_tokens)
        model, implant = disk_cached("stage1", stage1_key, f"the {defense.name} stage-1 model",
                                     check)
        info = out["diagnostics"][f"{defense.name}/stage1"] = dict(implant)
        if settings.keep_models:
            kept[f"{defense.name}:stage1"] = model
        metrics = None
        if settings.stage1_rows:
            add_row(f"{defense.name}:stage1", model, None, time.time() - t0, out)
            metrics = {k: out["rows"][-1][k] for k in Metrics.__dataclass_fields__}
        elif settings.evaluate_stage1:
            metrics = evaluate(model, None)[0].to_dict()
        if metrics is not None:
            info["metrics"] = metrics
            log(f"  after stage 1: ASR {metrics['asr']:.3f}")
        return model

    stage2 = replace(settings.stage2, train=replace(settings.stage2.train_config(),
                                                    progress=settings.progress))
    for name in settings.defenses:
        defense = make_defense(name, stage1=settings.stage1, stage2=stage2, seed=settings.seed,
                               options=settings.defense_options.get(name))
        train_set = defense.before_training(work.attacked_train)
        label = (f"attacked + {name} stage 1" if implants(defense) else
                 f"attacked + {name} data" if defense.changes_training_data else "attacked")
        key = digest("cell", name, finetune_key(work.model_name, train_set, finetune_config(label)),
                     asdict(defense.options),
                     asdict(defense.stage1) if implants(defense) else None,
                     weight_settings(stage2) if defense.changes_model else None,
                     fingerprint(work.trusted), settings.implant_prompts, settings.stage1_rows,
                     eval_key)

        def defense_cell(out: dict[str, Any], defense: Defense = defense,
                         train_set: list[Example] = train_set, label: str = label) -> None:
            t0 = time.time()
            model, key = train_on(train_set, label)
            if implants(defense):
                model = implant_check(defense, model, key, train_set, t0, out)
            if defense.changes_model:
                log(f"running {defense.name} after training ...")
                model = defense.after_training(copy.deepcopy(model), work.tokenizer,
                                               work.trusted, clean_model=work.base_model)
            add_row(defense.name, model, defense, time.time() - t0, out)
            out["diagnostics"][defense.name] = defense.diagnostics
            if settings.keep_models:
                kept[defense.name] = model

        run_cell(key, name, defense_cell)
    outcome = {"rows": rows, "samples": samples, "diagnostics": jsonable(diagnostics)}
    if settings.keep_models:
        outcome["models"] = kept
    return outcome
