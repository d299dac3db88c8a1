"""Greedy generation for evaluation: many prompts, answers in input order, HF-greedy outputs.

Two backends, registered in :data:`GENERATORS` (checked by :func:`check_backend`):

- ``plain`` (default): our own greedy loop over a transformers causal LM.

  1. Prompts are sorted by their token ids, so neighbours share prefixes (chat template,
     task wording, a prompt and its triggered copy), and cut into batches of ``batch_size``.
  2. Prefill with shared prefixes: a batch's prompts are packed into a few rows. In a row,
     the prompts' contexts (all tokens but the last) form a prefix tree laid out depth
     first, so a prefix shared with the previous prompt is computed once; the prompts' last
     tokens sit at the end of the row, where the logits are read. A 4D mask lets each token
     attend only to its own prompt's earlier tokens, and positions are depths in the prompt.
     Each prompt's keys and values are then gathered into an ordinary left-padded cache:
     the layout ``model.generate`` builds, with the same position ids.
  3. Decode: each step feeds every row its newest token and takes the argmax of the last
     logits; rows that emit a stop token (EOS) leave the batch and the cache, so no compute
     goes to finished rows. On CUDA the cache is a :class:`~transformers.StaticCache` (fixed
     shapes: finished rows then only go idle).

  Models whose attention is neither ``sdpa`` nor ``eager``, or that have sliding-window,
  linear or shared-KV layers, fall back to ``model.generate`` per batch (sorted by length).
  Greedy means the plain argmax: logits processors from ``generation_config`` (repetition
  penalty and the like) are not applied.
- ``vllm``: :mod:`mbdefense.evaluation.vllm_backend` (optional; CUDA GPUs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from mbdefense.data.example import Example
from mbdefense.data.formatting import render_prompt
from mbdefense.core.registry import Registry
from mbdefense.training.batching import pad_id_of, pad_sequences


def _runs_anywhere() -> None:
    return None


@dataclass(frozen=True)
class GeneratorBackend:
    """A generation backend; ``require`` raises
    :class:`~mbdefense.core.errors.ConfigError` when it cannot run here."""

    description: str
    require: Callable[[], None] = _runs_anywhere


def _require_vllm() -> None:
    from mbdefense.evaluation.vllm_backend import require_vllm

    require_vllm()


#: Generation backends by name.
GENERATORS: Registry[GeneratorBackend] = Registry("generator")
GENERATORS.register("plain", GeneratorBackend("our greedy loop over a transformers causal LM"))
GENERATORS.register("vllm", GeneratorBackend("vLLM engine (optional; CUDA GPUs)", _require_vllm))

#: A packed prefill row holds up to this many times the longest prompt of its batch, and
#: up to PACK_TOKENS tokens unless one prompt is longer (its 4D mask is width x width).
PACK_FACTOR = 4
PACK_TOKENS = 2048


def check_backend(name: str) -> None:
    """Raise :class:`~mbdefense.core.errors.ConfigError` unless ``name`` is a generator that
    can run here (unknown names get a did-you-mean hint)."""
    GENERATORS.get(name).require()


def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[str], *,
                     max_new_tokens: int = 32, batch_size: int = 64,
                     progress: bool = False, description: str = "generate",
                     backend: str = "plain", static_cache: bool | None = None) -> list[str]:
    """Greedy answers to already-formatted prompts, returned in the order given.

    Each answer stops at a stop token (:func:`stop_token_ids`) or after ``max_new_tokens``
    tokens and is decoded without special tokens, stripped. ``static_cache`` (plain backend):
    None uses a static KV cache on CUDA only.
    """
    check_backend(backend)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    stop = stop_token_ids(model, tokenizer)
    if backend == "vllm":
        from mbdefense.evaluation.vllm_backend import vllm_token_ids

        outputs = vllm_token_ids(model, tokenizer, encoded, max_new_tokens=max_new_tokens,
                                 stop_ids=stop)
    else:
        outputs = generate_token_ids(model, encoded, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size, stop_ids=stop,
                                     pad_id=pad_id_of(tokenizer), static_cache=static_cache,
                                     progress=progress, description=description)
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in outputs]


def answer_examples(model: Any, tokenizer: Any, examples: Sequence[Example], **kwargs: Any) -> list[str]:
    """Greedy answers to examples, prompted with the tokenizer's chat template."""
    return generate_answers(model, tokenizer, [render_prompt(tokenizer, e) for e in examples],
                            **kwargs)


