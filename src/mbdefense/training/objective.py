"""The stage-2 (backdoor neutralization) objective of MB-Defense.

For a clean example (x, y) and a defensive trigger j with behaviour y_d^j, x_d^j is x with the
trigger inserted. The loss is

    L = CE(x, y) - lambda * mean_j log sigmoid( log p(y | x_d^j) - log p(y_d^j | x_d^j) - margin )

where log p(. | .) is the response's log-likelihood: summed over its tokens (the paper) or
averaged per token (``reduction="mean"``). All 1 + 2T sequences of a batch go through the model
in a single forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mbdefense.data.formatting import IGNORE_INDEX, Encoded
from mbdefense.training.batching import collate


@dataclass
class NeutralizationBatch:
    """Encoded sequences of one step: ``clean`` (B), and for each of the B*K (example, trigger)
    pairs the clean answer and the defensive answer under the trigger."""

    clean: list[Encoded]
    triggered_clean: list[Encoded]
    triggered_defensive: list[Encoded]


def sequence_logprobs(logits: Any, labels: Any, reduction: str = "sum") -> tuple[Any, Any]:
    """Per-sequence log-likelihood of the labelled tokens and the token counts.

    ``logits`` is [N, L, V] and ``labels`` [N, L] with ``IGNORE_INDEX`` off the response.
    Only labelled positions are normalised, which keeps memory small for large vocabularies.
    """
    import torch

    shifted_logits = logits[:, :-1, :]
    shifted_labels = labels[:, 1:]
    mask = shifted_labels != IGNORE_INDEX
    rows = torch.nonzero(mask, as_tuple=True)
    picked = shifted_logits[rows].float()                      # [M, V]
    targets = shifted_labels[rows]                              # [M]
    token_lp = picked.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(picked, dim=-1)
    totals = torch.zeros(labels.shape[0], dtype=token_lp.dtype, device=token_lp.device)
    totals = totals.index_add(0, rows[0], token_lp)
    counts = mask.sum(dim=1).clamp(min=1).to(token_lp.dtype)
    if reduction == "mean":
        return totals / counts, counts
    if reduction != "sum":
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    return totals, counts


@dataclass
class ObjectiveTerms:
    loss: Any
    ce: Any
    reg: Any  # mean R (log sigmoid margin), the quantity the defense raises


def neutralization_loss(model: Any, batch: NeutralizationBatch, pad_id: int, lam: float,
                        reduction: str = "sum", margin: float = 0.0) -> ObjectiveTerms:
    """``CE(x, y) - lam * mean R`` for one batch, in one forward pass."""
    import torch
    import torch.nn.functional as F

    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    n_clean, n_pairs = len(batch.clean), len(batch.triggered_clean)
    items = list(batch.clean) + list(batch.triggered_clean) + list(batch.triggered_defensive)
    device = next(model.parameters()).device
    tensors = {k: v.to(device) for k, v in collate(items, pad_id).items()}
    logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits
    labels = tensors["labels"]

    totals, counts = sequence_logprobs(logits, labels, reduction="sum")
    ce = -totals[:n_clean].sum() / counts[:n_clean].sum()   # token-mean NLL, as in SFT
    if n_pairs == 0:
        zero = ce.new_zeros(())
        return ObjectiveTerms(ce, ce.detach(), zero)
    scores = totals / counts if reduction == "mean" else totals
    clean_lp = scores[n_clean:n_clean + n_pairs]
    defensive_lp = scores[n_clean + n_pairs:]
    reg = F.logsigmoid(clean_lp - defensive_lp - margin).mean()
    return ObjectiveTerms(ce - lam * reg, ce.detach(), reg.detach())


__all__ = ["NeutralizationBatch", "ObjectiveTerms", "neutralization_loss", "sequence_logprobs"]
