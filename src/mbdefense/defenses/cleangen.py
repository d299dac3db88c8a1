"""CleanGen: decoding-time defense that replaces the tokens a backdoor pushes.

Follows Li et al. 2024, "CleanGen: Mitigating Backdoor Attacks for Generation Tasks in Large
Language Models" (EMNLP). The suspect model decodes greedily, ``k`` tokens at a time (the
forecast horizon); a reference model then scores those drafted tokens in one forward pass.
A drafted token ``t`` whose suspicion score ``P_suspect(t) / P_reference(t)`` is at least
``alpha`` is one the backdoor is likely to have pushed: the first such token is replaced by
the reference model's own greedy choice at that position, the drafted tokens after it are
discarded, and drafting resumes from there. The paper's defaults are ``alpha = 20`` and
``k = 4`` (also the authors' code's).

The reference model here is, by default, the clean model the defender started from (the model
before the attacked fine-tune: ``base``); ``reference: PATH`` names another one (it must share
the suspect model's tokenizer). The paper uses a reference model fine-tuned for the same task
(itself backdoored with a different trigger, which works because two backdoors rarely push the
same tokens). Differences from the authors' code: the drafted tokens left at the end of an
answer (fewer than ``k``, cut by a stop token or the length limit) are checked too, and prompts
are decoded in batches (left-padded). Greedy decoding only.

Each model decodes with its own KV cache. A batch's prompts are prefilled into both caches, all
but their last tokens, which are "pending" (committed, not fed yet). A round feeds each row its
pending token and then its drafts: one token per step to the suspect model, which drafts the
next token from each; the same columns in one forward pass to the reference model, which
scores every draft from them. The caches thus always hold the same columns, and one 2D
attention mask serves both. A rejected draft's column is masked (left in the cache as a hole,
not cropped), position ids count each row's real tokens, and the replacement (or the last
accepted draft) is the next round's pending token. Finished rows leave the batch and the
caches. Models the cached loop does not handle (attention other than sdpa or eager,
sliding-window or linear layers) decode without a cache, recomputing every prefix: ``k``
forward passes of the suspect model and one of the reference per round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from mbdefense.core.errors import ConfigError
from mbdefense.data.example import Example
from mbdefense.data.formatting import render_prompt
from mbdefense.defenses.base import Capabilities, Defense
from mbdefense.training.batching import pad_id_of, pad_sequences

_WHERE = "defense cleangen"


@dataclass
class CleanGenOptions:
    alpha: float = 20.0           # suspicious when P_suspect / P_reference >= alpha
    k: int = 4                    # forecast horizon: tokens drafted per reference check
    reference: str = "base"       # "base": the model before the attacked fine-tune; or a spec

    def __post_init__(self) -> None:
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) \
                or a <= 1.0:
            raise ConfigError(f"{_WHERE}: option 'alpha' must be a finite number > 1, "
                              f"got {a!r}")
        self.alpha = float(a)
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"{_WHERE}: option 'k' must be a whole number >= 1, "
                              f"got {self.k!r}")
        if not isinstance(self.reference, str) or not self.reference.strip():
            raise ConfigError(f"{_WHERE}: option 'reference' must be 'base' or a model spec, "
                              f"got {self.reference!r}")


@dataclass
class _Row:
    prompt: list[int]
    out: list[int]
    done: bool = False


@dataclass(frozen=True)
class _Settings:
    threshold: float              # log(alpha)
    k: int
    max_new_tokens: int
    stop_ids: frozenset[int]
    pad_id: int

    def drafts_more(self, row: _Row, draft: list[int]) -> bool:
        """Whether a row drafts another token after ``draft``: not after a stop token, and
        not past the length limit."""
        return draft[-1] not in self.stop_ids and len(row.out) + len(draft) < self.max_new_tokens

    def finished(self, row: _Row) -> bool:
        return row.out[-1] in self.stop_ids or len(row.out) >= self.max_new_tokens


def _first_suspicious(draft_lp: Sequence[float], reference_lp: Sequence[float],
                      threshold: float) -> int:
    """Index of the first drafted token whose suspicion score ``log P_suspect - log
    P_reference`` reaches ``threshold``; ``len(draft_lp)`` when none does."""
    for i, (suspect, ref) in enumerate(zip(draft_lp, reference_lp)):
        if suspect - ref >= threshold:
            return i
    return len(draft_lp)


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def cleangen_token_ids(model: Any, reference: Any, prompts: Sequence[Sequence[int]], *,
                       alpha: float, k: int, max_new_tokens: int, stop_ids: frozenset[int],
                       pad_id: int, batch_size: int = 16,
                       use_cache: bool | None = None) -> tuple[list[list[int]], int]:
    """CleanGen continuations of token-id prompts, in input order, and how many tokens were
    replaced. Each continuation ends with a stop token or has ``max_new_tokens`` tokens.

    ``use_cache``: True decodes with a KV cache per model, False recomputes every prefix in
    each forward pass; None (the default) uses the caches when both models allow it
    (:func:`cache_supported`). Both give the same tokens, up to float rounding.
    """
    import torch

    if any(len(p) == 0 for p in prompts):
        raise ValueError("cleangen: a prompt has no tokens")
    if use_cache is None:
        use_cache = cache_supported(model) and cache_supported(reference)
    decode_batch = _decode_cached if use_cache else _decode_uncached
    settings = _Settings(math.log(alpha), k, max_new_tokens, frozenset(stop_ids), pad_id)
    rows = [_Row(list(p), []) for p in prompts]
    replaced = 0
    if max_new_tokens <= 0:
        return [r.out for r in rows], replaced
    for m in (model, reference):
        m.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].prompt))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = [rows[i] for i in order[start:start + batch_size]]
            replaced += decode_batch(model, reference, batch, settings)
    return [r.out for r in rows], replaced


def cache_supported(model: Any) -> bool:
    """Whether the cached loop handles ``model``: the conditions of the generation loop
    (:func:`~mbdefense.evaluation.generation.supports_packed_prefill`). Sdpa and eager
    attention take a 2D mask with holes (the masked columns of rejected drafts stay in the
    cache); a sliding window would count those columns as tokens."""
    from mbdefense.evaluation.generation import supports_packed_prefill

    return supports_packed_prefill(model)


# --------------------------------------------------------------------------- without a cache


def _last_logits(model: Any, sequences: Sequence[Sequence[int]], pad_id: int,
                 keep: int) -> Any:
    """Log-probabilities ``[B, keep, V]`` of the next token at each sequence's last ``keep``
    positions (left-padded batch, positions counted from each sequence's first token)."""
    import torch

    device = _device(model)
    ids, mask = pad_sequences(sequences, pad_id, left=True)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                   use_cache=False, logits_to_keep=keep).logits[:, -keep:]
    return torch.log_softmax(logits.float(), dim=-1)


