"""The experiment spec: one typed shape for every run, validated once when it is built.

A :class:`RunSpec` names models x attacks x behaviours x defenses x seeds and the
:class:`Settings` every cell runs with. Settings start from the model's preset
(:mod:`mbdefense.runs.presets`) and a config's keys are laid over it, each checked for type
and range; an error names the file, the line and the key. One (model, seed, attack,
behaviour) is an :class:`Experiment`: one attacked model and its defenses.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from mbdefense.core.errors import ConfigError
from mbdefense.defenses import DefensivePoisoningConfig, NeutralizationConfig
from mbdefense.defenses.neutralization import check_triggers_per_copy
from mbdefense.evaluation.judge import JudgeConfig
from mbdefense.results.document import CLEAN_REFERENCE
from mbdefense.runs.embedded import BaseRecipe
from mbdefense.training.config import LoraSettings, TrainConfig

DTYPES = ("auto", "float32", "bfloat16", "float16")


def _positive(owner: str, name: str, value: float, *, zero_ok: bool = False) -> None:
    bad = (isinstance(value, float) and not math.isfinite(value)) or \
        (value < 0 if zero_ok else value <= 0)
    if bad:
        raise ConfigError(f"{owner}.{name}: must be {'>= 0' if zero_ok else '> 0'} and "
                          f"finite, got {value}")


@dataclass
class ModelSpec:
    """Which model: ``embedded`` (or ``embedded-smoke``), a registry name such as
    ``smollm2-135m``, a local folder saved with ``save_pretrained``, a ``.gguf`` file or a hub
    id."""

    name: str = "embedded"
    dtype: str | None = None             # None: the checkpoint's (float32 for GGUF)
    lora: LoraSettings | None = None     # train LoRA adapters (merged when saved)
    chat_template: str | None = None     # Jinja template for a base model without one
    trust_remote_code: bool = False
    label: str | None = None             # the rows' model name (default: the name)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError("model.name: must be a non-empty string")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype: unknown '{self.dtype}' (known: "
                              f"{', '.join(DTYPES)})")

    @property
    def is_embedded(self) -> bool:
        return self.name in ("embedded", "embedded-smoke")

    @property
    def row_name(self) -> str:
        return self.label or self.name


@dataclass
class DataSpec:
    """Where the data comes from: the embedded suite (no files), your own files (clean
    ``train`` to be poisoned by each attack, a ``trusted`` clean set -- without one,
    ``n_trusted`` examples are carved out of ``train`` -- and ``test`` instructions with
    optional references, WizardLM layout; local files or hub dataset ids), or a BackdoorLLM
    folder (``backdoorllm``; its attacks and tasks are the run's attacks and behaviours).
    Sizes: the suite's split sizes; for files at most this many, drawn by seed (0: all)."""

    train: str | None = None
    trusted: str | None = None
    test: str | None = None
    validation: str | None = None   # files: prompts for tuning (evaluation.split: validation)
    backdoorllm: str | None = None
    n_train: int = 2000
    n_trusted: int = 128
    n_test: int = 338
    n_validation: int = 0           # 0: as many as n_test

    def __post_init__(self) -> None:
        for name in ("n_train", "n_trusted", "n_test", "n_validation"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"data.{name}: must be an integer >= 0, got {value!r}")
        files = [n for n in ("train", "trusted", "test", "validation")
                 if getattr(self, n) is not None]
        if self.backdoorllm is not None and files:
            raise ConfigError(f"data: give either backdoorllm or files, not both "
                              f"({', '.join(files)})")
        missing = sorted({"train", "test"} - set(files))
        if files and missing:
            raise ConfigError(f"data: {', '.join(missing)} missing (files need train and test; "
                              f"trusted is optional)")
        if files and self.trusted is None and self.n_trusted < 2:
            raise ConfigError("data.n_trusted: at least 2 trusted examples are carved out of "
                              "train when no trusted file is given")

    @property
    def kind(self) -> str:
        if self.backdoorllm is not None:
            return "backdoorllm"
        return "files" if self.train is not None else "embedded"


@dataclass
class GenerationSpec:
    """How answers are generated for evaluation (greedy)."""

    max_new_tokens: int = 24
    batch_size: int = 64
    backend: str = "plain"               # "plain" (transformers) or "vllm"

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"generation.{name}: must be >= 1, got {getattr(self, name)}")
        from mbdefense.evaluation.generation import check_backend

        check_backend(self.backend)