def stop_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """The tokenizer's EOS plus the model's ``generation_config.eos_token_id`` (int or list)."""
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    extra = [] if extra is None else [extra] if isinstance(extra, int) else list(extra)
    ids = [tokenizer.eos_token_id, *extra]
    return frozenset(int(i) for i in ids if i is not None)


def generate_token_ids(model: Any, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int,
                       batch_size: int, stop_ids: frozenset[int], pad_id: int,
                       static_cache: bool | None = None, progress: bool = False,
                       description: str = "generate") -> list[list[int]]:
    """Greedy continuations of token-id prompts (plain backend), in input order.

    Each continuation ends with its stop token, or has ``max_new_tokens`` tokens.
    """
    import torch
    from tqdm.auto import tqdm

    if any(len(ids) == 0 for ids in prompt_ids):
        raise ValueError("generate: a prompt has no tokens")
    if max_new_tokens <= 0 or not prompt_ids:
        return [[] for _ in prompt_ids]
    model.eval()
    packed = supports_packed_prefill(model)
    key = (lambda i: list(prompt_ids[i])) if packed else (lambda i: -len(prompt_ids[i]))
    order = sorted(range(len(prompt_ids)), key=key)
    run = greedy_generate if packed else hf_generate
    with torch.inference_mode(), tqdm(total=len(order), desc=description,
                                      disable=not progress, leave=False) as bar:
        results = run(model, [list(prompt_ids[i]) for i in order], max_new_tokens=max_new_tokens,
                      batch_size=batch_size, stop_ids=stop_ids, pad_id=pad_id,
                      static=use_static_cache(model, static_cache), on_batch=bar.update)
    outputs: list[list[int]] = [[] for _ in prompt_ids]
    for i, ids in zip(order, results):
        outputs[i] = ids
    return outputs


def supports_packed_prefill(model: Any) -> bool:
    """Whether our loop handles the model: sdpa or eager attention (they take 4D masks) and
    only full-attention layers (no sliding-window, linear or shared-KV ones)."""
    from transformers import DynamicCache

    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        return False
    if config._attn_implementation not in ("sdpa", "eager"):
        return False
    cache = DynamicCache(config=config)
    return not any(any(flags) for flags in (cache.is_sliding, cache.is_linear, cache.is_dummy))


def use_static_cache(model: Any, static_cache: bool | None) -> bool:
    """``static_cache``, or when None: whether the model is on a CUDA device."""
    if static_cache is not None:
        return static_cache
    return next(model.parameters()).device.type == "cuda"


# --------------------------------------------------------------------------- plain: the loop


@dataclass
class Rows:
    """A batch being decoded: its KV cache and 2D attention mask (left-padded), each row's
    newest token and the position to feed it at, and the output each row writes to (None:
    finished, a row kept only because a static cache cannot drop it)."""

    cache: Any
    mask: Any
    tokens: Any
    positions: Any
    live: list[int | None]


def greedy_generate(model: Any, prompts: list[list[int]], *, max_new_tokens: int,
                    batch_size: int, stop_ids: frozenset[int], pad_id: int, static: bool,
                    on_batch: Callable[[int], Any]) -> list[list[int]]:
    """Greedy continuations, in order, ``batch_size`` prompts at a time."""
    outputs: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(prompts), batch_size):
        owners = list(range(start, min(start + batch_size, len(prompts))))
        rows = prefill(model, [prompts[i] for i in owners], owners, pad_id, static,
                       max_new_tokens)
        while advance(rows, outputs, stop_ids, max_new_tokens, drop=not static):
            step(model, rows)
        on_batch(len(owners))
    return outputs


def advance(rows: Rows, outputs: list[list[int]], stop_ids: frozenset[int],
            max_new_tokens: int, *, drop: bool) -> bool:
    """Record each live row's newest token; a row finishes at a stop token or with
    ``max_new_tokens`` tokens. Finished rows leave the batch (and the cache) when ``drop``,
    else go idle. Whether any row runs on."""
    import torch

    running = []
    for row, (out, token) in enumerate(zip(rows.live, rows.tokens.tolist())):
        if out is None:
            continue
        outputs[out].append(token)
        if token not in stop_ids and len(outputs[out]) < max_new_tokens:
            running.append(row)
    if not running or len(running) == len(rows.live):
        return bool(running)
    if drop:
        keep = torch.tensor(running, dtype=torch.long, device=rows.tokens.device)
        rows.cache.batch_select_indices(keep)
        rows.mask, rows.tokens, rows.positions = (t[keep] for t in (rows.mask, rows.tokens,
                                                                   rows.positions))
        rows.live = [rows.live[row] for row in running]
    else:
        still = set(running)
        rows.live = [out if row in still else None for row, out in enumerate(rows.live)]
    return True