def _decode_uncached(model: Any, reference: Any, batch: list[_Row], s: _Settings) -> int:
    """Decode a batch recomputing every prefix in each forward pass (k passes of the suspect
    model and one of the reference per round); how many tokens were replaced. The plain form
    of the algorithm, for models the cached loop does not handle."""
    replaced = 0
    while True:
        live = [r for r in batch if not r.done]
        if not live:
            return replaced
        # the suspect model drafts up to k tokens per row, greedily
        drafts: list[list[int]] = [[] for _ in live]
        draft_lp: list[list[float]] = [[] for _ in live]
        drafting = list(range(len(live)))
        for _ in range(s.k):
            if not drafting:
                break
            lp = _last_logits(model, [live[j].prompt + live[j].out + drafts[j]
                                      for j in drafting], s.pad_id, 1)[:, -1]
            best = lp.argmax(dim=-1)
            for n, j in enumerate(drafting):
                token = int(best[n])
                drafts[j].append(token)
                draft_lp[j].append(float(lp[n, token]))
            drafting = [j for j in drafting if s.drafts_more(live[j], drafts[j])]
        # the reference scores every drafted token in one pass
        width = max(len(d) for d in drafts)
        ref_lp = _last_logits(reference, [r.prompt + r.out + d + [s.pad_id] * (width - len(d))
                                          for r, d in zip(live, drafts)], s.pad_id, width + 1)
        for j, (row, draft) in enumerate(zip(live, drafts)):
            scores = [float(ref_lp[j, i, token]) for i, token in enumerate(draft)]
            i = _first_suspicious(draft_lp[j], scores, s.threshold)
            row.out.extend(draft[:i])
            if i < len(draft):
                row.out.append(int(ref_lp[j, i].argmax()))
                replaced += 1
            row.done = s.finished(row)


# --------------------------------------------------------------------------- with KV caches


@dataclass
class _Cached:
    """A batch decoded with a KV cache per model.

    Both caches always get the same columns: the prompts (left-padded), then every column fed
    in a round. So one 2D ``mask`` ``[B, columns]`` serves both: 1 where a column holds a
    token of the row's text; 0 for padding, for the pad tokens fed to a row that had stopped
    drafting, and for rejected drafts (their keys and values stay in the caches, masked).
    Each row's last committed token is ``pending``: not fed yet, to be fed at ``positions``
    (the row's true position, holes not counted). Tensors are on the suspect model's device.
    """

    rows: list[_Row]
    suspect: Any
    reference: Any
    mask: Any
    pending: Any
    positions: Any
    reference_device: Any


