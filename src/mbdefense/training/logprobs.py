"""Log-likelihoods of the labelled (response) tokens, without full-vocabulary logits everywhere.

A causal LM's forward pass normally projects every position onto the vocabulary. Training and
the stage-2 objective only need the positions whose next token is labelled (the response), so
this module runs the decoder once, picks those hidden states, and projects only them, in
chunks that are recomputed in the backward pass. For a 49k-token vocabulary this removes most
of the memory of a step and the output-layer compute spent on prompts and padding.

Models whose logits are not a plain linear map of the last hidden state (logit soft-capping or
scaling) fall back to the full forward pass, with the same results.
"""

from __future__ import annotations

import contextlib
import weakref
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from mbdefense.data.formatting import IGNORE_INDEX, Encoded

# Rows of hidden states projected onto the vocabulary at once (memory: CHUNK_ROWS x vocab).
CHUNK_ROWS = 1024
# Logits of a chunk are recomputed in the backward pass (not kept) above this many elements;
# below it, keeping them costs little memory and saves the second projection.
RECOMPUTE_ABOVE = 1 << 22

_WHOLE_FORWARD: ContextVar[bool] = ContextVar("whole_model_forward", default=False)


@contextlib.contextmanager
def whole_model_forward() -> Iterator[None]:
    """Call the model's own forward (full logits) inside this block. A model wrapped by a
    distributed engine (DDP, FSDP, DeepSpeed) gathers and syncs its weights in that forward,
    so its decoder and output layer must not be called apart."""
    token = _WHOLE_FORWARD.set(True)
    try:
        yield
    finally:
        _WHOLE_FORWARD.reset(token)


@dataclass
class TokenLogprobs:
    """``values[k]`` is the log-probability of the k-th labelled token, which belongs to
    sequence ``rows[k]``; ``counts[i]`` is the number of labelled tokens of sequence i.
    ``distributions``, when asked for: the whole next-token log-distributions (float32) at
    the labelled positions of the first sequences, sequence by sequence in position order
    (the order of :func:`labelled_log_distributions`)."""

    values: Any
    rows: Any
    counts: Any
    distributions: Any = None

    def per_sequence(self, reduction: str = "sum") -> Any:
        import torch

        totals = torch.zeros(self.counts.shape[0], dtype=self.values.dtype,
                             device=self.values.device).index_add(0, self.rows, self.values)
        if reduction == "sum":
            return totals
        if reduction == "mean":
            return totals / self.counts.clamp(min=1).to(totals.dtype)
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")

    def first(self, k: int) -> "TokenLogprobs":
        """The same sequences, each cut to its first ``k`` labelled tokens (its answer's
        opening; every token when it has fewer). Relies on each sequence's tokens coming in
        position order, as :func:`labelled_logprobs` gives them."""
        import torch

        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        order = torch.sort(self.rows, stable=True).indices
        sorted_rows = self.rows[order]
        starts = torch.cumsum(self.counts, 0) - self.counts    # each sequence's first slot
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device) - starts[sorted_rows]
        keep = rank < k
        return TokenLogprobs(self.values[keep], self.rows[keep], self.counts.clamp(max=k))

    def mean_nll(self) -> Any:
        """Token-mean negative log-likelihood (the SFT cross-entropy)."""
        return -self.values.sum() / max(int(self.values.numel()), 1)


