"""One registry type for every swap point (defenses, triggers, behaviours, scorers, models,
generators, styles, judge criteria): ``register``/``get``/``names``, aliases, and an error that
names the registry and suggests the closest known name."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from mbdefense.core.errors import ConfigError

T = TypeVar("T")


def did_you_mean(name: str, known: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Generic[T]):
    """Named entries of one kind. ``kind`` is how errors name it (``defense``, ``trigger``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, entry: T | None = None, *,
                 aliases: tuple[str, ...] = ()) -> T | Callable[[T], T]:
        """``registry.register("name", entry)``, or ``@registry.register("name")`` as a
        decorator. A name may be registered once."""

        def add(value: T) -> T:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._entries[name] = value
            for alias in aliases:
                self._aliases[alias] = name
            return value

        return add if entry is None else add(entry)

    def alias(self, alias: str, name: str) -> None:
        if alias in self._entries or alias in self._aliases:
            raise ValueError(f"{self.kind} '{alias}' is registered twice")
        self._aliases[alias] = name

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases; ConfigError if unknown."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise self.unknown(name)

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def unknown(self, name: str) -> ConfigError:
        known = self.names()
        return ConfigError(f"unknown {self.kind} '{name}'{did_you_mean(name, known + list(self._aliases))} "
                           f"(known: {', '.join(known)})")

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def names(self) -> list[str]:
        return list(self._entries)

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