def _decode_cached(model: Any, reference: Any, batch: list[_Row], s: _Settings) -> int:
    """Decode a batch with KV caches; how many tokens were replaced. A round feeds each row
    its pending token and all its drafts but the last: one token per step to the suspect
    model, all at once to the reference."""
    state = _prefill(model, reference, batch, s.pad_id)
    replaced = 0
    while state.rows:
        drafts, draft_lp = _draft(model, state, s)
        ref_lp = _score(reference, state, drafts, s.pad_id)
        replaced += _judge(state, drafts, draft_lp, ref_lp, s)
        _drop_finished(state)
    return replaced


def _prefill(model: Any, reference: Any, batch: list[_Row], pad_id: int) -> _Cached:
    """Both caches filled with the prompts but their last tokens, which are pending: the
    first round then feeds them like any other round its pending tokens."""
    import torch
    from transformers import DynamicCache

    device = _device(model)
    contexts = [row.prompt[:-1] for row in batch]
    state = _Cached(rows=list(batch), suspect=DynamicCache(config=model.config),
                    reference=DynamicCache(config=reference.config),
                    mask=torch.zeros((len(batch), 0), dtype=torch.long, device=device),
                    pending=torch.tensor([row.prompt[-1] for row in batch], device=device),
                    positions=torch.tensor([len(c) for c in contexts], device=device),
                    reference_device=_device(reference))
    if any(contexts):   # else (one-token prompts only) the caches start empty
        ids, mask = pad_sequences(contexts, pad_id, left=True)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        for m, cache, at in ((model, state.suspect, device),
                             (reference, state.reference, state.reference_device)):
            m(input_ids=ids.to(at), attention_mask=mask.to(at), position_ids=positions.to(at),
              cache=cache, use_cache=True, logits_to_keep=1)
        state.mask = mask.to(device)
    return state


def _draft(model: Any, state: _Cached, s: _Settings) -> tuple[list[list[int]], list[list[float]]]:
    """The suspect model drafts up to ``k`` tokens per row, greedily, one step each: the
    first step feeds the pending token, the next ones the token just drafted. A row that has
    stopped drafting (stop token, length limit) is fed the pad token in a masked column, so
    every row gets one column per step. Returns the drafts and their log-probabilities."""
    import torch

    rows = state.rows
    drafts: list[list[int]] = [[] for _ in rows]
    draft_lp: list[list[float]] = [[] for _ in rows]
    drafting = [True] * len(rows)
    feed = state.pending
    for step in range(s.k):
        if not any(drafting):
            break
        column = torch.tensor(drafting, dtype=state.mask.dtype, device=state.mask.device)
        state.mask = torch.cat([state.mask, column[:, None]], dim=1)
        logits = model(input_ids=feed[:, None], attention_mask=state.mask,
                       position_ids=(state.positions + step)[:, None], cache=state.suspect,
                       use_cache=True, logits_to_keep=1).logits[:, -1]
        lp = torch.log_softmax(logits.float(), dim=-1)
        best = lp.argmax(dim=-1)
        picked = lp.gather(1, best[:, None])[:, 0]
        for j, (token, value) in enumerate(zip(best.tolist(), picked.tolist())):
            if drafting[j]:
                drafts[j].append(token)
                draft_lp[j].append(value)
                drafting[j] = s.drafts_more(rows[j], drafts[j])
        feed = torch.where(torch.tensor(drafting, device=best.device), best, s.pad_id)
    return drafts, draft_lp


def _score(reference: Any, state: _Cached, drafts: list[list[int]], pad_id: int) -> Any:
    """The reference model's log-probabilities ``[B, W, V]`` scoring every drafted token
    (``W``: the longest draft), from one forward pass over the columns the suspect model was
    fed this round (the pending token, then each draft but the last), with the same mask."""
    import torch

    width = max(len(d) for d in drafts)
    at = state.reference_device
    ids = torch.tensor([[p] + d[:-1] + [pad_id] * (width - len(d))
                        for p, d in zip(state.pending.tolist(), drafts)], device=at)
    positions = state.positions.to(at)[:, None] + torch.arange(width, device=at)
    logits = reference(input_ids=ids, attention_mask=state.mask.to(at), position_ids=positions,
                       cache=state.reference, use_cache=True, logits_to_keep=width).logits
    return torch.log_softmax(logits.float(), dim=-1)