def _plain_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder, output layer) when logits are ``head(decoder(x).last_hidden_state)``."""
    if _WHOLE_FORWARD.get():
        return None
    config = getattr(model, "config", None)
    if config is not None and (getattr(config, "final_logit_softcapping", None)
                               or getattr(config, "logit_scale", None)):
        return None
    get_decoder = getattr(model, "get_decoder", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if get_decoder is None or get_head is None:
        return None
    try:
        decoder, head = get_decoder(), get_head()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or head is None or decoder is model:
        return None
    return decoder, head


def _picked_logprobs(head: Any, hidden: Any, targets: Any) -> Any:
    import torch

    logits = head(hidden).float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _chunked_logprobs(head: Any, hidden: Any, targets: Any) -> Any:
    import torch
    from torch.utils.checkpoint import checkpoint

    parts = []
    for start in range(0, hidden.shape[0], CHUNK_ROWS):
        h, t = hidden[start:start + CHUNK_ROWS], targets[start:start + CHUNK_ROWS]
        if torch.is_grad_enabled() and h.requires_grad \
                and h.shape[0] * head.weight.shape[0] > RECOMPUTE_ABOVE:
            parts.append(checkpoint(_picked_logprobs, head, h, t, use_reentrant=False))
        else:
            parts.append(_picked_logprobs(head, h, t))
    if not parts:
        return hidden.new_zeros((0,), dtype=torch.float32)
    return torch.cat(parts)


def labelled_logprobs(model: Any, input_ids: Any, attention_mask: Any, labels: Any, *,
                      position_ids: Any = None, sequence_ids: Any = None,
                      distributions_of: int = 0) -> TokenLogprobs:
    """Log-probabilities of every labelled token (``labels != IGNORE_INDEX``), one forward.

    Padded rows (one sequence each) come with their ``attention_mask``; packed rows
    (:func:`mbdefense.training.batching.collate_packed`) with ``position_ids`` and
    ``sequence_ids`` instead, and the result is per sequence, not per row. With
    ``distributions_of=n``, the same pass also gives the whole log-distributions at the
    labelled positions of sequences ``0 .. n-1`` (``TokenLogprobs.distributions``).
    """
    import torch

    mask = labels[:, 1:] != IGNORE_INDEX
    rows, cols = torch.nonzero(mask, as_tuple=True)
    targets = labels[:, 1:][rows, cols]
    if sequence_ids is None:
        owners, counts = rows, mask.sum(dim=1)
    else:
        owners = sequence_ids[:, 1:][rows, cols]
        counts = torch.bincount(owners, minlength=int(sequence_ids.max()) + 1)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if position_ids is not None:   # packed rows; a cache would make transformers ignore them
        inputs.update(position_ids=position_ids, use_cache=False)
    states, head = _labelled_states(model, inputs, rows, cols)
    if head is not None:
        values = _chunked_logprobs(head, states, targets)
    else:
        picked = states.float()
        values = picked.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(picked, -1)
    distributions = None
    if distributions_of:
        # a sequence's tokens are in position order (one row each); order the sequences
        chosen = torch.nonzero(owners < distributions_of, as_tuple=True)[0]
        chosen = chosen[torch.sort(owners[chosen], stable=True).indices]
        distributions = _log_distributions(states[chosen], head)
    return TokenLogprobs(values, owners, counts, distributions)


def _labelled_states(model: Any, inputs: dict[str, Any], rows: Any, cols: Any
                     ) -> tuple[Any, Any]:
    """The last hidden states at the labelled positions (``rows``, ``cols`` of the shifted
    labels) and the output layer, or the logits there and None for models without a plain
    head: one forward pass either way."""
    plain = _plain_head(model)
    if plain is None:
        return model(**inputs).logits[:, :-1][rows, cols], None
    decoder, head = plain
    hidden = decoder(**{"use_cache": False, **inputs}).last_hidden_state
    return hidden[:, :-1][rows, cols], head


def _log_distributions(states: Any, head: Any) -> Any:
    """Whole float32 log-distributions from :func:`_labelled_states`' output (logits when
    ``head`` is None)."""
    import torch

    logits = states if head is None else head(states)
    return torch.log_softmax(logits.float(), dim=-1)


def labelled_log_distributions(model: Any, items: Sequence[Encoded], pad_id: int) -> Any:
    """The model's whole next-token log-distribution (``(labelled tokens, vocab)``, float32) at
    every labelled position of ``items``, in the order of :func:`sequence_logprobs`'s values
    for the same items padded one per row. For distillation terms, where the picked token's
    log-probability is not enough; only the labelled positions are projected."""
    import torch

    from mbdefense.training.batching import collate

    device = next(model.parameters()).device
    tensors = {k: v.to(device) for k, v in collate(items, pad_id).items()}
    labels = tensors.pop("labels")
    rows, cols = torch.nonzero(labels[:, 1:] != IGNORE_INDEX, as_tuple=True)
    states, head = _labelled_states(model, tensors, rows, cols)
    return _log_distributions(states, head)


def packs_sequences(model: Any) -> bool:
    """Whether ``model`` keeps packed sequences apart, checked once per model: two short
    sequences packed in one row must score as they do padded in rows of their own. Models that ignore
    the ``position_ids`` boundaries (or don't take them) get padded batches."""
    import torch

    from mbdefense.training.batching import collate, collate_packed

    target = getattr(model, "module", model)       # under DDP, the wrapped model
    if target in _PACKING_CHECKED:
        return _PACKING_CHECKED[target]
    ok = False
    try:
        from transformers import PreTrainedModel

        if isinstance(target, PreTrainedModel):
            vocab = target.get_input_embeddings().weight.shape[0]
            items = [Encoded([(7 * i + 3) % vocab for i in range(n)],
                             [IGNORE_INDEX] * 2 + [(7 * i + 3) % vocab for i in range(2, n)], 2)
                     for n in (12, 6, 5)]   # rows: [12] and [6, 5]
            with torch.no_grad():
                device = next(target.parameters()).device
                padded = {k: v.to(device) for k, v in collate(items, 0).items()}
                packed = {k: v.to(device) for k, v in collate_packed(items, 0).items()}
                a = labelled_logprobs(target, **padded).per_sequence("mean")
                b = labelled_logprobs(target, packed["input_ids"], None, packed["labels"],
                                      position_ids=packed["position_ids"],
                                      sequence_ids=packed["sequence_ids"]).per_sequence("mean")
            exact = next(target.parameters()).dtype == torch.float32
            ok = bool(torch.allclose(a.float(), b.float(), atol=1e-4 if exact else 3e-2))
    except (TypeError, ValueError, RuntimeError):
        ok = False
    _PACKING_CHECKED[target] = ok
    return ok


_PACKING_CHECKED: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


def sequence_logprobs(model: Any, items: Sequence[Encoded], pad_id: int, *,
                      distributions_of: int = 0) -> TokenLogprobs:
    """:func:`labelled_logprobs` of encoded sequences (``owners`` index ``items``), packed
    several to a row when the model keeps packed sequences apart, else one per padded row.
    Either way no row is longer than the longest sequence; packing leaves almost no padding
    (short answers fill the rows that a padded batch would pad to the longest).
    ``distributions_of``: as in :func:`labelled_logprobs` (the first items)."""
    from mbdefense.training.batching import collate, collate_packed

    device = next(model.parameters()).device
    if packs_sequences(model):
        packed = {k: v.to(device) for k, v in collate_packed(items, pad_id).items()}
        return labelled_logprobs(model, packed["input_ids"], None, packed["labels"],
                                 position_ids=packed["position_ids"],
                                 sequence_ids=packed["sequence_ids"],
                                 distributions_of=distributions_of)
    tensors = {k: v.to(device) for k, v in collate(items, pad_id).items()}
    return labelled_logprobs(model, tensors["input_ids"], tensors["attention_mask"],
                             tensors["labels"], distributions_of=distributions_of)


__all__ = ["CHUNK_ROWS", "TokenLogprobs", "labelled_log_distributions", "labelled_logprobs",
           "packs_sequences", "sequence_logprobs", "whole_model_forward"]
