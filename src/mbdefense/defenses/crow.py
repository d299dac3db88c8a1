"""CROW: fine-tune on a little clean data with an internal-consistency regularizer.

Follows Min et al. 2025, "CROW: Eliminating Backdoors from Large Language Models via Internal
Consistency Regularization" (ICML). A backdoor trigger makes the hidden states jump from one
layer to the next where a clean input moves smoothly, so CROW fine-tunes the suspect model on
the defender's trusted clean examples with

    L = CE + alpha * L_cons(adversarial),
    L_cons = mean over consecutive blocks l and tokens t of 1 - cos(h_l[t], h_{l+1}[t]),

where ``h_l`` is the output of transformer block ``l`` (all L blocks, so L - 1 pairs) and the
mean runs over every real (unpadded) token, prompt and answer. The consistency term is taken on
adversarially perturbed input embeddings: one FGSM step ``e + epsilon * sign(grad_e L_cons)``,
the direction that makes the layers least consistent; CE is the usual answer-token
cross-entropy on the unperturbed input. Training uses LoRA adapters on every Linear of the
blocks, merged at the end.

Defaults as the paper reports them, recalled from memory and checked against the authors'
public code where it shows them: epsilon = 0.1 and alpha = 5.5 (the code's values; the paper
raises alpha for some models and tasks), LoRA, a few epochs (5) at learning rate 2e-4 on about
100 clean examples (here: the whole trusted set). The batch size (4) and LoRA rank (8, its
alpha 16) are this implementation's choices. Sequence length, precision and the progress bar
follow the shared stage-2 training settings.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass, replace
from typing import Any, Iterator, Sequence

from mbdefense.core.errors import ConfigError
from mbdefense.data.example import Example
from mbdefense.data.formatting import Encoded, encode_examples
from mbdefense.defenses.base import Capabilities, Defense
from mbdefense.defenses.pruning import decoder_layers
from mbdefense.training.batching import TokenBatch, collate, labelled_count, pad_id_of
from mbdefense.training.config import ALL_LINEAR, LoraSettings, TrainConfig, weight_settings
from mbdefense.training.loop import run_steps
from mbdefense.training.sft import apply_lora, merge_lora, response_loss

_WHERE = "defense crow"


@dataclass
class CrowOptions:
    alpha: float = 5.5            # weight of the adversarial consistency loss
    epsilon: float = 0.1          # FGSM step on the input embeddings
    epochs: float = 5.0
    learning_rate: float = 2e-4
    batch_size: int = 4
    lora_r: int = 8               # LoRA rank (its alpha: 2 * r); 0 fine-tunes every weight

    def __post_init__(self) -> None:
        for name in ("alpha", "epsilon", "epochs", "learning_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{_WHERE}: option '{name}' must be a finite number >= 0, "
                                  f"got {value!r}")
            setattr(self, name, float(value))
        if self.epochs <= 0 or self.learning_rate <= 0:
            raise ConfigError(f"{_WHERE}: options 'epochs' and 'learning_rate' must be > 0, "
                              f"got {self.epochs!r} and {self.learning_rate!r}")
        for name, low in (("batch_size", 1), ("lora_r", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{_WHERE}: option '{name}' must be a whole number >= {low}, "
                                  f"got {value!r}")


@contextlib.contextmanager
def block_outputs(model: Any) -> Iterator[list[Any]]:
    """Collect the output hidden states of every transformer block of ``model`` (in order)
    during the forward passes run inside the block."""
    states: list[Any] = []

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        states.append(output[0] if isinstance(output, (tuple, list)) else output)

    handles = [block.register_forward_hook(hook) for block in decoder_layers(model)]
    try:
        yield states
    finally:
        for handle in handles:
            handle.remove()


def consistency_terms(states: Sequence[Any], mask: Any) -> Any:
    """``1 - cos(h_l, h_{l+1})`` summed over consecutive pairs and the tokens where ``mask``
    is 1, divided by the number of pairs (a scalar; zero with fewer than two states)."""
    import torch
    import torch.nn.functional as F

    if len(states) < 2:
        return mask.new_zeros((), dtype=torch.float32)
    weights = mask.to(torch.float32)
    total = sum(((1 - F.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)) * weights)
                .sum() for a, b in zip(states, states[1:]))
    return total / (len(states) - 1)


def consistency_loss(states: Sequence[Any], mask: Any) -> Any:
    """L_cons: the mean over consecutive pairs and real tokens of ``1 - cos``."""
    return consistency_terms(states, mask) / mask.sum().clamp(min=1)


def _embed_forward(model: Any, embeds: Any, mask: Any) -> list[Any]:
    with block_outputs(model) as states:
        model(inputs_embeds=embeds, attention_mask=mask, use_cache=False, logits_to_keep=1)
    return list(states)


def fgsm_embeddings(model: Any, input_ids: Any, mask: Any, epsilon: float) -> tuple[Any, Any]:
    """``(clean, perturbed)`` input embeddings: the perturbed ones moved by ``epsilon`` in the
    sign of the gradient of L_cons (the FGSM step that most raises it). Both keep the graph to
    the embedding weights; the gradient's forward pass leaves no parameter gradients."""
    import torch

    plain = getattr(model, "module", model)            # a DDP-wrapped model's own module
    clean = plain.get_input_embeddings()(input_ids)
    probe = clean.detach().requires_grad_(True)
    loss = consistency_loss(_embed_forward(model, probe, mask), mask)
    if not loss.requires_grad:                          # fewer than two blocks
        return clean, clean
    (grad,) = torch.autograd.grad(loss, probe)
    return clean, clean + epsilon * grad.sign() * mask[..., None].to(clean.dtype)


