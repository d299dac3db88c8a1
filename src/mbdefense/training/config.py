"""Typed training settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mbdefense.core.errors import ConfigError


#: ``target_modules: [all-linear]``: every linear layer of the transformer blocks (the output
#: layer excluded), whatever the architecture calls them.
ALL_LINEAR = "all-linear"


@dataclass
class LoraSettings:
    """LoRA adapters: rank, scale (``alpha / r``), dropout on the adapters' inputs, and the
    modules adapted: names (the last part of a module's name, e.g. ``q_proj``) or
    ``[all-linear]``."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj",
                                                               "o_proj"])

    def __post_init__(self) -> None:
        names = self.target_modules
        if isinstance(names, str) or not names \
                or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"lora.target_modules: must be a list of module names (or "
                              f"[{ALL_LINEAR}]), got {names!r}")
        if ALL_LINEAR in names and len(names) > 1:
            raise ConfigError(f"lora.target_modules: '{ALL_LINEAR}' already names every linear "
                              f"layer; give it alone, got {names!r}")


@dataclass
class TrainConfig:
    """Supervised fine-tuning: loss on response tokens only."""

    epochs: float = 3.0
    learning_rate: float = 3e-4
    batch_size: int = 16
    grad_accum: int = 1
    max_length: int = 256
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora: LoraSettings | None = None
    gradient_checkpointing: bool = False   # recompute activations in backward: less memory
    precision: str = "auto"                # "auto" (bf16 autocast on a bf16 GPU), "fp32", "bf16"
                                           # (autocast on the GPU or the CPU)
    seed: int = 0
    progress: bool = True
    description: str = "fine-tune"


#: Settings added after the stage cache's CACHE_VERSION 3: left out of the keys while at their
#: default, so entries cached before they existed stay valid (a changed value changes the key).
LATER_DEFAULTS: dict[str, Any] = {"repair_epochs": 0.0, "repair_weight": 1.0,
                                  "insertion_copies": 0, "top_up_learning_rate": None,
                                  "anchor": 0.0, "triggers_per_copy": 1, "r_tokens": 0,
                                  "keep": "best"}


def _at_later_default(name: str, value: Any) -> bool:
    return name in LATER_DEFAULTS and value == LATER_DEFAULTS[name]


def weight_settings(config: Any) -> dict[str, Any]:
    """A config's settings that change the weights (not progress bars, labels or activation
    checkpointing), for cache keys; nested configs included."""
    from dataclasses import asdict

    cosmetic = ("progress", "description", "gradient_checkpointing")

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()
                    if k not in cosmetic and not _at_later_default(k, v)}
        return value

    return strip(asdict(config))
