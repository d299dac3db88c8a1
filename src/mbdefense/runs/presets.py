"""The one place for default settings: a preset per kind of model.

- ``embedded``: the tiny Llama on the bundled suite (the demo);
- ``embedded-smoke``: a one-minute version on a smaller model (installation checks, tests);
- ``pretrained``: every real model (a registry name, a folder, a ``.gguf``, a hub id), with
  the paper's settings where it gives them (3 epochs of instruction tuning, 1% defensive
  examples per trigger, 128 trusted examples split 8:2, max length 1024), a floor of 40
  defensive examples per trigger for training sets under 4,000 examples, and stage 2 through
  LoRA on every linear layer at lr 1e-3 with margin 2, each chosen on BackdoorLLM's validation
  quarter with SmolLM2-135M (configs/tune-stage2-smollm2.yaml, docs/results.md); the
  trusted-set baselines train every weight at lr 1e-4.

``defend``'s command-line defaults are the ``pretrained`` preset's (a test checks it).
"""

from __future__ import annotations

from dataclasses import replace

from mbdefense.defenses import DefensivePoisoningConfig, NeutralizationConfig
from mbdefense.defenses.neutralization import full_weight_train, stage2_train_default
from mbdefense.modeling.embedded import TinyModelConfig
from mbdefense.runs.embedded import BaseRecipe
from mbdefense.runs.spec import DataSpec, EvaluationSpec, GenerationSpec, ModelSpec, Settings
from mbdefense.training.config import LoraSettings, TrainConfig


def embedded() -> Settings:
    # the trusted-set baselines (Clean-FFT, aug-fft, Fine-mixing, CROW) train all weights at
    # lr 1e-4, as stage 2 did before it moved to LoRA
    full_weights = replace(full_weight_train(), epochs=5)
    return Settings(
        data=DataSpec(n_train=2000, n_trusted=128, n_test=338),
        base=BaseRecipe(),
        finetune=TrainConfig(epochs=2, learning_rate=3e-4, batch_size=8,
                             description="instruction-tune"),
        # a defensive trigger implanted on under half of the held-out trusted prompts gets the
        # top-up at a sixth of the fine-tune's learning rate (5e-5), chosen on the validation split
        # over every Table 1 column and 3 seeds on an AVX2 CPU (docs/results.md): at 40 per
        # trigger `mn` reached only 0.16-0.52 there, and BGM -> toxic leaked on 20 of 1,014
        # prompts; the top-up brings that to 3, pooled 33 -> 15 of 8,112, CACC within the bound
        stage1=DefensivePoisoningConfig(min_per_trigger=40, on_weak_implant="top-up",
                                        implant_threshold=0.5, top_up_learning_rate=5e-5),
        # margin 12 (per-token nats), LoRA r16 on attention at lr 1e-3, one random-insertion
        # copy per trusted example, and the anchor (KL to the stage-1 model on the clean
        # answers) at weight 2 with R at weight 2, chosen on the validation split over every
        # Table 1 column and 3 seeds (benchmarks/tune_stage2.py, docs/results.md): at margin 5
        # the sentence trigger survives, and at margin 8 BGM -> toxic leaks on one seed; the
        # full model at lr 1e-4 breaks the triggered answers instead of repairing them;
        # insertions repair them, and the anchor keeps the clean answers they cost
        stage2=NeutralizationConfig(margin=12.0, lam=2.0, anchor=2.0, insertion_copies=1,
                                    triggers_per_step="all", train=replace(
                                        full_weights, learning_rate=1e-3,
                                        lora=LoraSettings(r=16, alpha=32))),
        baseline_train=full_weights,
        generation=GenerationSpec(max_new_tokens=24),
        evaluation=EvaluationSpec(scorer="rules"),
        implant_prompts=64)


def embedded_smoke() -> Settings:
    return Settings(
        data=DataSpec(n_train=600, n_trusted=64, n_test=104),
        base=BaseRecipe(shape=TinyModelConfig(vocab_size=768, hidden_size=128, num_layers=2,
                                              num_heads=4, intermediate_size=384),
                        n_per_pool=1500, n_pools=1,
                        train=TrainConfig(epochs=2, learning_rate=1e-3, batch_size=8)),
        finetune=TrainConfig(epochs=2, learning_rate=1e-3, batch_size=8),
        stage1=DefensivePoisoningConfig(triggers=["mn", "bb"], min_per_trigger=30),
        stage2=NeutralizationConfig(margin=0.0, triggers_per_step="all", train=TrainConfig(
            epochs=5, learning_rate=3e-4, batch_size=8)),
        generation=GenerationSpec(max_new_tokens=24),
        evaluation=EvaluationSpec(scorer="rules"),
        implant_prompts=32)


def pretrained() -> Settings:
    return Settings(
        data=DataSpec(n_train=0, n_trusted=128, n_test=0),
        finetune=TrainConfig(epochs=3.0, learning_rate=2e-5, batch_size=8, max_length=1024,
                             description="instruction-tune"),
        # 1% per trigger, at least 40: with 200 training examples (the SmolLM2 runs) 16 per
        # trigger implanted some triggers on under a third of held-out prompts; 40 implanted
        # every one and was chosen on the validation quarter (docs/results.md)
        stage1=DefensivePoisoningConfig(min_per_trigger=40),
        # stage 2's own defaults (NeutralizationConfig: LoRA on every linear layer) at the
        # paper's length; the trusted-set baselines keep training every weight at lr 1e-4, as
        # measured in docs/results.md
        stage2=NeutralizationConfig(train=replace(stage2_train_default(), max_length=1024)),
        baseline_train=replace(full_weight_train(), max_length=1024),
        generation=GenerationSpec(max_new_tokens=128, batch_size=16),
        evaluation=EvaluationSpec(scorer="rouge-l"),
        implant_prompts=32)


PRESETS = {"embedded": embedded, "embedded-smoke": embedded_smoke, "pretrained": pretrained}


def preset_name(model: ModelSpec) -> str:
    return model.name if model.name in PRESETS else "pretrained"


def preset_for(model: ModelSpec) -> Settings:
    """The default settings of ``model``'s kind."""
    return PRESETS[preset_name(model)]()
