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

from dataclasses import dataclass
from typing import Any

from mbdefense.data.formatting import IGNORE_INDEX

# Rows of hidden states projected onto the vocabulary at once (memory: CHUNK_ROWS x vocab).
CHUNK_ROWS = 1024


@dataclass
class TokenLogprobs:
    """``values[k]`` is the log-probability of the k-th labelled token, which belongs to
    sequence ``rows[k]``; ``counts[i]`` is the number of labelled tokens of sequence i."""

    values: Any
    rows: Any
    counts: Any

    def per_sequence(self, reduction: str = "sum") -> Any:
        import torch

        totals = torch.zeros(self.counts.shape[0], dtype=self.values.dtype,
                             device=self.values.device).index_add(0, self.rows, self.values)
        if reduction == "sum":
            return totals
        if reduction == "mean":
            return totals / self.counts.clamp(min=1).to(totals.dtype)
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")

    def mean_nll(self) -> Any:
        """Token-mean negative log-likelihood (the SFT cross-entropy)."""
        return -self.values.sum() / max(int(self.values.numel()), 1)


def _plain_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder, output layer) when logits are ``head(decoder(x).last_hidden_state)``."""
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
        if torch.is_grad_enabled() and h.requires_grad:
            parts.append(checkpoint(_picked_logprobs, head, h, t, use_reentrant=False))
        else:
            parts.append(_picked_logprobs(head, h, t))
    if not parts:
        return hidden.new_zeros((0,), dtype=torch.float32)
    return torch.cat(parts)


def labelled_logprobs(model: Any, input_ids: Any, attention_mask: Any,
                      labels: Any) -> TokenLogprobs:
    """Log-probabilities of every labelled token (``labels != IGNORE_INDEX``), one forward."""
    import torch

    mask = labels[:, 1:] != IGNORE_INDEX
    rows, cols = torch.nonzero(mask, as_tuple=True)
    targets = labels[:, 1:][rows, cols]
    counts = mask.sum(dim=1)
    plain = _plain_head(model)
    if plain is not None:
        decoder, head = plain
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask,
                         use_cache=False).last_hidden_state
        values = _chunked_logprobs(head, hidden[:, :-1][rows, cols], targets)
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        picked = logits[:, :-1][rows, cols].float()
        values = picked.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(picked, -1)
    return TokenLogprobs(values, rows, counts)


__all__ = ["CHUNK_ROWS", "TokenLogprobs", "labelled_logprobs"]
