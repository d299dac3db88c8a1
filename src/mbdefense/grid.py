"""Experiment grids: ``mbdefense run CONFIG.yaml``.

A grid config names models x attacks x behaviours x defenses x seeds (all from registries)
and optional settings that override each model's preset. The whole config is validated before
any work starts: unknown keys, unknown names, wrong types and bad values are errors that name
the file, the line and the key.

Every (model, seed, attack, behaviour) is one :func:`mbdefense.experiment.run_experiment`
call that shares its attacked model between all defenses; every stage is cached on disk under
a key made from its inputs (``mbdefense.comparison``), so the clean reference is trained once
per model and seed, cells shared with an earlier run are loaded, and a killed run resumes where
it stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from mbdefense.comparison import CLEAN_REFERENCE
from mbdefense.core.errors import ConfigError
from mbdefense.experiment import ExperimentConfig, smoke_config


MODEL_PRESETS: dict[str, Callable[[], ExperimentConfig]] = {
    "embedded": ExperimentConfig,       # the demo's tiny Llama and suite (the embedded default)
    "embedded-smoke": smoke_config,     # the smaller smoke-test model and world
}

# Settings a grid may override, per model preset (fields of ExperimentConfig).
SETTINGS = ("world", "base", "finetune", "stage1", "stage2", "max_new_tokens", "scorer",
            "implant_prompts", "defense_options", "generator")


@dataclass
class GridConfig:
    name: str = "grid"
    description: str = ""
    models: list[str] = field(default_factory=lambda: ["embedded"])
    attacks: list[str] = field(default_factory=lambda: ["badnet"])
    behaviors: list[str] = field(default_factory=lambda: ["refusal"])
    defenses: list[str] = field(default_factory=lambda: [CLEAN_REFERENCE, "none", "clean-fft",
                                                         "mb-defense"])
    seeds: list[int] = field(default_factory=lambda: [0])
    poison_rate: float = 0.2
    settings: dict[str, Any] = field(default_factory=dict)   # overrides of the model presets
    source: str = "<config>"                                 # where it came from, for errors

    @property
    def groups(self) -> list[tuple[str, int, str, str]]:
        """(model, seed, attack, behaviour): one attacked model and its defenses each."""
        return list(itertools.product(self.models, self.seeds, self.attacks, self.behaviors))

    @property
    def n_cells(self) -> int:
        return len(self.groups) * len(self.defenses)

    def experiment(self, model: str, seed: int, attack: str, behavior: str,
                   progress: bool = True, cache_dir: str | None = None) -> ExperimentConfig:
        config = MODEL_PRESETS[model]()
        for key, value in self.settings.items():
            current = getattr(config, key)
            setattr(config, key, _merge(current, value, key, _hint(ExperimentConfig, key),
                                        self.source, {}))
        config.attack, config.behavior, config.seed = attack, behavior, seed
        config.poison_rate = self.poison_rate
        config.defenses = [d for d in self.defenses if d != CLEAN_REFERENCE]
        config.include_clean_reference = CLEAN_REFERENCE in self.defenses
        config.progress, config.cache_dir = progress, cache_dir
        config.model_name = model
        return config


# ---------------------------------------------------------------------------------------------
# loading and validation


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """The 1-based line of every mapping key in a YAML document, by its key path."""
    import yaml

    lines: dict[tuple[str, ...], int] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = path + (str(key.value),)
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[path + (str(i),)] = item.start_mark.line + 1
                walk(item, path + (str(i),))

    try:
        walk(yaml.compose(text), ())
    except yaml.YAMLError:
        pass
    return lines


class _Where:
    """Formats errors as ``FILE:LINE: KEY: message``."""

    def __init__(self, source: str, lines: dict[tuple[str, ...], int]) -> None:
        self.source, self.lines = source, lines

    def error(self, path: Sequence[str], message: str) -> ConfigError:
        parts = tuple(str(p) for p in path)
        line = None
        for n in range(len(parts), 0, -1):
            line = self.lines.get(parts[:n])
            if line is not None:
                break
        if line == 0:
            where = "command line override"
        else:
            where = f"{self.source}:{line}" if line is not None else self.source
        key = ".".join(parts)
        return ConfigError(f"{where}: {key + ': ' if key else ''}{message}")


def _hint(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls).get(name)


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass type in a hint like ``TrainConfig | None``."""
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _merge(current: Any, value: Any, path: str, hint: Any, source: str,
           lines: dict[tuple[str, ...], int]) -> Any:
    """``value`` (from YAML) laid over ``current``: dataclasses field by field, leaves
    type-checked against the current value. Raises ConfigError naming the key."""
    where = _Where(source, lines)
    keys = path.split(".")
    target = _dataclass_in(hint) if current is None else (
        type(current) if dataclasses.is_dataclass(current) else None)
    if target is not None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise where.error(keys, f"expected a mapping of {target.__name__} settings, "
                                    f"got {type(value).__name__}")
        base = current if current is not None else target()
        known = {f.name: f for f in dataclasses.fields(target)}
        changes = {}
        for key, sub in value.items():
            if key not in known:
                raise where.error(keys + [str(key)], f"unknown setting (known: "
                                                     f"{', '.join(sorted(known))})")
            changes[key] = _merge(getattr(base, key), sub, f"{path}.{key}",
                                  _hint(target, key), source, lines)
        try:
            return dataclasses.replace(base, **changes)
        except (ConfigError, ValueError, TypeError) as exc:
            raise where.error(keys, str(exc)) from None
    return _check_leaf(current, value, keys, hint, where)


