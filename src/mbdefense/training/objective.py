"""The stage-2 (backdoor neutralization) objective of MB-Defense.

For a clean example (x, y) and a defensive trigger j with behaviour y_d^j, x_d^j is x with the
trigger inserted. The loss is

    L = CE(x, y) - lambda * mean_j log sigmoid( log p(y | x_d^j) - log p(y_d^j | x_d^j) - margin )
          + gamma * CE(x_d^j, y) + alpha * KL(p_0(. | x, y_<t) || p(. | x, y_<t))

where log p(. | .) is the response's log-likelihood: summed over its tokens (the paper) or
averaged per token (``reduction="mean"``), in R over every token of each answer or, with
``r_tokens`` k, its first k alone: where the model decides whether to start the behaviour
(the rest of a memorised defensive answer follows from its opening, and pushing those tokens
down changes the model more than what it does). The last term (``triggered_ce``, gamma; 0 in
the paper) asks for the clean answer itself under a defensive trigger, not only for it to beat the
defensive one: a repair, not only a break. The KL term (``anchor``, alpha; 0 in the paper)
holds the model's whole next-token distribution on the clean answers to the model stage 2
started from (p_0, the stage-1 model): stage 2 should change what the model does under a
trigger, not elsewhere.

All 1 + 2T sequences of a batch go through the model
in a single forward pass, packed several to a row where the model keeps packed sequences apart
(the short defensive answers would otherwise be padded to the longest clean one), and only
their response positions are projected onto the vocabulary (``mbdefense.training.logprobs``);
with the anchor, the clean answers' positions get their whole distributions from the same
pass, and the starting model reads the clean sequences in one more pass, without gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from mbdefense.data.formatting import Encoded
from mbdefense.training.batching import labelled_count
from mbdefense.training.logprobs import sequence_logprobs

#: The model stage 2 started from, as a function of encoded sequences to their labelled
#: positions' log-distributions (:func:`labelled_log_distributions`), called without gradients.
Teacher = Callable[[Sequence[Encoded]], Any]


@dataclass
class NeutralizationBatch:
    """Encoded sequences of one step: ``clean`` (B), and for each of the B*K (example, trigger)
    pairs the clean answer and the defensive answer under the trigger.

    ``clean_tokens`` and ``n_pairs`` count the labelled clean tokens and the pairs of the
    whole global batch (filled in when left None), the denominators of CE and R, so a
    process's shard gives its part of the batch's loss. ``weight`` is 0 for the stand-in
    shard of a process left without any item. ``anchor_sources`` (one per clean sequence,
    default: the clean sequences themselves) are what the anchor term's starting model reads:
    a copy with a random insertion is held to the starting model's answer on the prompt
    without it (the same answer tokens, so the same positions).
    """

    clean: list[Encoded]
    triggered_clean: list[Encoded]
    triggered_defensive: list[Encoded]
    clean_tokens: int | None = None
    n_pairs: int | None = None
    weight: float = 1.0
    triggered_tokens: int | None = None   # labelled tokens of the triggered clean answers
    anchor_sources: list[Encoded] | None = None

    def __post_init__(self) -> None:
        if self.anchor_sources is not None and len(self.anchor_sources) != len(self.clean):
            raise ValueError("anchor_sources: one per clean sequence")
        if self.clean_tokens is None:
            self.clean_tokens = sum(labelled_count(e) for e in self.clean)
        if self.n_pairs is None:
            self.n_pairs = len(self.triggered_clean)
        if self.triggered_tokens is None:
            self.triggered_tokens = sum(labelled_count(e) for e in self.triggered_clean)

    def shard(self, rank: int, world: int) -> "NeutralizationBatch":
        """Every ``world``-th clean sequence and every ``world``-th pair, from ``rank``."""
        rows, pairs = slice(rank, None, world), slice(rank, None, world)
        weight = self.weight
        if not self.clean[rows] and not self.triggered_clean[pairs]:
            rows, pairs, weight = slice(0, 1), slice(0, 1), 0.0
        sources = None if self.anchor_sources is None else self.anchor_sources[rows]
        return NeutralizationBatch(self.clean[rows], self.triggered_clean[pairs],
                                   self.triggered_defensive[pairs], self.clean_tokens,
                                   self.n_pairs, weight, self.triggered_tokens, sources)


@dataclass
class ObjectiveTerms:
    loss: Any
    ce: Any
    reg: Any  # mean R (log sigmoid margin), the quantity the defense raises
    triggered_ce: Any = None  # CE of the clean answers under the defensive triggers
    anchor_kl: Any = None     # token-mean KL(starting model || model) on the clean answers


def neutralization_loss(model: Any, batch: NeutralizationBatch, pad_id: int, lam: float,
                        reduction: str = "sum", margin: float = 0.0,
                        triggered_ce: float = 0.0, anchor: float = 0.0,
                        teacher: Teacher | None = None, r_tokens: int = 0) -> ObjectiveTerms:
    """``CE(x, y) - lam * mean R + triggered_ce * CE(x_d, y) + anchor * KL`` for one batch (or
    a process's shard of it: its part of the whole batch's terms), in one forward pass over
    all of its sequences (and one of the ``teacher``, without gradients, when ``anchor`` is
    set). ``r_tokens`` > 0 scores R on each answer's first ``r_tokens`` tokens alone."""
    import torch.nn.functional as F

    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    n_clean, n_pairs = len(batch.clean), len(batch.triggered_clean)
    items = list(batch.clean) + list(batch.triggered_clean) + list(batch.triggered_defensive)
    token_lp = sequence_logprobs(model, items, pad_id, distributions_of=n_clean if anchor else 0)
    totals = token_lp.per_sequence("sum")
    # token-mean NLL over the whole batch's clean answers, as in SFT
    ce = -totals[:n_clean].sum() * (batch.weight / max(batch.clean_tokens, 1))
    kl = _anchor_kl(token_lp.distributions, batch, teacher) if anchor else None
    held = ce if kl is None else ce + anchor * kl
    kl_value = None if kl is None else kl.detach()
    if not batch.n_pairs:
        return ObjectiveTerms(held, ce.detach(), ce.new_zeros(()), anchor_kl=kl_value)
    scored = token_lp.first(r_tokens) if r_tokens else token_lp
    scores = scored.per_sequence(reduction)
    clean_lp = scores[n_clean:n_clean + n_pairs]
    defensive_lp = scores[n_clean + n_pairs:]
    reg = F.logsigmoid(clean_lp - defensive_lp - margin).sum() * (batch.weight / batch.n_pairs)
    # token-mean NLL of the clean answers under the triggers, over the whole batch's pairs
    trig_ce = -totals[n_clean:n_clean + n_pairs].sum() * (
        batch.weight / max(batch.triggered_tokens or 0, 1))
    loss = held - lam * reg + (triggered_ce * trig_ce if triggered_ce else 0.0)
    return ObjectiveTerms(loss, ce.detach(), reg.detach(), trig_ce.detach(), kl_value)


def _anchor_kl(student: Any, batch: NeutralizationBatch, teacher: Teacher | None) -> Any:
    """Token-mean KL(teacher || model) over the clean answers' labelled positions (``student``:
    the model's log-distributions there), normalised by the whole batch's clean tokens like
    CE."""
    import torch

    if teacher is None:
        raise ValueError("the anchor term needs the starting model (teacher)")
    with torch.no_grad():
        reference = teacher(batch.anchor_sources or batch.clean)
    if reference.shape != student.shape:
        raise ValueError("anchor_sources: each must label the same answer tokens as its "
                         "clean sequence")
    kl = (reference.exp() * (reference - student)).sum()
    return kl * (batch.weight / max(batch.clean_tokens, 1))


__all__ = ["NeutralizationBatch", "ObjectiveTerms", "neutralization_loss"]