#: Where an evaluation's prompts come from.
SPLITS = ("test", "validation")


@dataclass
class EvaluationSpec:
    """How answers are judged: ``rules`` (exact match on the embedded suite), ``rouge-l``
    (ROUGE-L F1 against the reference, correct at ``rouge_threshold``) or ``judge`` (an LLM
    with the paper's criteria; its settings under ``judge``, the key from the environment).
    ASR always uses the behaviour's own detector."""

    scorer: str = "rules"
    # "test", or "validation": score on the validation prompts instead (for choosing settings;
    # disjoint from every test prompt), rows marked as such
    split: str = "test"
    rouge_threshold: float = 0.2
    judge: JudgeConfig | None = None
    reference_nll: bool = False          # add the clean reference NLL to every row
    n_samples: int = 4                   # sample answers kept per row
    stage1_rows: bool = False            # a row for MB-Defense's stage-1 model too

    def __post_init__(self) -> None:
        from mbdefense.evaluation.scorers import SCORERS

        try:
            self.scorer = SCORERS.canonical(self.scorer)
        except ConfigError as exc:
            raise ConfigError(f"evaluation.scorer: {exc}") from None
        if self.split not in SPLITS:
            raise ConfigError(f"evaluation.split: must be one of {', '.join(SPLITS)}, got "
                              f"{self.split!r}")
        if not 0.0 < self.rouge_threshold <= 1.0:
            raise ConfigError(f"evaluation.rouge_threshold: must be in (0, 1], got "
                              f"{self.rouge_threshold}")
        if self.n_samples < 0:
            raise ConfigError(f"evaluation.n_samples: must be >= 0, got {self.n_samples}")
        if self.scorer == "judge" and self.judge is None:
            self.judge = JudgeConfig()


@dataclass
class Settings:
    """Everything a cell runs with besides its model, attack, behaviour, defense and seed."""

    data: DataSpec = field(default_factory=DataSpec)
    base: BaseRecipe | None = None       # the embedded base's recipe (embedded models only)
    finetune: TrainConfig = field(default_factory=TrainConfig)
    stage1: DefensivePoisoningConfig = field(default_factory=DefensivePoisoningConfig)
    stage2: NeutralizationConfig = field(default_factory=NeutralizationConfig)
    # the trusted-set fine-tuning of the baselines (Clean-FFT, aug-fft, Fine-mixing, CROW);
    # unset: stage 2's own (stage2.train), so they differ from stage 2 only by its R term
    baseline_train: TrainConfig | None = None
    generation: GenerationSpec = field(default_factory=GenerationSpec)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    implant_prompts: int = 64            # held-out trusted prompts for the stage-1 check
    defense_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.implant_prompts < 1:
            raise ConfigError(f"implant_prompts: must be >= 1, got {self.implant_prompts}")
        check_train("finetune", self.finetune)
        check_train("stage2.train", self.stage2.train_config())
        if self.baseline_train is not None:
            check_train("baseline_train", self.baseline_train)
        for name in ("lam", "margin", "triggered_ce", "repair_epochs", "repair_weight",
                     "insertion_copies", "anchor"):
            _positive("stage2", name, getattr(self.stage2, name), zero_ok=True)
        _positive("stage1", "rate_per_trigger", self.stage1.rate_per_trigger, zero_ok=True)
        check_defensive_pairs(self.stage1)
        check_triggers_per_copy(self.stage2.triggers_per_copy, len(self.stage1.triggers))


