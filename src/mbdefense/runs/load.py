"""Building a :class:`~mbdefense.runs.spec.RunSpec` from a YAML file (plus ``KEY=VALUE``
overrides) or a mapping: every key, name, type and range checked before any work starts."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from mbdefense.core.errors import ConfigError
from mbdefense.core.text import one_line, one_line_problem
from mbdefense.runs.config_file import Lines, Where, deep_update, merge, parse_overrides, read_yaml
from mbdefense.runs.presets import preset_for
from mbdefense.runs.spec import CLEAN_REFERENCE, ModelSpec, RunSpec, Settings

SETTING_KEYS = ("data", "base", "finetune", "stage1", "stage2", "baseline_train", "generation",
                "evaluation", "implant_prompts", "defense_options")
LIST_KEYS = ("attacks", "behaviors", "defenses", "seeds")
TOP_KEYS = ("name", "description", "model", "models", "poison_rate") + LIST_KEYS + SETTING_KEYS
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def load_run_spec(path: str | Path, overrides: Sequence[str] = (), *,
                  check_paths: bool = True) -> RunSpec:
    """Read, override and validate a run config; nothing is trained here. With
    ``check_paths=False`` local files and models need not exist (checking a shipped config on
    a machine without its data)."""
    raw, lines = read_yaml(path)
    deep_update(raw, parse_overrides(overrides), lines)
    base_dir = Path(path).resolve().parent
    return run_spec_from_dict(raw, source=str(path), lines=lines, base_dir=base_dir,
                              check_paths=check_paths)


def run_spec_from_dict(raw: dict[str, Any], *, source: str = "<config>",
                       lines: Lines | None = None, base_dir: Path | None = None,
                       check_paths: bool = True) -> RunSpec:
    where = Where(source, lines)
    for key in raw:
        if key not in TOP_KEYS:
            from mbdefense.core.registry import did_you_mean

            raise where.error([key], f"unknown key{did_you_mean(str(key), TOP_KEYS)} (known: "
                                     f"{', '.join(TOP_KEYS)})")
    spec = RunSpec(source=source)
    for key in ("name", "description"):
        if key in raw:
            if not isinstance(raw[key], str):
                raise where.error([key], f"expected a string, got {type(raw[key]).__name__}")
            setattr(spec, key, raw[key])
    if not SAFE_NAME.match(spec.name):
        raise where.error(["name"], f"'{one_line(spec.name, 80)}' is not a safe folder name "
                                    f"(letters, digits, '.', '_', '-'; at most 64; not "
                                    f"starting with '.')")
    if "model" in raw and "models" in raw:
        raise where.error(["models"], "give either model or models, not both")
    if "model" in raw or "models" in raw:
        key = "model" if "model" in raw else "models"
        entries = raw[key] if key == "models" else [raw[key]]
        if not isinstance(entries, list) or not entries:
            raise where.error([key], "expected a non-empty list of models")
        spec.models = [_model(entry, [key] if key == "model" else [key, str(i)], where, base_dir,
                              check_paths) for i, entry in enumerate(entries)]
        names = [m.name for m in spec.models]
        if len(set(names)) != len(names):
            raise where.error([key], f"duplicate models in {names}")
    for key in LIST_KEYS:
        if key in raw:
            setattr(spec, key, _list(raw[key], key, int if key == "seeds" else str, where))
    if "poison_rate" in raw:
        rate = raw["poison_rate"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise where.error(["poison_rate"], f"expected a number in (0, 1], got "
                                               f"{one_line(repr(rate), 80)}")
        spec.poison_rate = float(rate)
    spec.overrides = {k: raw[k] for k in SETTING_KEYS if k in raw}
    for model in spec.models:
        preset = preset_for(model)
        settings = merge(preset, spec.overrides, [], Settings, where)
        if "baseline_train" in spec.overrides and preset.baseline_train is None:
            # the baselines' settings start from stage 2's: only the keys given differ
            start = replace(settings, baseline_train=settings.stage2.train_config())
            settings = merge(start, {"baseline_train": spec.overrides["baseline_train"]}, [],
                             Settings, where)
        spec.resolved[model.name] = _resolve_paths(settings, base_dir, where, check_paths)
    _validate_names(spec, where)
    return spec


def _list(value: Any, key: str, kind: type, where: Where) -> list[Any]:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise where.error([key], "expected a non-empty list")
    for i, item in enumerate(value):
        if not isinstance(item, kind) or isinstance(item, bool):
            raise where.error([key, str(i)], f"expected {kind.__name__}, got "
                                             f"{one_line(repr(item), 80)}")
        if kind is str and (problem := one_line_problem(item)):
            raise where.error([key, str(i)], problem)
        if kind is int and not 0 <= item < 2**31:
            raise where.error([key, str(i)], f"expected a seed in [0, 2**31), got {item}")
    if len(set(value)) != len(value):
        raise where.error([key], f"duplicate entries in {one_line(value, 200)}")
    return list(value)


def _local(path: str, base_dir: Path | None) -> str:
    """A relative data or model path is relative to the config file's folder when it exists
    there, else to the working directory."""
    candidate = Path(path).expanduser()
    if not candidate.is_absolute() and base_dir is not None and (base_dir / candidate).exists():
        return str(base_dir / candidate)
    return str(candidate)


def _model(entry: Any, keys: list[str], where: Where, base_dir: Path | None,
           check_paths: bool = True) -> ModelSpec:
    if isinstance(entry, str):
        entry = {"name": entry}
    model = merge(ModelSpec(), entry, keys, ModelSpec, where)
    if problem := one_line_problem(model.name):
        raise where.error(keys, f"model name: {problem}")
    if not model.is_embedded:
        from mbdefense.modeling.registry import MODELS

        if model.name not in MODELS:
            local = _local(model.name, base_dir)
            if Path(local).exists():
                model.name = local
            elif check_paths and _looks_like_path(model.name):
                raise where.error(keys, f"'{one_line(model.name, 200)}' not found (a local "
                                        f"folder or .gguf file; a hub id looks like owner/name)")
    return model


def _looks_like_path(name: str) -> bool:
    """Not a hub id (``owner/name``): a path that was meant to exist here."""
    return (name.startswith((".", "/", "~", "\\")) or name.count("/") > 1
            or Path(name).suffix.lower() in (".gguf", ".bin", ".safetensors", ".pt", ".json",
                                             ".jsonl", ".csv", ".parquet"))


def _resolve_paths(settings: Settings, base_dir: Path | None, where: Where,
                   check_paths: bool = True) -> Settings:
    """Local data paths made absolute (relative ones are relative to the config's folder when
    they exist there); a missing local path is an error, a hub dataset id (owner/name) is
    left to the loader (unless the hub is off)."""
    from mbdefense.data.loading import hub_offline_setting, looks_like_hub_id

    data = settings.data
    for name in ("train", "trusted", "test", "validation", "backdoorllm"):
        value = getattr(data, name)
        if value is None:
            continue
        local = _local(value, base_dir)
        if Path(local).exists():
            setattr(data, name, local)
        elif check_paths and (name == "backdoorllm" or not looks_like_hub_id(value)):
            raise where.error(["data", name], f"'{one_line(value, 200)}' not found (a local "
                                              f"file or folder; a hub dataset id looks like "
                                              f"owner/name)")
        elif check_paths and (offline := hub_offline_setting()):
            raise where.error(["data", name], f"'{one_line(value, 200)}' not found locally, "
                                              f"and the hub is off ({offline})")
    return settings


def _validate_names(spec: RunSpec, where: Where) -> None:
    from mbdefense.attacks import parse_behavior, parse_trigger
    from mbdefense.defenses import make_defense

    kinds = {spec.settings(m).data.kind for m in spec.models}
    if "backdoorllm" in kinds:
        from mbdefense.data.backdoorllm import BACKDOORLLM_BEHAVIORS, BACKDOORLLM_TRIGGERS

        checks: list[tuple[str, Callable[[str], Any]]] = [
            ("attacks", lambda a: _named(a, BACKDOORLLM_TRIGGERS, "BackdoorLLM attack")),
            ("behaviors", lambda b: _named(b, BACKDOORLLM_BEHAVIORS, "BackdoorLLM task"))]
    else:
        checks = [("attacks", parse_trigger), ("behaviors", parse_behavior)]
    for key, parse in checks:
        for i, item in enumerate(getattr(spec, key)):
            try:
                parsed = parse(item)
            except ConfigError as exc:
                raise where.error([key, str(i)], str(exc)) from None
            if key == "behaviors" and getattr(parsed, "kind", None) == "jailbreak":
                raise where.error([key, str(i)], "jailbreak needs harmful requests with "
                                                 "compliant answers: poison your data with "
                                                 "`mbdefense poison --source FILE`")
    settings = spec.settings(spec.models[0])
    options = settings.defense_options
    if not isinstance(options, dict):
        raise where.error(["defense_options"], "expected a mapping of defense name -> options")
    for name in options:
        if name not in spec.defenses:
            raise where.error(["defense_options", str(name)],
                              f"options for '{name}', which is not in defenses")
    for i, name in enumerate(spec.defenses):
        if name == CLEAN_REFERENCE:
            continue
        if options.get(name) is not None and not isinstance(options[name], dict):
            raise where.error(["defense_options", name], "expected a mapping of options")
        try:
            make_defense(name, options=options.get(name))
        except ConfigError as exc:
            key = ["defense_options", name] if name in options else ["defenses", str(i)]
            raise where.error(key, str(exc)) from None


def _named(name: str, known: dict[str, str], what: str) -> str:
    if name not in known:
        from mbdefense.core.registry import did_you_mean

        raise ConfigError(f"unknown {what} '{name}'{did_you_mean(name, list(known))} (known: "
                          f"{', '.join(known)})")
    return known[name]
