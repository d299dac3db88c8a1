"""The one defense interface: optional hooks, so every defense fits one lifecycle
(before_training -> fine-tune -> after_finetune -> after_training -> evaluate).

- ``before_training(train_set) -> train_set``: change the data before fine-tuning
  (MB-Defense stage 1, P2P);
- ``after_finetune(model, context) -> (model, info)``: finish what fine-tuning started, cached
  as a stage of its own under ``after_finetune_key()`` (MB-Defense checks that its defensive
  triggers were implanted, and tops them up);
- ``after_training(model, tokenizer, trusted_set, *, clean_model=None) -> model``: repair the
  trained model (MB-Defense stage 2, Clean-FFT, Fine-mixing). ``clean_model`` is the model
  fine-tuning started from (never attacked), for defenses that mix weights with it;
- ``at_inference(examples, *, model=None, tokenizer=None, trusted_set=()) -> examples``:
  rewrite prompts before generation (ONION, P2P); ``model`` is the model under test;
- ``decode(examples, *, model, tokenizer, clean_model=None, max_new_tokens, batch_size)
  -> answers``: generate the answers itself (CleanGen; the default: plain greedy answers);
  ``clean_model`` as above.

Each hook defaults to the identity. A defense states which hooks it uses in ``capabilities``
(a test checks that the statement matches the hooks it overrides); the lifecycle reads only
that. Every defense takes the same constructor arguments (the
shared stage-1 and stage-2 settings, a seed, and its own ``options``, a mapping checked against
its ``Options`` dataclass) and uses what it needs. ``diagnostics`` collects what a defense
measured about itself (for reports).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from mbdefense.data.example import Example
from mbdefense.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a defense does, hook by hook."""

    changes_training_data: bool = False   # before_training
    completes_training: bool = False      # after_finetune (a cached stage of its own)
    changes_model: bool = False           # after_training
    changes_inputs: bool = False          # at_inference
    changes_decoding: bool = False        # decode (the evaluation generates through it)
    needs_clean_model: bool = False       # after_training uses the model fine-tuning started from
    # a baseline that fine-tunes on the trusted set: it trains with the baselines' settings
    # (``baseline_train`` of a run) when they are given, else with stage 2's
    baseline_training: bool = False


@dataclasses.dataclass
class FinetuneContext:
    """What ``after_finetune`` may use: the defended training set, the trusted set, and how
    the model was fine-tuned (to continue the same way)."""

    tokenizer: Any
    train_set: Sequence[Example]
    trusted: Sequence[Example]
    finetune_config: Any
    seed: int
    max_new_tokens: int
    implant_prompts: int
    log: Any = print


@dataclasses.dataclass
class NoOptions:
    """Defenses without settings of their own."""


def parse_options(cls: type, options: Mapping[str, Any] | None, where: str) -> Any:
    """``cls(**options)`` with unknown keys reported by name (``where``: e.g. 'defense onion')."""
    options = dict(options or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(map(repr, unknown))} "
                          f"(known: {', '.join(sorted(known)) or 'none'})")
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


class Defense:
    name = "none"
    Options: type = NoOptions
    capabilities = Capabilities()

    def __init__(self, stage1: Any = None, stage2: Any = None, *, seed: int = 0,
                 options: Mapping[str, Any] | None = None) -> None:
        self.seed = seed
        self._stage2 = stage2
        self.options = parse_options(self.Options, options, f"defense {self.name}")
        self.diagnostics: dict[str, Any] = {}

    @property
    def changes_training_data(self) -> bool:
        return self.capabilities.changes_training_data

    @property
    def completes_training(self) -> bool:
        return self.capabilities.completes_training

    @property
    def changes_model(self) -> bool:
        return self.capabilities.changes_model

    @property
    def changes_inputs(self) -> bool:
        return self.capabilities.changes_inputs

    @property
    def changes_decoding(self) -> bool:
        return self.capabilities.changes_decoding

    @property
    def needs_clean_model(self) -> bool:
        return self.capabilities.needs_clean_model

    def before_training(self, train_set: Sequence[Example]) -> list[Example]:
        return list(train_set)

    def after_finetune(self, model: Any, context: FinetuneContext) -> tuple[Any, dict[str, Any]]:
        return model, {}

    def after_finetune_key(self) -> Any:
        """Everything besides the fine-tuned model that ``after_finetune``'s result depends on
        (part of its cache key)."""
        return None

    def after_training(self, model: Any, tokenizer: Any, trusted_set: Sequence[Example], *,
                       clean_model: Any = None) -> Any:
        return model

    def after_training_key(self) -> Any:
        """Everything besides the model, the trusted set and the defense's options that
        ``after_training``'s result depends on (part of its cache key): only the settings it
        reads, so changing one defense's settings leaves the others' cells cached. By default,
        for a defense that changes the model, all of stage 2's settings (it may read any)."""
        from mbdefense.training.config import weight_settings

        if self.changes_model and dataclasses.is_dataclass(self._stage2):
            return weight_settings(self._stage2)
        return None

    def at_inference(self, examples: Sequence[Example], *, model: Any = None,
                     tokenizer: Any = None, trusted_set: Sequence[Example] = ()) -> list[Example]:
        return list(examples)

    def decode(self, examples: Sequence[Example], *, model: Any, tokenizer: Any,
               clean_model: Any = None, max_new_tokens: int = 32,
               batch_size: int = 16) -> list[str]:
        from mbdefense.evaluation.generation import answer_examples

        return answer_examples(model, tokenizer, examples, max_new_tokens=max_new_tokens,
                               batch_size=batch_size)


class NoDefense(Defense):
    """The attacked model as trained: the undefended reference."""

    name = "none"
