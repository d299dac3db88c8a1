"""Defenses by name: one registry, one interface (see ``mbdefense.defenses.base``)."""

from __future__ import annotations

from typing import Any

from mbdefense.defenses.base import Defense, NoDefense
from mbdefense.defenses.mb_defense import (AugmentedFFT, CleanFFT, DefensivePoisoningConfig,
                                           MBDefense, StageTwoOnly)
from mbdefense.defenses.neutralization import NeutralizationConfig
from mbdefense.errors import ConfigError

DEFENSES: dict[str, type[Defense]] = {
    "none": NoDefense,
    "clean-fft": CleanFFT,
    "mb-defense": MBDefense,
    "stage2-only": StageTwoOnly,
    "aug-fft": AugmentedFFT,
}


def make_defense(name: str, *, stage1: DefensivePoisoningConfig | None = None,
                 stage2: NeutralizationConfig | None = None, seed: int = 0) -> Defense:
    """Build a defense from the registry with the shared MB-Defense settings."""
    if name not in DEFENSES:
        raise ConfigError(f"defense: unknown '{name}' (known: {', '.join(sorted(DEFENSES))})")
    return DEFENSES[name](stage1, stage2, seed=seed)


__all__ = ["DEFENSES", "Defense", "DefensivePoisoningConfig", "NeutralizationConfig",
           "make_defense"]
