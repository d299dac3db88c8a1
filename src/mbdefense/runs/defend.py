"""``mbdefense defend`` and ``mbdefense eval``: a user's model and data through the lifecycle.

``defend`` fine-tunes the model on the user's (possibly poisoned) data with a defense and
saves the defended model; ``eval`` measures CACC, ASR and AACC of any saved model. Both take
their settings from the ``pretrained`` preset (or the embedded one for ``embedded``), changed
by the command's options, which are generated from the same dataclasses
(:data:`DEFEND_OPTIONS`).
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path
from typing import Any, Callable

from mbdefense.core.errors import ConfigError
from mbdefense.runs.spec import ModelSpec, Settings

#: ``defend``'s tuning options: (flag, the settings paths it sets, help). Defaults and types
#: come from the preset (one place for each default).
DEFEND_OPTIONS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("--epochs", ("finetune.epochs",), "fine-tuning epochs"),
    ("--lr", ("finetune.learning_rate",), "fine-tuning learning rate"),
    ("--batch-size", ("finetune.batch_size", "stage2.train.batch_size"), "batch size"),
    ("--max-length", ("finetune.max_length", "stage2.train.max_length"),
     "longest sequence in tokens"),
    ("--n-trusted", ("data.n_trusted",), "trusted examples used (the paper: 128)"),
    ("--stage2-epochs", ("stage2.train.epochs",), "stage-2 epochs"),
    ("--stage2-lr", ("stage2.train.learning_rate",), "stage-2 learning rate"),
    ("--lam", ("stage2.lam",), "weight of the R term"),
    ("--margin", ("stage2.margin",), "stage-2 margin in R, nats per token"),
    ("--r-tokens", ("stage2.r_tokens",), "R on each answer's first this many tokens (0: every "
                                         "token, the paper)"),
    ("--triggered-ce", ("stage2.triggered_ce",), "weight of the clean answer's CE under a "
                                                 "defensive trigger in stage 2 (0: the paper)"),
    ("--repair-epochs", ("stage2.repair_epochs",), "epochs of stage 2's repair phase after the "
                                                   "break (0: none)"),
    ("--repair-weight", ("stage2.repair_weight",), "weight of the clean answer's CE under a "
                                                   "defensive trigger in the repair phase"),
    ("--insertion-copies", ("stage2.insertion_copies",), "per trusted example, copies with a "
                                                          "random insertion and the clean answer "
                                                          "kept (0: the paper)"),
    ("--anchor", ("stage2.anchor",), "weight of the KL to the stage-1 model on the clean "
                                     "answers in stage 2 (0: the paper)"),
    ("--stage2-keep", ("stage2.keep",), "the stage-2 weights kept: best (the epoch with the "
                                        "lowest eval loss, the paper) or last"),
    ("--reduction", ("stage2.reduction",), "R on per-token mean or summed log-likelihoods "
                                           "(mean|sum)"),
    ("--stage2-triggers", ("stage2.triggers_per_step",), "defensive triggers per trusted "
                                                         "example in a stage-2 step (all|one)"),
    ("--triggers-per-copy", ("stage2.triggers_per_copy",), "defensive triggers inserted at once "
                                                           "in each of stage 2's triggered copies "
                                                           "(1: the paper)"),
    ("--stage1-mode", ("stage1.mode",), "add the defensive examples to the training set, or "
                                        "replace training examples with them (add|replace)"),
    ("--min-per-trigger", ("stage1.min_per_trigger",), "at least this many defensive examples "
                                                       "per trigger"),
    ("--implant-threshold", ("stage1.implant_threshold",), "after stage 1, each defensive "
                                                           "trigger should elicit its behaviour "
                                                           "on this share of held-out prompts"),
    ("--on-weak-implant", ("stage1.on_weak_implant",), "below the threshold: warn, or top-up "
                                                       "(train on more defensive examples)"),
    ("--precision", ("finetune.precision", "stage2.train.precision"),
     "auto (bf16 autocast on a bf16 GPU, else fp32), fp32 or bf16 (autocast on a GPU or CPU)"),
)


def get_path(settings: Any, path: str) -> Any:
    value = settings
    for part in path.split("."):
        value = value.train_config() if part == "train" and value.train is None else \
            getattr(value, part)
    return value


#: The command-line flag that sets each settings path (for error messages).
FLAG_OF: dict[str, str] = {
    **{path: flag for flag, paths, _ in DEFEND_OPTIONS for path in paths},
    "generation.max_new_tokens": "--max-new-tokens", "evaluation.scorer": "--scorer",
    "data.n_test": "--n"}


def lora_values(preset: Settings, lora: Any) -> dict[str, Any]:
    """``defend --lora``'s settings: instruction tuning through ``lora``, and stage 2 too
    where the preset trains every weight there (a preset's own stage-2 adapters stay)."""
    values = {"finetune.lora": dataclasses.asdict(lora)}
    if preset.stage2.train_config().lora is None:
        values["stage2.train.lora"] = dataclasses.asdict(lora)
    return values


def settings_with(base: Settings, values: dict[str, Any]) -> Settings:
    """``base`` with dotted paths set (``{"stage2.train.epochs": 2}``), checked like a config;
    an error names the flag that set the value (``--lr (finetune.learning_rate): ...``)."""
    try:
        return _settings_with(base, values)
    except ConfigError as exc:
        message = str(exc)
        for path, flag in FLAG_OF.items():
            prefix = f"options: {path}:"
            if message.startswith(prefix) and path in values:
                raise ConfigError(f"{flag} ({path}): {message[len(prefix):].strip()}") from None
        raise


def _settings_with(base: Settings, values: dict[str, Any]) -> Settings:
    from mbdefense.runs.config_file import Where, merge

    nested: dict[str, Any] = {}
    for path, value in values.items():
        node = nested
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    if "stage2" in nested and "train" in nested["stage2"] and base.stage2.train is None:
        base.stage2.train = base.stage2.train_config()
    return merge(base, nested, [], Settings, Where("options"))


def preset_settings(model: ModelSpec) -> Settings:
    from mbdefense.runs.presets import preset_for

    settings = preset_for(model)
    if settings.stage2.train is None:
        settings.stage2.train = settings.stage2.train_config()
    return settings


def defend(model: ModelSpec, settings: Settings, *, data: str, trusted: str, out: str | Path,
           defense_name: str = "mb-defense", seed: int = 0, force: bool = False,
           progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``model`` on ``data`` with the defense; save the defended model and
    ``defense.json`` under ``out``. Returns the summary."""
    from mbdefense.core.io import atomic_directory, atomic_write_json, jsonable
    from mbdefense.data import load_examples
    from mbdefense.defenses import make_defense
    from mbdefense.runs.cache import StageCache
    from mbdefense.runs.lifecycle import Lifecycle
    from mbdefense.runs.outputs import check_output_dir
    from mbdefense.runs.workload import Workload, load_base, strip_attack_labels
    from mbdefense.training.runtime import is_main_process

    start = time.time()
    out = check_output_dir(out, command="defend", marker="defense.json",
                           inputs=[data, trusted], force=force) if is_main_process() else Path(out)
    train_set = strip_attack_labels(load_examples(data))
    trusted_set = strip_attack_labels(load_examples(trusted))
    n = settings.data.n_trusted
    if n and len(trusted_set) > n:
        trusted_set = random.Random(f"trusted:{seed}").sample(trusted_set, n)
    defense = make_defense(defense_name, stage1=settings.stage1, stage2=settings.stage2,
                           seed=seed, options=settings.defense_options.get(defense_name))
    if defense.changes_model and len(trusted_set) < 2:
        raise ConfigError(f"{trusted}: need at least 2 trusted examples")
    base, tokenizer, identity = load_base(model, settings, progress=progress, log=log)
    work = Workload(model_name=model.row_name, model_identity=identity,
                    base=lambda: (base, tokenizer), clean_train=[], attacked_train=train_set,
                    trusted=trusted_set, test_clean=[], test_triggered=[], attack="",
                    behavior=None, poison_rate=0.0)  # type: ignore[arg-type]
    lifecycle = Lifecycle(work, settings, seed, scorer=None, cache=StageCache(None, log=log),
                          progress=progress, log=log, copy_base=defense.needs_clean_model)
    done = lifecycle.defend(defense)
    summary: dict[str, Any] = {
        "written_by": "mbdefense defend", "model": model.name, "defense": defense_name,
        "seed": seed, "settings": jsonable(dataclasses.asdict(settings)), "train_examples": len(done.train_set),
        "trusted_examples": len(trusted_set), "diagnostics": jsonable(defense.diagnostics)}
    if done.stage1_info is not None:
        summary["implant"] = jsonable(done.stage1_info)
        summary["implant_rates"] = summary["implant"].get("implant_rates")
        if done.stage1_info.get("warning"):
            summary["warnings"] = [done.stage1_info["warning"]]
    if defense.changes_inputs:
        summary.setdefault("warnings", []).append(
            f"{defense_name} also rewrites prompts at inference: the saved model alone is not "
            f"the whole defense")
    if defense.changes_decoding:
        summary.setdefault("warnings", []).append(
            f"{defense_name} generates every answer itself (checked against a reference "
            f"model): the saved model alone is not the whole defense")
    summary["seconds"] = round(time.time() - start, 1)
    if not is_main_process():   # under `accelerate launch` the first process saves
        return summary
    with atomic_directory(out / "model", replace=(out / "defense.json").is_file() or force) \
            as tmp:
        done.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    atomic_write_json(out / "defense.json", summary)
    summary["model_dir"] = str(out / "model")
    return summary


def evaluate_saved(model: ModelSpec, settings: Settings, *, test: str,
                   trigger: str | None = None, behavior: str | None = None, seed: int = 0,
                   progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """CACC (and with a trigger and behaviour, ASR and AACC) of any model on a test file."""
    from mbdefense.attacks import parse_behavior, parse_trigger, triggered_copies
    from mbdefense.data import load_eval_examples
    from mbdefense.runs.evaluate import evaluate_model, make_scorer, scorer_identity
    from mbdefense.runs.workload import load_base

    if (trigger is None) != (behavior is None):
        raise ConfigError("eval: give --trigger and --behavior together")
    examples = load_eval_examples(test)
    if settings.data.n_test and len(examples) > settings.data.n_test:
        examples = random.Random(f"n_test:{seed}").sample(examples, settings.data.n_test)
    parsed_trigger = parse_trigger(trigger) if trigger else None
    parsed_behavior = parse_behavior(behavior) if behavior else None
    scorer = make_scorer(settings.evaluation, progress=progress)
    base, tokenizer, _ = load_base(model, settings, progress=progress, log=log)
    triggered = triggered_copies(examples, parsed_trigger, seed) if parsed_trigger else []
    log(f"evaluating {model.name} on {len(examples)} prompts"
        + (f" (and {len(triggered)} triggered with {parsed_trigger.spec})"
           if parsed_trigger else "") + " ...")
    ev = settings.evaluation
    metrics, samples = evaluate_model(
        base, tokenizer, examples, triggered, parsed_behavior, scorer, settings.generation,
        reference_nll_max_length=settings.finetune.max_length if ev.reference_nll else None,
        n_samples=ev.n_samples)
    row = {"model": model.row_name, "attack": parsed_trigger.spec if parsed_trigger else "",
           "behavior": parsed_behavior.spec if parsed_behavior else "", "defense": "eval",
           "seed": seed, **metrics.to_dict(), "scorer": scorer_identity(scorer)}
    if not triggered:
        row["asr"] = row["aacc"] = 0.0
    key = f"{model.row_name}|eval"
    return {"rows": [row], "samples": {key: samples}, "outcomes": {key: metrics.outcomes}}
