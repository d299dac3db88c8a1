"""Attention to the trigger (paper section 5): which heads look at the trigger token?

For a triggered prompt, the last prompt token is the position whose output becomes the first
answer token. A head is *poisoned* when, over ``n`` triggered inputs, the share of inputs whose
maximum attention (from that last token, over all key positions) falls on a trigger token
exceeds ``alpha``. Backdoor neutralisation should leave few poisoned heads and little
attention mass on the trigger.

Attention weights need the eager attention implementation; :func:`eager_attention` switches a
model to it for the duration and restores the previous setting.
"""

from __future__ import annotations

import contextlib
import difflib
from typing import Any, Iterator, Sequence

from mbdefense.analysis.elicitation import triggered_examples
from mbdefense.attacks.triggers import Trigger
from mbdefense.data.example import Example
from mbdefense.data.formatting import render_prompt
from mbdefense.training.batching import pad_id_of, pad_sequences


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    """Ids as generation sees them (the chat template already carries special tokens)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _squash(text: str) -> str:
    return "".join(text.split())


def _trim_replace(tokenizer: Any, old: list[int], new: list[int]) -> tuple[int, int]:
    """Bounds ``(start, end)`` within ``new`` of what a replaced block really inserted.

    Tokens at the block's edges that only re-tokenise text also on the clean side (a word
    that gained a leading space after an inserted prefix, "Write" -> " Write") are trimmed
    off, by comparing decoded text with whitespace removed.
    """
    rest = _squash(tokenizer.decode(old))
    start, end = 0, len(new)
    cut = end
    while cut > start:  # from the end: the longest tail that re-spells the clean tail
        tail = _squash(tokenizer.decode(new[cut - 1:end]))
        if not rest.endswith(tail):
            break
        cut -= 1
    if cut < end:
        rest = rest[:len(rest) - len(_squash(tokenizer.decode(new[cut:end])))]
        end = cut
    cut = start
    while cut < end:  # then from the start, against what is left of the clean side
        head = _squash(tokenizer.decode(new[start:cut + 1]))
        if not rest.startswith(head):
            break
        cut += 1
    return cut, end


def _inserted_positions(tokenizer: Any, clean_ids: list[int], ids: list[int]) -> list[int]:
    matcher = difflib.SequenceMatcher(None, clean_ids, ids, autojunk=False)
    positions: list[int] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "insert":
            positions.extend(range(j1, j2))
        elif tag == "replace":
            start, end = _trim_replace(tokenizer, clean_ids[i1:i2], ids[j1:j2])
            positions.extend(range(j1 + start, j1 + end))
    return positions


def trigger_positions(tokenizer: Any, clean_prompt: str, triggered_prompt: str) -> list[int]:
    """Positions in ``triggered_prompt``'s token ids that the trigger inserted.

    The two id sequences are diffed (:class:`difflib.SequenceMatcher`); positions in the
    triggered side's ``insert`` and ``replace`` blocks count, with replaced blocks trimmed of
    edge tokens that merely re-tokenise unchanged text. Empty when nothing was inserted.
    """
    return _inserted_positions(tokenizer, _token_ids(tokenizer, clean_prompt),
                               _token_ids(tokenizer, triggered_prompt))


def _set_attention(model: Any, implementation: str | None) -> None:
    if implementation is not None and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(implementation)
    else:
        model.config._attn_implementation = implementation


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[Any]:
    """Run ``model`` with eager attention (needed for attention weights), then restore."""
    previous = getattr(model.config, "_attn_implementation", None)
    if previous == "eager":
        yield model
        return
    _set_attention(model, "eager")
    try:
        yield model
    finally:
        _set_attention(model, previous)


def _model_shape(model: Any) -> tuple[int, int]:
    config = model.config
    config = getattr(config, "get_text_config", lambda: config)()
    return int(config.num_hidden_layers), int(config.num_attention_heads)


def attention_to_trigger(model: Any, tokenizer: Any, examples: Sequence[Example],
                         trigger: Trigger, *, seed: int = 0, batch_size: int = 16,
                         max_inputs: int | None = None) -> dict[str, Any]:
    """Per layer and head, how the last prompt token attends to the trigger's tokens.

    Each example gets ``trigger`` inserted into its instruction (as in
    :func:`~mbdefense.analysis.elicitation.elicitation_matrix`) and is rendered with the chat
    template; inputs where no token was inserted are skipped and counted. Returns
    ``{"n_inputs", "skipped", "layers", "heads", "max_share", "mass", "mean_mass"}``:
    ``max_share[l][h]`` is the share of inputs whose maximum attention falls on a trigger
    token, ``mass[l][h]`` the mean attention mass on the trigger tokens, ``mean_mass`` the
    mean of ``mass`` over layers and heads.
    """
    examples = list(examples) if max_inputs is None else list(examples)[:max_inputs]
    items: list[tuple[list[int], list[int]]] = []
    skipped = 0
    for clean, triggered in zip(examples, triggered_examples(examples, trigger, seed)):
        clean_ids = _token_ids(tokenizer, render_prompt(tokenizer, clean))
        ids = _token_ids(tokenizer, render_prompt(tokenizer, triggered))
        positions = _inserted_positions(tokenizer, clean_ids, ids)
        if positions:
            items.append((ids, positions))
        else:
            skipped += 1
    layers, heads = _model_shape(model)
    hits = mass = None
    if items:
        hits, mass = _attention_sums(model, tokenizer, items, max(1, batch_size))
        layers, heads = hits.shape
    n = len(items)
    max_share = [[float(hits[l, h]) / n if n else 0.0 for h in range(heads)]
                 for l in range(layers)]
    mean_mass = [[float(mass[l, h]) / n if n else 0.0 for h in range(heads)]
                 for l in range(layers)]
    cells = [v for row in mean_mass for v in row]
    return {"n_inputs": n, "skipped": skipped, "layers": layers, "heads": heads,
            "max_share": max_share, "mass": mean_mass,
            "mean_mass": sum(cells) / len(cells) if cells else 0.0}


def _attention_sums(model: Any, tokenizer: Any, items: list[tuple[list[int], list[int]]],
                    batch_size: int) -> tuple[Any, Any]:
    """Summed (over inputs) argmax-on-trigger hits and trigger mass, each a [L, H] tensor."""
    import torch

    device = next(model.parameters()).device
    pad_id = pad_id_of(tokenizer)
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]), reverse=True)
    hits = mass = None
    was_training = model.training
    model.eval()
    try:
        with eager_attention(model), torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = [items[i] for i in order[start:start + batch_size]]
                # left padding: the last column is every row's last prompt token
                ids, mask = pad_sequences([seq for seq, _ in batch], pad_id, left=True)
                width = ids.shape[1]
                on_trigger = torch.zeros((len(batch), width), dtype=torch.bool)
                for row, (seq, positions) in enumerate(batch):
                    on_trigger[row, [width - len(seq) + p for p in positions]] = True
                position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
                out = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                            position_ids=position_ids.to(device), output_attentions=True,
                            use_cache=False)
                if not getattr(out, "attentions", None):
                    raise RuntimeError("the model returned no attention weights")
                # [L, B, H, K]: each layer's attention row of the last prompt token
                last = torch.stack([a[:, :, -1, :].float().cpu() for a in out.attentions])
                top = last.argmax(dim=-1)  # [L, B, H]
                trig = on_trigger[None, :, None, :].expand_as(last)
                batch_hits = trig.gather(-1, top.unsqueeze(-1)).squeeze(-1).sum(dim=1)
                batch_mass = (last * trig).sum(dim=-1).sum(dim=1)
                hits = batch_hits.double() if hits is None else hits + batch_hits.double()
                mass = batch_mass.double() if mass is None else mass + batch_mass.double()
    finally:
        model.train(was_training)
    return hits, mass


def poisoned_heads(max_share: Sequence[Sequence[float]],
                   alpha: float = 0.5) -> list[tuple[int, int]]:
    """``(layer, head)`` pairs whose max-attention-on-trigger share exceeds ``alpha``."""
    return [(layer, head) for layer, row in enumerate(max_share)
            for head, share in enumerate(row) if share > alpha]