@dataclass
class CrowBatch:
    """A global micro-batch: its sequences, and the counts of the whole batch that normalise
    CE (labelled tokens) and L_cons (real tokens)."""

    items: list[Encoded]
    labelled_tokens: int
    tokens: int
    pad_id: int
    weight: float = 1.0

    def shard(self, rank: int, world: int) -> "CrowBatch":
        part = self.items[rank::world]
        if part:
            return CrowBatch(part, self.labelled_tokens, self.tokens, self.pad_id)
        return CrowBatch(self.items[:1], self.labelled_tokens, self.tokens, self.pad_id, 0.0)


def crow_terms(model: Any, batch: CrowBatch, epsilon: float) -> tuple[Any, Any]:
    """(CE on the answer tokens, adversarial L_cons), each normalised by the global batch."""
    device = next(model.parameters()).device
    padded = collate(batch.items, batch.pad_id)
    ids, mask = padded["input_ids"].to(device), padded["attention_mask"].to(device)
    _, perturbed = fgsm_embeddings(model, ids, mask, epsilon)
    adversarial = consistency_terms(_embed_forward(model, perturbed, mask), mask)
    ce = response_loss(model, TokenBatch(batch.items, batch.labelled_tokens, batch.pad_id,
                                         batch.weight))
    return ce, adversarial * (batch.weight / max(batch.tokens, 1))


def make_batch(items: list[Encoded], pad_id: int) -> CrowBatch:
    return CrowBatch(items, sum(labelled_count(e) for e in items),
                     sum(len(e.input_ids) for e in items), pad_id)


def measure(model: Any, encoded: Sequence[Encoded], pad_id: int, epsilon: float,
            batch_size: int = 16) -> dict[str, float]:
    """CE, L_cons and adversarial L_cons of ``model`` on ``encoded`` (eval mode, no update)."""
    import torch

    was_training = getattr(model, "training", False)
    model.eval()
    totals = {"ce": 0.0, "consistency": 0.0, "adversarial_consistency": 0.0}
    device = next(model.parameters()).device
    batch = make_batch(list(encoded), pad_id)
    try:
        for start in range(0, len(encoded), batch_size):
            part = replace(batch, items=list(encoded[start:start + batch_size]))
            padded = collate(part.items, pad_id)
            ids, mask = padded["input_ids"].to(device), padded["attention_mask"].to(device)
            clean, perturbed = fgsm_embeddings(model, ids, mask, epsilon)
            with torch.no_grad():
                totals["consistency"] += float(consistency_terms(
                    _embed_forward(model, clean, mask), mask)) / batch.tokens
                totals["adversarial_consistency"] += float(consistency_terms(
                    _embed_forward(model, perturbed, mask), mask)) / batch.tokens
                totals["ce"] += float(response_loss(model, TokenBatch(
                    part.items, batch.labelled_tokens, pad_id)))
    finally:
        model.train(was_training)
    return totals


