"""Fine-mixing: a model-repair baseline that mixes the attacked weights with clean ones.

Follows Zhang et al. 2022, "Fine-mixing: Mitigating Backdoors in Fine-tuned Language Models"
(Findings of EMNLP). The defender holds the clean pre-trained weights the attacked model was
fine-tuned from. Each floating-point weight entry of the attacked model is kept with
probability ``ratio`` and otherwise replaced by the clean model's entry (an elementwise random
mask, seeded), which erases much of what fine-tuning -- the backdoor included -- wrote into
the weights; a short fine-tune on the trusted clean set then recovers the task. The fine-tune
is exactly Clean-FFT's (the shared stage-2 settings, no defensive pairs). The paper's
embedding-purification step (E-PUR) is not part of this baseline, and the paper picks the
ratio on validation data; here it is an option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from mbdefense.data.example import Example
from mbdefense.defenses.base import Capabilities, Defense
from mbdefense.defenses.neutralization import (NeutralizationConfig, fine_tune_settings,
                                                neutralize)
from mbdefense.core.errors import ConfigError

_WHERE = "defense fine-mixing"


@dataclass
class FineMixingOptions:
    ratio: float = 0.5        # share of the attacked model's weight entries retained, in [0, 1]

    def __post_init__(self) -> None:
        r = self.ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or math.isnan(r) \
                or not 0.0 <= r <= 1.0:
            raise ConfigError(f"{_WHERE}: option 'ratio' must lie in [0, 1], got {r!r}")
        self.ratio = float(r)


def mix_weights(model: Any, clean_model: Any, ratio: float, seed: int = 0, *,
                report: dict[str, Any] | None = None) -> float:
    """Keep a random ``ratio`` share of ``model``'s entries, take the rest from ``clean_model``.

    Applies to every floating-point parameter that both models have under the same name and
    shape; each entry is kept where a uniform draw from a CPU ``torch.Generator`` seeded with
    ``seed`` falls below ``ratio`` (so 1.0 keeps everything and 0.0 nothing). ``model`` is
    changed in place; ``clean_model`` is only read. Returns the share of mixed entries that
    kept the attacked value; ``report``, when given, receives ``mixed_parameters``,
    ``mixed_entries`` and ``skipped`` (the names of the parameters left alone). Raises
    ConfigError when no parameter matches.
    """
    import torch

    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must lie in [0, 1], got {ratio}")
    clean = dict(clean_model.named_parameters())
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    kept = total = mixed = 0
    skipped: list[str] = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            other = clean.get(name)
            if other is None or other.shape != param.shape or not param.is_floating_point():
                skipped.append(name)
                continue
            mask = torch.rand(param.shape, generator=generator) < ratio
            kept += int(mask.sum())
            total += mask.numel()
            mixed += 1
            mask = mask.to(param.device)
            source = other.detach().to(device=param.device, dtype=param.dtype)
            param.copy_(torch.where(mask, param, source))
    if not total:
        raise ConfigError(f"{_WHERE}: no parameter of the attacked model matches the clean "
                          f"model by name and shape (different architectures?)")
    if report is not None:
        report.update(mixed_parameters=mixed, mixed_entries=total, skipped=skipped)
    return kept / total


class FineMixing(Defense):
    """Fine-mixing (Zhang et al. 2022): mix with the clean weights, then Clean-FFT."""

    name = "fine-mixing"
    capabilities = Capabilities(changes_model=True, needs_clean_model=True, baseline_training=True)
    Options = FineMixingOptions

    def __init__(self, stage1: Any = None, stage2: NeutralizationConfig | None = None, *,
                 seed: int = 0, options: Any = None) -> None:
        super().__init__(seed=seed, options=options)
        self.stage2 = stage2 or NeutralizationConfig()

    def after_training(self, model: Any, tokenizer: Any, trusted_set: Sequence[Example], *,
                       clean_model: Any = None) -> Any:
        if clean_model is None:
            raise ConfigError(f"{_WHERE}: needs the clean model fine-tuning started from "
                              f"(after_training(..., clean_model=...))")
        report: dict[str, Any] = {}
        share = mix_weights(model, clean_model, self.options.ratio, seed=self.seed,
                            report=report)
        self.diagnostics["mixing"] = {"ratio": self.options.ratio, "share_retained": share,
                                      "mixed_parameters": report["mixed_parameters"],
                                      "mixed_entries": report["mixed_entries"],
                                      "skipped_parameters": report["skipped"]}
        model, info = neutralize(model, tokenizer, trusted_set, [], self.stage2, seed=self.seed)
        self.diagnostics["fine_tune"] = info
        return model

    def after_training_key(self) -> Any:
        return fine_tune_settings(self.stage2)