def step(model: Any, rows: Rows) -> None:
    """Feed every row its newest token; its argmax next token becomes the newest."""
    import torch

    rows.mask = torch.cat([rows.mask, rows.mask.new_ones((rows.mask.shape[0], 1))], dim=1)
    logits = model(input_ids=rows.tokens[:, None], attention_mask=rows.mask,
                   position_ids=rows.positions[:, None], cache=rows.cache, use_cache=True,
                   logits_to_keep=1).logits
    rows.tokens = logits[:, -1].argmax(dim=-1)
    rows.positions = rows.positions + 1


def new_decode_cache(model: Any, static: bool, max_length: int) -> Any:
    """An empty KV cache: static (``max_length`` slots) or dynamic."""
    from transformers import DynamicCache, StaticCache

    if static:
        return StaticCache(config=model.config, max_cache_len=max_length)
    return DynamicCache(config=model.config)


# --------------------------------------------------------------------------- shared prefill


@dataclass
class PackedRow:
    """One row of the packed prefill: the prompts' contexts (all but their last token) as a
    prefix tree in depth-first order, then, right-aligned at the end of the row, their last
    tokens (the leaves). ``ends[c]``: the last column of the subtree of context column ``c``,
    so the context tokens that column ``a`` sees are the ``c <= a`` with ``ends[c] >= a``."""

    tokens: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)      # positions in their prompts
    ends: list[int] = field(default_factory=list)
    leaves: list[int] = field(default_factory=list)
    leaf_depths: list[int] = field(default_factory=list)
    leaf_sources: list[int] = field(default_factory=list)   # last context column (-1: none)

    @property
    def size(self) -> int:
        return len(self.tokens) + len(self.leaves)


@dataclass
class Place:
    """Where a prompt lies: its row, its context's columns and its leaf's index in the row."""

    row: int
    columns: list[int]
    leaf: int


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pack_prompts(prompts: Sequence[Sequence[int]],
                 limit: int) -> tuple[list[PackedRow], list[Place]]:
    """Pack prompts in order into rows of at most ``limit`` tokens; a prompt's context shares
    its common prefix with the previous prompt's context in the row."""
    rows: list[PackedRow] = []
    places: list[Place] = []
    previous: Sequence[int] = ()
    for prompt in prompts:
        context = prompt[:-1]
        share = common_prefix_length(previous, context) if rows else 0
        if not rows or rows[-1].size + len(context) - share + 1 > limit:
            rows.append(PackedRow())
            share = 0
        row = rows[-1]
        start = len(row.tokens)
        shared = places[-1].columns[:share] if share else []
        columns = shared + list(range(start, start + len(context) - share))
        row.tokens.extend(context[share:])
        row.depths.extend(range(share, len(context)))
        row.ends.extend([-1] * (len(context) - share))
        for c in columns:
            row.ends[c] = max(row.ends[c], columns[-1])
        places.append(Place(len(rows) - 1, columns, len(row.leaves)))
        row.leaves.append(prompt[-1])
        row.leaf_depths.append(len(context))
        row.leaf_sources.append(columns[-1] if columns else -1)
        previous = context
    return rows, places


def packed_inputs(rows: list[PackedRow], pad_id: int, dtype: Any) -> tuple[Any, Any, Any]:
    """``(input_ids, position_ids, additive 4D mask)`` of the packed rows, ``width`` columns:
    a token attends to itself and to the earlier tokens of its prompt (a leaf sees what its
    prompt's last context token sees; pad columns see only themselves)."""
    import torch

    width = max(row.size for row in rows)
    ids, positions, ends, sources = [], [], [], []
    for row in rows:
        gap = width - row.size
        leaf_columns = range(width - len(row.leaves), width)
        ids.append(row.tokens + [pad_id] * gap + row.leaves)
        positions.append(row.depths + [0] * gap + row.leaf_depths)
        ends.append(row.ends + [-1] * (gap + len(row.leaves)))
        sources.append(list(range(width - len(row.leaves)))
                       + [s if s >= 0 else c for s, c in zip(row.leaf_sources, leaf_columns)])
    query, key = torch.arange(width)[:, None], torch.arange(width)[None, :]
    sees = (key <= query) & (torch.tensor(ends)[:, None, :] >= query)     # [rows, query, key]
    rows_of = torch.tensor(sources)[:, :, None].expand(-1, -1, width)    # a leaf: its source's
    sees = sees.gather(1, rows_of) | torch.eye(width, dtype=torch.bool)
    mask = torch.zeros(sees.shape, dtype=dtype).masked_fill(~sees, torch.finfo(dtype).min)
    return torch.tensor(ids), torch.tensor(positions), mask[:, None]


