"""Reading a YAML config with bounded work, and laying typed values over dataclasses.

Errors name the file, the line and the key (``run.yaml:7: stage2.margin: expected float, got
str ('x')``). A config is plain data: YAML aliases and anchors are refused (they make a small
file expand without bound), as are tags such as ``!!python/object``, files over
:data:`MAX_CONFIG_BYTES`, nesting deeper than :data:`MAX_DEPTH`, more than :data:`MAX_VALUES`
values, values YAML cannot build and non-finite numbers. Every error is one line.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Sequence

from mbdefense.core.errors import ConfigError
from mbdefense.core.text import one_line

MAX_CONFIG_BYTES = 1_000_000
MAX_DEPTH = 32
MAX_VALUES = 10_000

Lines = dict[tuple[str, ...], int]
#: The only explicit YAML tags a config may use (``!!str 1``); ``!!python/...`` and the like
#: are refused.
_PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{name}"
                        for name in ("str", "int", "float", "bool", "null", "seq", "map"))


class Where:
    """Formats errors as ``FILE:LINE: KEY: message`` (line 0: a command-line override)."""

    def __init__(self, source: str, lines: Lines | None = None) -> None:
        self.source, self.lines = source, lines or {}

    def error(self, path: Sequence[Any], message: str) -> ConfigError:
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
        key = ".".join(one_line(part, 80) for part in parts)   # keys too are the user's text
        return ConfigError(one_line(f"{where}: {key + ': ' if key else ''}{message}", 2000))


def _loader() -> Any:
    """libyaml's safe loader when it is built in (much faster), else PyYAML's."""
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _compose(text: str, source: str) -> Any:
    """The YAML node tree. One pass over the events first refuses aliases and anchors,
    nesting deeper than :data:`MAX_DEPTH` and more than :data:`MAX_VALUES` values, before
    anything is built."""
    import yaml

    starts = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
    ends = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
    try:
        depth = values = 0
        for event in yaml.parse(text, Loader=_loader()):
            line = event.start_mark.line + 1
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise ConfigError(f"{source}:{line}: YAML anchors and aliases are not "
                                  f"supported in configs; write the values out")
            tag = getattr(event, "tag", None)
            if tag is not None and tag not in _PLAIN_TAGS:
                raise ConfigError(f"{source}:{line}: YAML tags such as "
                                  f"'{one_line(tag, 60)}' are not supported in configs")
            if isinstance(event, starts):
                depth += 1
                if depth > MAX_DEPTH:
                    raise ConfigError(f"{source}:{line}: nested deeper than {MAX_DEPTH} "
                                      f"levels")
            elif isinstance(event, ends):
                depth -= 1
            if isinstance(event, (*starts, yaml.ScalarEvent)):
                values += 1
                if values > MAX_VALUES:
                    raise ConfigError(f"{source}:{line}: more than {MAX_VALUES:,} values; a "
                                      f"config is a few settings")
        return yaml.compose(text, Loader=_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}{line}: not valid YAML ({one_line(problem, 120)})") \
            from None


def _plain(node: Any, path: tuple[str, ...], lines: Lines, source: str,
           constructor: Any = None) -> Any:
    """A composed node as plain Python data, recording each key's line (the nesting is
    bounded by :func:`_compose`)."""
    import yaml

    constructor = constructor or yaml.SafeLoader("")
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                raise ConfigError(f"{source}:{key.start_mark.line + 1}: keys must be plain "
                                  f"names")
            name = key.value if key.tag == "tag:yaml.org,2002:str" else \
                str(_scalar(constructor, key, source))
            lines[path + (name,)] = key.start_mark.line + 1
            out[name] = _plain(value, path + (name,), lines, source, constructor)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            lines[path + (str(i),)] = item.start_mark.line + 1
            items.append(_plain(item, path + (str(i),), lines, source, constructor))
        return items
    return _scalar(constructor, node, source)


def _scalar(constructor: Any, node: Any, source: str) -> Any:
    """A scalar node's value; a value YAML cannot build (``=``, ``2024-02-30``, an integer
    of 5000 digits) is a one-line error at its line."""
    import yaml

    try:
        return constructor.construct_object(node)
    except (yaml.YAMLError, ValueError, OverflowError) as exc:
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(f"{source}:{node.start_mark.line + 1}: not a valid value "
                          f"({one_line(problem, 120)})") from None


def read_yaml(path: str | Path) -> tuple[dict[str, Any], Lines]:
    """A config file as a mapping, and the line of every key path."""
    path = Path(path)
    source = str(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{source}: a config over {MAX_CONFIG_BYTES // 1000} kB is not "
                              f"accepted")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the config ({exc.strerror or exc})") from None
    node = _compose(text, source)
    lines: Lines = {}
    raw = {} if node is None else _plain(node, (), lines, source)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level")
    return raw, lines


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``key.sub=value`` pairs from the command line (values are YAML: ``seeds=[0,1]``)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}': expected KEY=VALUE (e.g. seeds=[0,1])")
        if len(text) > 10_000:
            raise ConfigError(f"override '{key}': value too long")
        value = _plain(_compose(text, f"override '{key}'"), (), {}, f"override '{key}'") \
            if text.strip() else None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: '{part}' is not a mapping")
        node[parts[-1]] = value
    del yaml
    return out


def deep_update(raw: dict[str, Any], extra: dict[str, Any], lines: Lines,
                path: tuple[str, ...] = ()) -> None:
    """Lay ``extra`` over ``raw``; keys it sets are marked as command-line overrides."""
    for key, value in extra.items():
        sub = path + (key,)
        for known in [k for k in lines if k[:len(sub)] == sub]:
            del lines[known]
        lines[sub] = 0
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            deep_update(raw[key], value, lines, sub)
        else:
            raw[key] = value


# ---------------------------------------------------------------------------------------------
# typed merging


def hint_of(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls).get(name)


def dataclass_in(hint: Any) -> type | None:
    """The dataclass type in a hint like ``TrainConfig | None``."""
    if dataclasses.is_dataclass(hint):
        return hint  # type: ignore[return-value]
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def merge(current: Any, value: Any, keys: list[str], hint: Any, where: Where) -> Any:
    """``value`` (plain data) laid over ``current``: dataclasses field by field, leaves
    type-checked. Dataclasses check their own ranges in ``__post_init__``."""
    target = dataclass_in(hint) if current is None else (
        type(current) if dataclasses.is_dataclass(current) else None)
    if target is not None:
        if value is None and type(None) in typing.get_args(hint):   # e.g. `judge:` (none)
            return None
        if not isinstance(value, dict):
            got = "nothing" if value is None else type(value).__name__
            raise where.error(keys, f"expected a mapping of {target.__name__} settings, "
                                    f"got {got}")
        base = current if current is not None else target()
        known = {f.name for f in dataclasses.fields(target) if f.init}
        changes = {}
        for key, sub in value.items():
            if key not in known:
                from mbdefense.core.registry import did_you_mean

                raise where.error(keys + [str(key)], f"unknown setting"
                                  f"{did_you_mean(str(key), sorted(known))} (known: "
                                  f"{', '.join(sorted(known))})")
            changes[key] = merge(getattr(base, key), sub, keys + [key], hint_of(target, key),
                                 where)
        try:
            return dataclasses.replace(base, **changes)
        except (ConfigError, ValueError, TypeError) as exc:
            raise _field_error(str(exc), keys, known, where) from None
    return check_leaf(current, value, keys, hint, where)


def _field_error(message: str, keys: list[str], fields: set[str], where: Where) -> ConfigError:
    """A dataclass's own check (``"stage1.max_leak: must be ..."``) placed at its key."""
    head, sep, rest = message.partition(": ")
    name = head.rsplit(".", 1)[-1]
    if sep and name in fields:
        return where.error(keys + [name], rest)
    if sep and not keys and head.split(".")[0] in fields:   # "stage2.margin: ..." at the top
        return where.error(head.split("."), rest)
    return where.error(keys, message)


def leaf_type(current: Any, hint: Any) -> type | None:
    """The plain type a leaf must have: from the field's hint, else from its current value."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = [a for a in (typing.get_args(hint) if union else (hint,)) if a is not type(None)]
    for option in options:
        origin = typing.get_origin(option) or option
        if origin in (bool, int, float, str, list, dict, tuple):
            return list if origin is tuple else origin
    return None if current is None else type(current)


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def check_leaf(current: Any, value: Any, keys: list[str], hint: Any, where: Where) -> Any:
    kind = leaf_type(current, hint)
    if isinstance(value, float) and not math.isfinite(value):
        raise where.error(keys, f"must be a finite number, got {value}")
    if kind is None or value is None:
        return value
    if kind is float and isinstance(value, str) and _EXPONENT_FLOAT.match(value.strip()):
        value = float(value)     # YAML 1.1 reads 3e-5 (no dot) as a string
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise where.error(keys, f"expected {kind.__name__}, got {type(value).__name__} "
                                f"({one_line(repr(value), 80)})")
    return copy.deepcopy(value)