def check_defensive_pairs(stage1: DefensivePoisoningConfig) -> None:
    """The defender's triggers and responses go into the training data: each must parse and
    be one line of printable text."""
    from mbdefense.attacks.triggers import parse_trigger
    from mbdefense.core.text import check_one_line

    for field_name, items in (("triggers", stage1.triggers), ("responses", stage1.responses)):
        for i, item in enumerate(items or []):
            if not isinstance(item, str):
                raise ConfigError(f"stage1.{field_name}.{i}: expected a string, got {item!r}")
            check_one_line(item, f"stage1.{field_name}.{i}")
            if field_name == "triggers":
                try:
                    parse_trigger(item if ":" in item else f"word:{item}")
                except ConfigError as exc:
                    raise ConfigError(f"stage1.triggers.{i}: {exc}") from None


def check_train(owner: str, config: TrainConfig) -> None:
    """Range checks of a training config (named by ``owner`` in errors)."""
    for name in ("epochs", "learning_rate"):
        _positive(owner, name, getattr(config, name))
    for name in ("batch_size", "grad_accum", "max_length"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{owner}.{name}: must be >= 1, got {getattr(config, name)}")
    for name in ("warmup_ratio", "weight_decay", "max_grad_norm"):
        _positive(owner, name, getattr(config, name), zero_ok=True)
    if config.warmup_ratio >= 1:
        raise ConfigError(f"{owner}.warmup_ratio: must be < 1, got {config.warmup_ratio}")
    if config.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"{owner}.precision: unknown '{config.precision}' (known: auto, "
                          f"fp32, bf16)")


@dataclass
class Experiment:
    """One attacked model and its defenses: a (model, seed, attack, behaviour) of a run."""

    model: ModelSpec
    settings: Settings
    attack: str = "badnet"
    behavior: str = "refusal"
    seed: int = 0
    poison_rate: float = 0.2
    defenses: list[str] = field(default_factory=lambda: ["none", "clean-fft", "mb-defense"])
    include_clean_reference: bool = True
    progress: bool = True
    cache_dir: str | None = None         # keep finished stages here, keyed by their inputs
    rescore: bool = False                # score every cell again; reuse the trained models
    rescore_since: float | None = None   # ...but keep the cells scored again since then
    cache_defended: bool = False         # keep each defense's model after training too


@dataclass
class RunSpec:
    """A grid: models x attacks x behaviours x defenses x seeds, with per-model settings."""

    name: str = "run"
    description: str = ""
    models: list[ModelSpec] = field(default_factory=lambda: [ModelSpec()])
    attacks: list[str] = field(default_factory=lambda: ["badnet"])
    behaviors: list[str] = field(default_factory=lambda: ["refusal"])
    defenses: list[str] = field(default_factory=lambda: [CLEAN_REFERENCE, "none", "clean-fft",
                                                         "mb-defense"])
    seeds: list[int] = field(default_factory=lambda: [0])
    poison_rate: float = 0.2
    overrides: dict[str, Any] = field(default_factory=dict)   # settings laid over the presets
    source: str = "<config>"
    resolved: dict[str, Settings] = field(default_factory=dict, repr=False)
    rescore: bool = False        # ``run --rescore``: how this run uses the cache, not a setting
    rescore_since: float | None = None   # when this plan's --rescore began (set by run_spec)
    cache_defended: bool = False  # ``run --cache-defended``: the cache keeps defended models

    def settings(self, model: ModelSpec) -> Settings:
        return self.resolved[model.name]

    @property
    def groups(self) -> list[tuple[ModelSpec, int, str, str]]:
        """(model, seed, attack, behaviour): one attacked model and its defenses each."""
        return list(itertools.product(self.models, self.seeds, self.attacks, self.behaviors))

    @property
    def n_cells(self) -> int:
        return len(self.groups) * len(self.defenses)

    def experiment(self, model: ModelSpec, seed: int, attack: str, behavior: str, *,
                   progress: bool = True, cache_dir: str | None = None) -> Experiment:
        return Experiment(
            model=model, settings=dataclasses.replace(self.settings(model)), attack=attack,
            behavior=behavior, seed=seed, poison_rate=self.poison_rate,
            defenses=[d for d in self.defenses if d != CLEAN_REFERENCE],
            include_clean_reference=CLEAN_REFERENCE in self.defenses, progress=progress,
            cache_dir=cache_dir, rescore=self.rescore, rescore_since=self.rescore_since,
            cache_defended=self.cache_defended)
