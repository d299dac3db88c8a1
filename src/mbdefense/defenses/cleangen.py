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
are decoded in batches (left-padded, without a KV cache). Greedy decoding only.
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


def _last_logits(model: Any, sequences: Sequence[Sequence[int]], pad_id: int,
                 keep: int) -> Any:
    """Log-probabilities ``[B, keep, V]`` of the next token at each sequence's last ``keep``
    positions (left-padded batch, positions counted from each sequence's first token)."""
    import torch

    device = next(model.parameters()).device
    ids, mask = pad_sequences(sequences, pad_id, left=True)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                   use_cache=False, logits_to_keep=keep).logits[:, -keep:]
    return torch.log_softmax(logits.float(), dim=-1)


@dataclass
class _Row:
    prompt: list[int]
    out: list[int]
    done: bool = False


def cleangen_token_ids(model: Any, reference: Any, prompts: Sequence[Sequence[int]], *,
                       alpha: float, k: int, max_new_tokens: int, stop_ids: frozenset[int],
                       pad_id: int, batch_size: int = 16) -> tuple[list[list[int]], int]:
    """CleanGen continuations of token-id prompts, in input order, and how many tokens were
    replaced. Each continuation ends with a stop token or has ``max_new_tokens`` tokens."""
    import torch

    if any(len(p) == 0 for p in prompts):
        raise ValueError("cleangen: a prompt has no tokens")
    rows = [_Row(list(p), []) for p in prompts]
    threshold = math.log(alpha)
    replaced = 0
    for m in (model, reference):
        m.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].prompt))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = [rows[i] for i in order[start:start + batch_size]]
            for row in batch:
                row.done = max_new_tokens <= 0
            while True:
                live = [r for r in batch if not r.done]
                if not live:
                    break
                # the suspect model drafts up to k tokens per row, greedily
                drafts: list[list[int]] = [[] for _ in live]
                draft_lp: list[list[float]] = [[] for _ in live]
                drafting = list(range(len(live)))
                for _ in range(k):
                    if not drafting:
                        break
                    lp = _last_logits(model, [live[j].prompt + live[j].out + drafts[j]
                                              for j in drafting], pad_id, 1)[:, -1]
                    best = lp.argmax(dim=-1)
                    for n, j in enumerate(drafting):
                        token = int(best[n])
                        drafts[j].append(token)
                        draft_lp[j].append(float(lp[n, token]))
                    drafting = [j for j in drafting if drafts[j][-1] not in stop_ids and
                                len(live[j].out) + len(drafts[j]) < max_new_tokens]
                # the reference scores every drafted token in one pass
                width = max(len(d) for d in drafts)
                ref_lp = _last_logits(reference, [r.prompt + r.out + d + [pad_id] *
                                                  (width - len(d)) for r, d in zip(live, drafts)],
                                      pad_id, width + 1)
                for j, (row, draft) in enumerate(zip(live, drafts)):
                    for i, token in enumerate(draft):
                        scores = ref_lp[j, i]
                        if draft_lp[j][i] - float(scores[token]) >= threshold:
                            row.out.extend(draft[:i])
                            row.out.append(int(scores.argmax()))
                            replaced += 1
                            break
                    else:
                        row.out.extend(draft)
                    row.done = row.out[-1] in stop_ids or len(row.out) >= max_new_tokens
    return [r.out for r in rows], replaced


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