def _leaf_type(current: Any, hint: Any) -> type | None:
    """The plain type a leaf must have: from the field's hint, else from its current value."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = [a for a in (typing.get_args(hint) if union else (hint,)) if a is not type(None)]
    for option in options:
        origin = typing.get_origin(option) or option
        if origin in (bool, int, float, str, list, dict, tuple):
            return list if origin is tuple else origin
    return None if current is None else type(current)


def _check_leaf(current: Any, value: Any, keys: list[str], hint: Any, where: _Where) -> Any:
    kind = _leaf_type(current, hint)
    if kind is None or value is None:
        return value
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise where.error(keys, f"expected {kind.__name__}, got {type(value).__name__} "
                                f"({value!r})")
    return copy.deepcopy(value)


def _set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: '{part}' is not a mapping")
    node[parts[-1]] = value


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``key.sub=value`` pairs from the command line (values are YAML: ``seeds=[0,1]``)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}': expected KEY=VALUE (e.g. seeds=[0,1])")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': bad value ({exc})") from None
        _set_path(out, key.strip(), value)
    return out


def _deep_update(raw: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            _deep_update(raw[key], value)
        else:
            raw[key] = value


LIST_KEYS = ("models", "attacks", "behaviors", "defenses", "seeds")
TOP_KEYS = ("name", "description", "poison_rate") + LIST_KEYS + SETTINGS


def load_grid_config(path: str | Path, overrides: Sequence[str] = ()) -> GridConfig:
    """Read, override and validate a grid config; nothing is trained here."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.strerror or exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}{line}: not valid YAML ({problem})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    extra = parse_overrides(overrides)
    _deep_update(raw, extra)
    lines = _key_lines(text)

    def mark(node: dict[str, Any], path: tuple[str, ...]) -> None:
        for key, value in node.items():
            sub = path + (str(key),)
            for known in [k for k in lines if k[:len(sub)] == sub]:
                del lines[known]
            lines[sub] = 0  # errors under it name the command line
            if isinstance(value, dict):
                mark(value, sub)

    mark(extra, ())
    return grid_config_from_dict(raw, source=str(path), lines=lines)


