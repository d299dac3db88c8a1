"""Pruning (Wanda): zero the weights that matter least on clean calibration data.

Follows Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models"
(ICLR 2024), as BackdoorLLM's DefenseBox runs it against backdoors: unstructured pruning of
every ``nn.Linear`` inside the transformer blocks (attention and MLP projections; the
embeddings and the output head are left alone). The score of weight ``W[i, j]`` is
``|W[i, j]| * ||X_j||_2``, where ``X_j`` is input feature ``j`` of that layer over every
calibration token; within each output row (Wanda's per-output comparison group) the
``floor(sparsity * in_features)`` lowest-scoring weights are set to zero. Blocks are pruned one
after the other, and a block's input statistics are taken with the blocks before it already
pruned, as Wanda does. Calibration data: the defender's trusted clean examples, each as the
chat-formatted prompt followed by its answer (the paper calibrates on 128 C4 sequences).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from mbdefense.core.errors import ConfigError
from mbdefense.data.example import Example
from mbdefense.data.formatting import encode_examples
from mbdefense.defenses.base import Capabilities, Defense
from mbdefense.training.batching import pad_id_of, pad_sequences

_WHERE = "defense pruning"


@dataclass
class PruningOptions:
    sparsity: float = 0.5     # share of each output row's weights set to zero, in [0, 1)
    batch_size: int = 8       # calibration sequences per forward pass

    def __post_init__(self) -> None:
        s = self.sparsity
        if isinstance(s, bool) or not isinstance(s, (int, float)) or math.isnan(s) \
                or not 0.0 <= s < 1.0:
            raise ConfigError(f"{_WHERE}: option 'sparsity' must lie in [0, 1), got {s!r}")
        self.sparsity = float(s)
        b = self.batch_size
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ConfigError(f"{_WHERE}: option 'batch_size' must be a whole number >= 1, "
                              f"got {b!r}")


def decoder_layers(model: Any) -> list[Any]:
    """The model's transformer blocks, in order: the ``nn.ModuleList`` with
    ``config.num_hidden_layers`` entries (the first one found)."""
    import torch

    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count and count:
            return list(module)
    raise ConfigError(f"cannot find the transformer blocks of {type(model).__name__} (no "
                      f"module list with config.num_hidden_layers = {count} entries)")


def block_linears(block: Any) -> dict[str, Any]:
    """Every ``nn.Linear`` inside one block, by its name in the block."""
    import torch

    return {name: m for name, m in block.named_modules() if isinstance(m, torch.nn.Linear)}


def prune_rows(weight: Any, input_sq_norms: Any, sparsity: float) -> int:
    """Zero, in each row of ``weight`` ([out, in], in place), the ``floor(sparsity * in)``
    entries with the lowest ``|W| * sqrt(input_sq_norms)`` (ties: the lower column first).
    ``input_sq_norms`` ([in]) holds each input feature's summed squares over the calibration
    tokens. Returns how many entries per row were zeroed."""
    import torch

    k = int(weight.shape[1] * sparsity)
    if k == 0:
        return 0
    norms = input_sq_norms.to(device=weight.device, dtype=torch.float32).sqrt()
    score = weight.detach().abs().float() * norms[None, :]
    lowest = torch.sort(score, dim=-1, stable=True).indices[:, :k]
    with torch.no_grad():
        weight.scatter_(1, lowest, 0.0)
    return k


class _Stop(Exception):
    """Ends a calibration forward pass once the block being measured has run."""


def calibration_batches(model: Any, tokenizer: Any, examples: Sequence[Example],
                        batch_size: int, max_length: int) -> Iterator[tuple[Any, Any]]:
    """Right-padded ``(input_ids, attention_mask)`` batches of the chat-formatted examples
    (prompt and answer), on the model's device."""
    device = next(model.parameters()).device
    encoded = [e.input_ids for e in encode_examples(tokenizer, examples, max_length)]
    encoded.sort(key=len)
    for start in range(0, len(encoded), batch_size):
        ids, mask = pad_sequences(encoded[start:start + batch_size], pad_id_of(tokenizer))
        yield ids.to(device), mask.to(device)


def input_sq_norms(model: Any, block: Any, batches: Sequence[tuple[Any, Any]]
                   ) -> tuple[dict[str, Any], int]:
    """Each Linear of ``block``: its input features' summed squares over the real (unpadded)
    tokens of ``batches``, from forward passes stopped right after ``block``. Also returns
    how many tokens were counted."""
    import torch

    linears = block_linears(block)
    sums = {name: torch.zeros(m.in_features, dtype=torch.float32, device=m.weight.device)
            for name, m in linears.items()}
    state: dict[str, Any] = {"mask": None}

    def record(name: str):
        def hook(_module: Any, inputs: tuple[Any, ...]) -> None:
            x = inputs[0]
            mask = state["mask"]
            rows = x[mask] if x.shape[:-1] == mask.shape else x.reshape(-1, x.shape[-1])
            sums[name] += rows.float().pow(2).sum(dim=0)
        return hook

    def stop(*_args: Any) -> None:
        raise _Stop

    handles = [m.register_forward_pre_hook(record(name)) for name, m in linears.items()]
    handles.append(block.register_forward_hook(stop))
    tokens = 0
    try:
        with torch.inference_mode():
            for ids, mask in batches:
                state["mask"] = mask.bool()
                tokens += int(mask.sum())
                try:
                    model(input_ids=ids, attention_mask=mask, use_cache=False)
                except _Stop:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    return sums, tokens


def wanda_prune(model: Any, batches: Sequence[tuple[Any, Any]], sparsity: float
                ) -> dict[str, Any]:
    """Prune every Linear of every block of ``model`` in place, block by block (each block's
    statistics measured with the earlier blocks pruned). Returns a report: the pruned layers,
    the weights zeroed, their share, and the calibration tokens."""
    was_training = getattr(model, "training", False)
    model.eval()
    zeroed = total = layers = tokens = 0
    try:
        for block in decoder_layers(model):
            sums, tokens = input_sq_norms(model, block, batches)
            for name, linear in block_linears(block).items():
                k = prune_rows(linear.weight.data, sums[name], sparsity)
                zeroed += k * linear.weight.shape[0]
                total += linear.weight.numel()
                layers += 1
    finally:
        model.train(was_training)
    return {"sparsity": sparsity, "pruned_layers": layers, "zeroed_weights": zeroed,
            "prunable_weights": total, "zeroed_share": zeroed / total if total else 0.0,
            "calibration_tokens": tokens}


class Pruning(Defense):
    """Wanda pruning (Sun et al. 2023) on the trusted clean set, as in BackdoorLLM."""

    name = "pruning"
    capabilities = Capabilities(changes_model=True, baseline_training=True)
    Options = PruningOptions

    def __init__(self, stage1: Any = None, stage2: Any = None, *, seed: int = 0,
                 options: Any = None) -> None:
        super().__init__(seed=seed, options=options)
        train = stage2.train_config() if stage2 is not None else None
        self.max_length = train.max_length if train is not None else 1024

    def after_training(self, model: Any, tokenizer: Any, trusted_set: Sequence[Example], *,
                       clean_model: Any = None) -> Any:
        if not trusted_set:
            raise ConfigError(f"{_WHERE}: needs trusted clean examples to calibrate on")
        batches = list(calibration_batches(model, tokenizer, trusted_set,
                                           self.options.batch_size, self.max_length))
        report = wanda_prune(model, batches, self.options.sparsity)
        self.diagnostics.update(report, calibration_examples=len(trusted_set))
        return model

    def after_training_key(self) -> Any:
        return {"max_length": self.max_length}