def crow_finetune(model: Any, tokenizer: Any, trusted: Sequence[Example], options: CrowOptions,
                  config: TrainConfig) -> tuple[Any, dict[str, Any]]:
    """Run CROW on ``trusted`` with ``config`` (its seed, length, precision and progress;
    epochs, learning rate, batch size and LoRA come from ``options``). Returns the merged
    model and a report: CE and (adversarial) L_cons on the trusted set before and after, and
    the mean CE and consistency term of the first and last epoch's steps."""
    if not trusted:
        raise ConfigError(f"{_WHERE}: needs trusted clean examples to fine-tune on")
    lora = None
    if options.lora_r:
        lora = LoraSettings(r=options.lora_r, alpha=2 * options.lora_r, dropout=0.05,
                            target_modules=[ALL_LINEAR])
    config = replace(config, epochs=options.epochs, learning_rate=options.learning_rate,
                     batch_size=options.batch_size, grad_accum=1, lora=lora)
    pad_id = pad_id_of(tokenizer)
    encoded = encode_examples(tokenizer, trusted, config.max_length)
    before = measure(model, encoded, pad_id, options.epsilon)
    model = apply_lora(model, config)
    steps: list[tuple[float, float]] = []

    def batches(epoch: int) -> Iterator[CrowBatch]:
        order = list(range(len(encoded)))
        random.Random(f"crow:{config.seed}:{epoch}").shuffle(order)
        for start in range(0, len(order), config.batch_size):
            yield make_batch([encoded[i] for i in order[start:start + config.batch_size]],
                             pad_id)

    def loss_fn(m: Any, batch: CrowBatch) -> Any:
        ce, adversarial = crow_terms(m, batch, options.epsilon)
        steps.append((float(ce.detach()), float(adversarial.detach())))
        return ce + options.alpha * adversarial

    per_epoch = math.ceil(len(encoded) / config.batch_size)
    model, _ = run_steps(model, batches, per_epoch, loss_fn, config)
    model = merge_lora(model)
    first, last = steps[:per_epoch], steps[-per_epoch:]
    return model, {
        "before": before, "after": measure(model, encoded, pad_id, options.epsilon),
        "first_epoch": {"ce": sum(s[0] for s in first) / len(first),
                        "adversarial_consistency": sum(s[1] for s in first) / len(first)},
        "last_epoch": {"ce": sum(s[0] for s in last) / len(last),
                       "adversarial_consistency": sum(s[1] for s in last) / len(last)},
        "steps": len(steps), "examples": len(encoded)}


class Crow(Defense):
    """CROW (Min et al. 2025): consistency-regularized fine-tuning on the trusted set."""

    name = "crow"
    capabilities = Capabilities(changes_model=True, baseline_training=True)
    Options = CrowOptions

    def __init__(self, stage1: Any = None, stage2: Any = None, *, seed: int = 0,
                 options: Any = None) -> None:
        super().__init__(seed=seed, options=options)
        self.train = stage2.train_config() if stage2 is not None else TrainConfig()

    def after_training(self, model: Any, tokenizer: Any, trusted_set: Sequence[Example], *,
                       clean_model: Any = None) -> Any:
        config = replace(self.train, seed=self.seed, description="crow")
        model, report = crow_finetune(model, tokenizer, trusted_set, self.options, config)
        self.diagnostics.update(report, alpha=self.options.alpha, epsilon=self.options.epsilon)
        return model

    def after_training_key(self) -> Any:
        return weight_settings(self.train)
