"""Defenses by name: one registry, one interface (see ``mbdefense.defenses.base``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from mbdefense.defenses.base import Defense, NoDefense
from mbdefense.defenses.cleangen import CleanGen
from mbdefense.defenses.crow import Crow
from mbdefense.defenses.fine_mixing import FineMixing
from mbdefense.defenses.mb_defense import (AugmentedFFT, CleanFFT, DefensivePoisoningConfig,
                                           MBDefense, StageTwoOnly)
from mbdefense.defenses.neutralization import NeutralizationConfig
from mbdefense.defenses.onion import Onion
from mbdefense.defenses.p2p import P2P
from mbdefense.defenses.pruning import Pruning
from mbdefense.core.registry import Registry
from mbdefense.training.config import TrainConfig

#: Every defense by name: the class, built by :func:`make_defense`.
DEFENSES: Registry[type[Defense]] = Registry("defense")
DEFENSES.register("none", NoDefense)
DEFENSES.register("clean-fft", CleanFFT)
DEFENSES.register("mb-defense", MBDefense)
DEFENSES.register("stage2-only", StageTwoOnly)
DEFENSES.register("aug-fft", AugmentedFFT)
DEFENSES.register("onion", Onion)
DEFENSES.register("fine-mixing", FineMixing)
DEFENSES.register("p2p", P2P)
DEFENSES.register("crow", Crow)
DEFENSES.register("cleangen", CleanGen)
DEFENSES.register("pruning", Pruning, aliases=("wanda",))


def make_defense(name: str, *, stage1: DefensivePoisoningConfig | None = None,
                 stage2: NeutralizationConfig | None = None, seed: int = 0,
                 options: Mapping[str, Any] | None = None,
                 baseline_train: TrainConfig | None = None) -> Defense:
    """Build a defense from the registry with the shared MB-Defense settings and its own
    ``options`` (checked against the defense's ``Options``; unknown keys are errors).

    ``baseline_train``, when given, replaces stage 2's training settings for the baselines
    that fine-tune on the trusted set (Clean-FFT, aug-fft, Fine-mixing, CROW; pruning reads its
    length limit), so MB-Defense's stage 2 can train differently from them."""
    cls = DEFENSES.get(name)
    if baseline_train is not None and cls.capabilities.baseline_training:
        stage2 = replace(stage2 or NeutralizationConfig(), train=baseline_train)
    return cls(stage1, stage2, seed=seed, options=options)


__all__ = ["DEFENSES", "Defense", "DefensivePoisoningConfig", "NeutralizationConfig",
           "make_defense"]