def gather_index(rows: list[PackedRow], places: list[Place], width: int) -> tuple[Any, Any, Any]:
    """Each prompt's tokens in the packed rows (of ``width`` columns), left-padded to the
    longest prompt: ``(flat indices [B * L], 2D attention mask [B, L], flat indices of the
    leaves among the logits of the last columns [B])``."""
    import torch

    keep = max(len(row.leaves) for row in rows)
    length = max(len(place.columns) for place in places) + 1
    flat, mask, leaves = [], [], []
    for place in places:
        row = rows[place.row]
        leaf = width - len(row.leaves) + place.leaf
        columns = place.columns + [leaf]
        flat.extend([0] * (length - len(columns)) + [place.row * width + c for c in columns])
        mask.append([0] * (length - len(columns)) + [1] * len(columns))
        leaves.append(place.row * keep + leaf - (width - keep))
    return torch.tensor(flat), torch.tensor(mask), torch.tensor(leaves)


def prefill(model: Any, prompts: Sequence[Sequence[int]], owners: list[int], pad_id: int,
            static: bool, max_new_tokens: int) -> Rows:
    """Run the prompts through ``model`` with shared prefixes computed once: their rows, with
    each prompt's keys and values (left-padded) in a new decode cache and its first answer
    token as the newest token."""
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    longest = max(len(p) for p in prompts)
    rows, places = pack_prompts(prompts, max(longest, min(PACK_FACTOR * longest, PACK_TOKENS)))
    ids, positions, mask4d = packed_inputs(rows, pad_id, model.dtype)
    flat, mask, leaves = (t.to(device) for t in gather_index(rows, places, ids.shape[1]))
    packed_cache = DynamicCache()
    logits = model(input_ids=ids.to(device), position_ids=positions.to(device),
                   attention_mask=mask4d.to(device), cache=packed_cache, use_cache=True,
                   logits_to_keep=max(len(row.leaves) for row in rows)).logits
    cache = new_decode_cache(model, static, mask.shape[1] + max_new_tokens)
    for index, layer in enumerate(packed_cache.layers):
        keys, values = (select_tokens(t, flat, mask.shape) for t in (layer.keys, layer.values))
        cache.update(keys, values, index)
    first = logits.flatten(0, 1).index_select(0, leaves).argmax(dim=-1)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    return Rows(cache, mask, first, lengths, list(owners))


def select_tokens(states: Any, flat: Any, shape: tuple[int, int]) -> Any:
    """``[G, H, W, D]`` packed keys or values -> ``[B, H, L, D]``: the tokens at ``flat``
    (indices into the G x W packed tokens, ``B x L`` of them)."""
    groups, heads, width, dim = states.shape
    tokens = states.transpose(1, 2).reshape(groups * width, heads, dim)
    return tokens.index_select(0, flat).view(*shape, heads, dim).transpose(1, 2)


# --------------------------------------------------------------------------- fallback


def hf_generate(model: Any, prompts: list[list[int]], *, max_new_tokens: int, batch_size: int,
                stop_ids: frozenset[int], pad_id: int, static: bool,
                on_batch: Callable[[int], Any]) -> list[list[int]]:
    """``model.generate`` per left-padded batch, in order; each row cut after its stop token."""
    device = next(model.parameters()).device
    extra = {"cache_implementation": "static"} if static else {}
    outputs = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = pad_sequences(prompts[start:start + batch_size], pad_id, left=True)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=pad_id, eos_token_id=sorted(stop_ids), **extra)
        outputs.extend(cut_at_stop(row, stop_ids) for row in out[:, ids.shape[1]:].tolist())
        on_batch(ids.shape[0])
    return outputs


def cut_at_stop(tokens: list[int], stop_ids: frozenset[int]) -> list[int]:
    """``tokens`` up to and including the first stop token."""
    for i, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:i + 1]
    return tokens
