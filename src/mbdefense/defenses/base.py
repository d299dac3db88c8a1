"""The one defense interface: three optional hooks, so every defense fits one pipeline.

- ``before_training(train_set) -> train_set``: change the data before fine-tuning
  (MB-Defense stage 1);
- ``after_training(model, tokenizer, trusted_set) -> model``: repair the trained model
  (MB-Defense stage 2, Clean-FFT);
- ``at_inference(examples) -> examples``: rewrite prompts before generation.

Each hook defaults to the identity. Every defense takes the same constructor arguments (the
shared stage-1 and stage-2 settings and a seed) and uses what it needs. ``diagnostics``
collects what a defense measured about itself (for reports).
"""

from __future__ import annotations

from typing import Any, Sequence

from mbdefense.data.example import Example


class Defense:
    name = "none"

    def __init__(self, stage1: Any = None, stage2: Any = None, *, seed: int = 0) -> None:
        self.seed = seed
        self.diagnostics: dict[str, Any] = {}

    @property
    def changes_training_data(self) -> bool:
        return type(self).before_training is not Defense.before_training

    @property
    def changes_model(self) -> bool:
        return type(self).after_training is not Defense.after_training

    def before_training(self, train_set: Sequence[Example]) -> list[Example]:
        return list(train_set)

    def after_training(self, model: Any, tokenizer: Any, trusted_set: Sequence[Example]) -> Any:
        return model

    def at_inference(self, examples: Sequence[Example]) -> list[Example]:
        return list(examples)


class NoDefense(Defense):
    """The attacked model as trained: the undefended reference."""

    name = "none"
