"""Defenses by name: one registry, one interface (see ``mbdefense.defenses.base``)."""

from __future__ import annotations

from typing import Any, Mapping

from mbdefense.defenses.base import Defense, NoDefense
from mbdefense.defenses.fine_mixing import FineMixing
from mbdefense.defenses.mb_defense import (AugmentedFFT, CleanFFT, DefensivePoisoningConfig,
                                           MBDefense, StageTwoOnly)
from mbdefense.defenses.neutralization import NeutralizationConfig
from mbdefense.defenses.onion import Onion
from mbdefense.defenses.p2p import P2P
from mbdefense.core.errors import ConfigError

DEFENSES: dict[str, type[Defense]] = {
    "none": NoDefense,
    "clean-fft": CleanFFT,
    "mb-defense": MBDefense,
    "stage2-only": StageTwoOnly,
    "aug-fft": AugmentedFFT,
    "onion": Onion,
    "fine-mixing": FineMixing,
    "p2p": P2P,
}


def make_defense(name: str, *, stage1: DefensivePoisoningConfig | None = None,
                 stage2: NeutralizationConfig | None = None, seed: int = 0,
                 options: Mapping[str, Any] | None = None) -> Defense:
    """Build a defense from the registry with the shared MB-Defense settings and its own
    ``options`` (checked against the defense's ``Options``; unknown keys are errors)."""
    if name not in DEFENSES:
        raise ConfigError(f"defense: unknown '{name}' (known: {', '.join(sorted(DEFENSES))})")
    return DEFENSES[name](stage1, stage2, seed=seed, options=options)


__all__ = ["DEFENSES", "Defense", "DefensivePoisoningConfig", "NeutralizationConfig",
           "make_defense"]
