"""The stage-2 (backdoor neutralization) objective of MB-Defense.

For a clean example (x, y) and a defensive trigger j with behaviour y_d^j, x_d^j is x with the
trigger inserted. The loss is

    L = CE(x, y) - lambda * mean_j log sigmoid( log p(y | x_d^j) - log p(y_d^j | x_d^j) - margin )

where log p(. | .) is the response's log-likelihood: summed over its tokens (the paper) or
averaged per token (``reduction="mean"``). All 1 + 2T sequences of a batch go through the model
in a single forward pass, and only their response positions are projected onto the vocabulary
(``mbdefense.training.logprobs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mbdefense.data.formatting import Encoded
from mbdefense.training.batching import collate
from mbdefense.training.logprobs import labelled_logprobs


@dataclass
class NeutralizationBatch:
    """Encoded sequences of one step: ``clean`` (B), and for each of the B*K (example, trigger)
    pairs the clean answer and the defensive answer under the trigger."""

    clean: list[Encoded]
    triggered_clean: list[Encoded]
    triggered_defensive: list[Encoded]


@dataclass
class ObjectiveTerms:
    loss: Any
    ce: Any
    reg: Any  # mean R (log sigmoid margin), the quantity the defense raises


def neutralization_loss(model: Any, batch: NeutralizationBatch, pad_id: int, lam: float,
                        reduction: str = "sum", margin: float = 0.0) -> ObjectiveTerms:
    """``CE(x, y) - lam * mean R`` for one batch, in one forward pass."""
    import torch.nn.functional as F

    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    n_clean, n_pairs = len(batch.clean), len(batch.triggered_clean)
    items = list(batch.clean) + list(batch.triggered_clean) + list(batch.triggered_defensive)
    device = next(model.parameters()).device
    tensors = {k: v.to(device) for k, v in collate(items, pad_id).items()}
    token_lp = labelled_logprobs(model, tensors["input_ids"], tensors["attention_mask"],
                                 tensors["labels"])
    totals = token_lp.per_sequence("sum")
    counts = token_lp.counts.clamp(min=1).to(totals.dtype)
    ce = -totals[:n_clean].sum() / counts[:n_clean].sum()   # token-mean NLL, as in SFT
    if n_pairs == 0:
        zero = ce.new_zeros(())
        return ObjectiveTerms(ce, ce.detach(), zero)
    scores = totals / counts if reduction == "mean" else totals
    clean_lp = scores[n_clean:n_clean + n_pairs]
    defensive_lp = scores[n_clean + n_pairs:]
    reg = F.logsigmoid(clean_lp - defensive_lp - margin).mean()
    return ObjectiveTerms(ce - lam * reg, ce.detach(), reg.detach())


__all__ = ["NeutralizationBatch", "ObjectiveTerms", "neutralization_loss"]
