"""Typed training settings."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj",
                                                               "o_proj"])


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
    seed: int = 0
    progress: bool = True
    description: str = "fine-tune"
