"""`defend`: a user's own model and data through a defense, to a saved defended model."""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from mbdefense.core.errors import ConfigError
from mbdefense.modeling.loading import load_model


@dataclass
class DefendOptions:
    model: str
    data: str
    trusted: str
    out: str
    defense: str = "mb-defense"
    n_trusted: int = 128
    epochs: float = 3.0
    lr: float = 2e-5
    stage2_epochs: float = 4.0
    stage2_lr: float = 5e-5
    lam: float = 1.0
    margin: float = 5.0
    reduction: str = "mean"
    triggers_per_step: str = "one"
    batch_size: int = 8
    max_length: int = 1024
    lora: bool = False
    precision: str = "auto"
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    seed: int = 0
    progress: bool = True
    implant_prompts: int = 32
    implant_threshold: float = 0.3
    on_weak_implant: str = "warn"
    min_per_trigger: int = 0
    dtype: str | None = None


def defend(options: DefendOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    from mbdefense.data import load_examples
    from mbdefense.defenses import DefensivePoisoningConfig, NeutralizationConfig, make_defense
    from mbdefense.defenses.implant import implant_stage1, implants
    from mbdefense.core.io import atomic_directory, jsonable
    from mbdefense.training.config import LoraSettings, TrainConfig
    from mbdefense.training.runtime import is_main_process
    from mbdefense.training.sft import finetune

    start = time.time()
    lora = LoraSettings() if options.lora else None
    speed = {"precision": options.precision,
             "gradient_checkpointing": options.gradient_checkpointing}
    stage2 = NeutralizationConfig(lam=options.lam, reduction=options.reduction,
                                  margin=options.margin,
                                  triggers_per_step=options.triggers_per_step, train=TrainConfig(
        epochs=options.stage2_epochs, learning_rate=options.stage2_lr,
        batch_size=options.batch_size, max_length=options.max_length, lora=lora,
        seed=options.seed, progress=options.progress, description="stage 2", **speed))
    stage1 = DefensivePoisoningConfig(min_per_trigger=options.min_per_trigger,
                                      implant_threshold=options.implant_threshold,
                                      on_weak_implant=options.on_weak_implant)
    defense = make_defense(options.defense, stage1=stage1, stage2=stage2, seed=options.seed)
    train_set = load_examples(options.data)
    trusted = load_examples(options.trusted)
    if len(trusted) > options.n_trusted:
        trusted = random.Random(f"trusted:{options.seed}").sample(trusted, options.n_trusted)
    if defense.changes_model and len(trusted) < 2:
        raise ConfigError("trusted: need at least 2 trusted examples")
    model, tokenizer = load_model(options.model, dtype=options.dtype,
                                  trust_remote_code=options.trust_remote_code,
                                  progress=options.progress, log=log)
    clean_model = copy.deepcopy(model) if defense.needs_clean_model else None
    train_set = defense.before_training(train_set)
    log(f"fine-tuning on {len(train_set)} examples ...")
    finetune_config = TrainConfig(
        epochs=options.epochs, learning_rate=options.lr, batch_size=options.batch_size,
        max_length=options.max_length, lora=lora, seed=options.seed, progress=options.progress,
        **speed)
    model, losses = finetune(model, tokenizer, train_set, finetune_config)
    summary: dict[str, Any] = {"options": asdict(options), "train_examples": len(train_set),
                               "final_train_loss": losses[-1] if losses else None}
    if implants(defense):
        model, implant = implant_stage1(
            model, tokenizer, defense.pairs, defense.stage1, train_set,
            trusted[:options.implant_prompts], finetune_config, seed=options.seed,
            max_new_tokens=32, log=log)
        summary["implant_rates"] = implant["implant_rates"]
        summary["implant"] = implant
        if implant["warning"]:
            summary["warnings"] = [implant["warning"]]
    model = defense.after_training(model, tokenizer, trusted, clean_model=clean_model)
    del clean_model
    if defense.changes_inputs:
        summary.setdefault("warnings", []).append(
            f"{defense.name} also rewrites prompts at inference: the saved model alone is not "
            f"the whole defense (see the diagnostics)")
    summary["diagnostics"] = jsonable(defense.diagnostics)
    summary["seconds"] = round(time.time() - start, 1)
    if not is_main_process():   # under `accelerate launch` the first process saves
        return summary
    out = Path(options.out)
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
        (tmp / "defense.json").write_text(json.dumps(summary, indent=2))
    summary["model_dir"] = str(out / "model")
    return summary