def grid_config_from_dict(raw: dict[str, Any], source: str = "<config>",
                          lines: dict[tuple[str, ...], int] | None = None) -> GridConfig:
    where = _Where(source, lines or {})
    unknown = [k for k in raw if k not in TOP_KEYS]
    if unknown:
        raise where.error([str(unknown[0])], f"unknown key (known: {', '.join(TOP_KEYS)})")
    config = GridConfig(source=source)
    for key in ("name", "description"):
        if key in raw:
            if not isinstance(raw[key], str):
                raise where.error([key], f"expected a string, got {type(raw[key]).__name__}")
            setattr(config, key, raw[key])
    for key in LIST_KEYS:
        if key not in raw:
            continue
        value = raw[key]
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not value:
            raise where.error([key], "expected a non-empty list")
        kind = int if key == "seeds" else str
        for i, item in enumerate(value):
            if not isinstance(item, kind) or isinstance(item, bool):
                raise where.error([key, str(i)], f"expected {kind.__name__}, got {item!r}")
        if len(set(value)) != len(value):
            raise where.error([key], f"duplicate entries in {value}")
        setattr(config, key, list(value))
    if "poison_rate" in raw:
        rate = raw["poison_rate"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise where.error(["poison_rate"], f"expected a number in (0, 1], got {rate!r}")
        config.poison_rate = float(rate)
    config.settings = {k: raw[k] for k in SETTINGS if k in raw}
    _validate_names(config, where)
    # every preset with every override, built now: bad settings fail before any work
    for model in config.models:
        for key, value in config.settings.items():
            _merge(getattr(MODEL_PRESETS[model](), key), value, key,
                   _hint(ExperimentConfig, key), source, lines or {})
    return config


def _validate_names(config: GridConfig, where: _Where) -> None:
    from mbdefense.attacks import parse_behavior, parse_trigger
    from mbdefense.defenses import DEFENSES, make_defense
    from mbdefense.evaluation.scorers import get_scorer

    for i, model in enumerate(config.models):
        if model not in MODEL_PRESETS:
            raise where.error(["models", str(i)], f"unknown model '{model}' (known: "
                                                  f"{', '.join(MODEL_PRESETS)})")
    checks: list[tuple[str, Callable[[str], Any]]] = [("attacks", parse_trigger),
                                                      ("behaviors", parse_behavior)]
    for key, parse in checks:
        for i, spec in enumerate(getattr(config, key)):
            try:
                parsed = parse(spec)
            except ConfigError as exc:
                raise where.error([key, str(i)], str(exc)) from None
            if key == "behaviors" and parsed.kind == "jailbreak":
                raise where.error([key, str(i)], "jailbreak needs harmful requests with "
                                                 "compliant answers, which the embedded suite "
                                                 "does not have")
    options = config.settings.get("defense_options") or {}
    if not isinstance(options, dict):
        raise where.error(["defense_options"], "expected a mapping of defense name -> options")
    for name in options:
        if name not in config.defenses:
            raise where.error(["defense_options", str(name)],
                              f"options for '{name}', which is not in defenses")
    for i, name in enumerate(config.defenses):
        if name == CLEAN_REFERENCE:
            continue
        if name not in DEFENSES:
            raise where.error(["defenses", str(i)], f"unknown defense '{name}' (known: "
                                                    f"{', '.join([CLEAN_REFERENCE, *DEFENSES])})")
        if options.get(name) is not None and not isinstance(options[name], dict):
            raise where.error(["defense_options", name], "expected a mapping of options")
        try:
            make_defense(name, options=options.get(name))
        except ConfigError as exc:
            raise where.error(["defense_options", name], str(exc)) from None
    if "scorer" in config.settings:
        try:
            get_scorer(config.settings["scorer"])
        except (ConfigError, TypeError) as exc:
            raise where.error(["scorer"], str(exc)) from None
    if "generator" in config.settings:
        from mbdefense.evaluation.generation import check_backend

        try:
            check_backend(config.settings["generator"])
        except ConfigError as exc:
            raise where.error(["generator"], str(exc)) from None


# ---------------------------------------------------------------------------------------------
# running


class Progress:
    """Cells done, elapsed time and an estimate of the time left (from the cells computed so
    far; cells loaded from the cache count as done but not in the rate)."""

    def __init__(self, total: int, log: Callable[[str], None]) -> None:
        self.total, self.log = total, log
        self.done = self.computed = 0
        self.computed_seconds = 0.0
        self.start = self.last = time.time()

    def cell(self, label: str, cached: bool) -> None:
        now = time.time()
        self.done += 1
        if not cached:
            self.computed += 1
            self.computed_seconds += now - self.last
        self.last = now
        left = self.total - self.done
        eta = ""
        if self.computed and left:
            eta = f", about {_duration(self.computed_seconds / self.computed * left)} left"
        self.log(f"[{self.done}/{self.total} cells] {label} {'(cached) ' if cached else ''}"
                 f"- {_duration(now - self.start)} elapsed{eta}")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def plan(config: GridConfig) -> str:
    """What a run will do, in words (``mbdefense run --dry-run``)."""
    lines = [f"grid '{config.name}': {len(config.groups)} attacked models "
             f"({len(config.models)} models x {len(config.seeds)} seeds x "
             f"{len(config.attacks)} attacks x {len(config.behaviors)} behaviours), "
             f"{config.n_cells} cells",
             f"  defenses: {', '.join(config.defenses)}"]
    if CLEAN_REFERENCE in config.defenses:
        lines.append(f"  the clean reference is trained once per model and seed "
                     f"({len(config.models) * len(config.seeds)} in all)")
    for key in SETTINGS:
        if key in config.settings:
            lines.append(f"  {key}: {config.settings[key]}")
    return "\n".join(lines)


def run_grid(config: GridConfig, out: str | Path, *, cache_dir: str | Path | None = None,
             progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every cell (or load it from the cache); ``out/results.json`` is rewritten after each
    attacked model, so a partial run shows what is finished. Returns the results document."""
    from mbdefense.experiment import run_experiment, versions
    from mbdefense.core.io import atomic_write_json, jsonable

    out = Path(out)
    cache = Path(cache_dir) if cache_dir is not None else out / "cache"
    start = time.time()
    tracker = Progress(config.n_cells, log)
    doc: dict[str, Any] = {"name": config.name, "description": config.description,
                           "rows": [], "samples": {}, "diagnostics": {},
                           "config": jsonable({**dataclasses.asdict(config)}),
                           "versions": versions(), "groups": []}
    for n, (model, seed, attack, behavior) in enumerate(config.groups, 1):
        log(f"== {n}/{len(config.groups)}: model {model}, seed {seed}, attack {attack}, "
            f"behaviour {behavior}")
        experiment = config.experiment(model, seed, attack, behavior, progress=progress,
                                       cache_dir=str(cache))
        result = run_experiment(experiment, log=log, on_cell=tracker.cell)
        doc["rows"].extend(result["rows"])
        doc["samples"].update(result["samples"])
        doc["diagnostics"][f"{model}|{attack}|{behavior}|seed{seed}"] = result["diagnostics"]
        doc["groups"].append({"model": model, "seed": seed, "attack": attack,
                              "behavior": behavior, "wall_seconds": result["wall_seconds"]})
        doc["wall_seconds"] = round(time.time() - start, 1)
        atomic_write_json(out / "results.json", doc)
    return doc