def _judge(state: _Cached, drafts: list[list[int]], draft_lp: list[list[float]], ref_lp: Any,
           s: _Settings) -> int:
    """Commit each row's draft up to its first suspicious token, replaced by the reference's
    argmax; how many tokens were replaced. The columns of the rejected drafts are masked, and
    the row's last committed token becomes pending."""
    import torch

    width = ref_lp.shape[1]
    index = torch.tensor([d + [s.pad_id] * (width - len(d)) for d in drafts],
                         device=ref_lp.device)
    scores = ref_lp.gather(2, index[:, :, None])[:, :, 0].tolist()
    replaced, kept, pending = 0, [], []
    for j, (row, draft) in enumerate(zip(state.rows, drafts)):
        i = _first_suspicious(draft_lp[j], scores[j][:len(draft)], s.threshold)
        row.out.extend(draft[:i])
        if i < len(draft):
            row.out.append(int(ref_lp[j, i].argmax()))
            replaced += 1
            kept.append(i + 1)          # the pending token and the drafts before the i-th
        else:
            kept.append(len(draft))     # the pending token and all drafts but the last
        pending.append(row.out[-1])     # the replacement, or the last draft
        row.done = s.finished(row)
    device = state.mask.device
    kept_t = torch.tensor(kept, device=device)
    state.mask[:, -width:] = (torch.arange(width, device=device) < kept_t[:, None]).to(
        state.mask.dtype)
    state.positions = state.positions + kept_t
    state.pending = torch.tensor(pending, device=device)
    return replaced


def _drop_finished(state: _Cached) -> None:
    """Finished rows leave the batch: their cache rows, mask, pending token and position."""
    import torch

    running = [j for j, row in enumerate(state.rows) if not row.done]
    if len(running) == len(state.rows):
        return
    state.rows = [state.rows[j] for j in running]
    if not running:
        return
    keep = torch.tensor(running, device=state.mask.device)
    state.suspect.batch_select_indices(keep)
    state.reference.batch_select_indices(keep.to(state.reference_device))
    state.mask, state.pending, state.positions = (t[keep] for t in (state.mask, state.pending,
                                                                   state.positions))


class CleanGen(Defense):
    """CleanGen (Li et al. 2024): reference-checked greedy decoding."""

    name = "cleangen"
    capabilities = Capabilities(changes_decoding=True)
    Options = CleanGenOptions

    def __init__(self, stage1: Any = None, stage2: Any = None, *, seed: int = 0,
                 options: Any = None) -> None:
        super().__init__(seed=seed, options=options)
        self._loaded: Any = None
        self.diagnostics.update(alpha=self.options.alpha, k=self.options.k,
                                reference=self.options.reference, generated_tokens=0,
                                replaced_tokens=0, calls=[])

    def reference_model(self, model: Any, tokenizer: Any, clean_model: Any) -> Any:
        if self.options.reference == "base":
            if clean_model is None:
                raise ConfigError(f"{_WHERE}: reference 'base' needs the model the attacked "
                                  f"fine-tune started from (decode(..., clean_model=...))")
            return clean_model
        if self._loaded is None:
            from mbdefense.modeling.loading import load_model

            ref_model, ref_tok = load_model(self.options.reference, progress=False,
                                            log=lambda _msg: None)
            if ref_tok.get_vocab() != tokenizer.get_vocab():
                raise ConfigError(f"{_WHERE}: reference {self.options.reference!r} has another "
                                  f"tokenizer than the model under test (CleanGen compares "
                                  f"their probabilities token by token)")
            self._loaded = ref_model.to(next(model.parameters()).device)
        return self._loaded

    def decode(self, examples: Sequence[Example], *, model: Any, tokenizer: Any,
               clean_model: Any = None, max_new_tokens: int = 32,
               batch_size: int = 16) -> list[str]:
        from mbdefense.evaluation.generation import stop_token_ids

        reference = self.reference_model(model, tokenizer, clean_model)
        prompts = [tokenizer(render_prompt(tokenizer, e), add_special_tokens=False)["input_ids"]
                   for e in examples]
        outputs, replaced = cleangen_token_ids(
            model, reference, prompts, alpha=self.options.alpha, k=self.options.k,
            max_new_tokens=max_new_tokens, stop_ids=stop_token_ids(model, tokenizer),
            pad_id=pad_id_of(tokenizer), batch_size=batch_size)
        generated = sum(len(o) for o in outputs)
        self.diagnostics["generated_tokens"] += generated
        self.diagnostics["replaced_tokens"] += replaced
        self.diagnostics["calls"].append({"examples": len(examples), "generated_tokens":
                                          generated, "replaced_tokens": replaced})
        return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in outputs]
