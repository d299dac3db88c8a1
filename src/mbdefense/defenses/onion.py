"""ONION: an inference-time baseline that deletes outlier words from each prompt.

Follows Qi et al. 2021, "ONION: A Simple and Effective Defense Against Textual Backdoor
Attacks" (EMNLP). A reference language model scores how much each word raises the perplexity
of its text: the suspicion of word ``i`` is ``logppl(text) - logppl(text without word i)``,
where ``logppl`` is the reference model's mean token negative log-likelihood of the plain text
(no chat template; the tokenizer's BOS in front when it has one). Inserted trigger words tend
to be outliers of fluent text, so removing them lowers the perplexity a lot. Words whose
suspicion exceeds a threshold are deleted from the instruction and from the input before
generation; the training data and the model are left alone.

The threshold is either given, or calibrated on the trusted clean instructions: the
``clean_quantile`` quantile of their words' suspicions, so that about ``1 - clean_quantile``
of clean words are removed. (The paper tunes the threshold on clean validation data in the
same spirit; it scores with GPT-2, here any causal LM, by default the model under test.)
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, Sequence

from mbdefense.data.example import Example
from mbdefense.defenses.base import Capabilities, Defense
from mbdefense.core.errors import ConfigError
from mbdefense.training.batching import pad_id_of, pad_sequences

_WHERE = "defense onion"


@dataclass
class OnionOptions:
    reference: str = "model"          # "model": the model under test; else a model spec
    threshold: float | None = None    # None: calibrated on the trusted clean instructions
    clean_quantile: float = 0.99      # the calibrated threshold's quantile of clean suspicions
    batch_size: int = 64              # leave-one-out variants per forward pass
    max_words: int = 128              # only the first max_words words of a text are scored

    def __post_init__(self) -> None:
        if not isinstance(self.reference, str) or not self.reference.strip():
            raise ConfigError(f"{_WHERE}: option 'reference' must be 'model' or a model spec, "
                              f"got {self.reference!r}")
        if self.threshold is not None:
            if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                    or not math.isfinite(self.threshold):
                raise ConfigError(f"{_WHERE}: option 'threshold' must be a finite number or "
                                  f"null (calibrated), got {self.threshold!r}")
            self.threshold = float(self.threshold)
        q = self.clean_quantile
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 <= q <= 1.0:
            raise ConfigError(f"{_WHERE}: option 'clean_quantile' must lie in [0, 1], "
                              f"got {q!r}")
        self.clean_quantile = float(q)
        for name in ("batch_size", "max_words"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{_WHERE}: option '{name}' must be a whole number >= 1, "
                                  f"got {value!r}")


def _model_device(model: Any) -> Any:
    import torch

    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def log_perplexities(model: Any, tokenizer: Any, texts: Sequence[str],
                     batch_size: int = 64) -> list[float]:
    """Mean token NLL (nats) of each plain text under ``model``; NaN where the text gives no
    token to predict (an empty text, or a one-token text with no BOS to condition on).

    Texts are tokenized without special tokens and without a chat template; the tokenizer's
    BOS goes in front when it has one. Batches are right-padded with an attention mask, sorted
    by length to pad little, and run in inference mode with the model in eval mode (its
    training flag is restored afterwards).
    """
    import torch
    import torch.nn.functional as F

    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    texts = list(texts)
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    sequences: list[list[int]] = []
    for ids in encoded:
        ids = ([bos] if bos is not None else []) + list(ids)
        sequences.append(ids[:limit] if limit else ids)
    pad_id = pad_id_of(tokenizer)
    device = _model_device(model)
    result = [math.nan] * len(texts)
    order = sorted((i for i in range(len(texts)) if len(sequences[i]) >= 2),
                   key=lambda i: len(sequences[i]))
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                ids, mask = pad_sequences([sequences[i] for i in chunk], pad_id)
                ids, mask = ids.to(device), mask.to(device)
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
                targets = ids[:, 1:]
                nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                      targets.reshape(-1), reduction="none")
                nll = nll.view(targets.shape) * mask[:, 1:]
                means = nll.sum(dim=1) / mask[:, 1:].sum(dim=1)
                for row, i in enumerate(chunk):
                    result[i] = float(means[row])
    finally:
        model.train(was_training)
    return result


def word_suspicions(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 64,
                    *, max_words: int | None = None) -> list[list[float]]:
    """ONION's suspicion of every whitespace word of every text:
    ``logppl(text) - logppl(text without the word)`` (positive: the word raises perplexity).

    One list per text with one score per scored word (the first ``max_words`` words, all when
    None). All leave-one-out variants of all texts go through the model together in batches.
    Scores are NaN where a perplexity is undefined (a one-word text without BOS, say).
    """
    variants: list[str] = []
    spans: list[tuple[int, int]] = []        # (index of the full text, number of scored words)
    for text in texts:
        words = text.split()
        scored = len(words) if max_words is None else min(len(words), max_words)
        spans.append((len(variants), scored))
        variants.append(" ".join(words))
        variants.extend(" ".join(words[:i] + words[i + 1:]) for i in range(scored))
    ppl = log_perplexities(model, tokenizer, variants, batch_size)
    out: list[list[float]] = []
    for first, scored in spans:
        full = ppl[first]
        out.append([full - ppl[first + 1 + i] for i in range(scored)])
    return out


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile with linear interpolation (NumPy's default); NaNs are ignored."""
    data = sorted(v for v in values if not math.isnan(v))
    if not data:
        raise ValueError("no finite values to take a quantile of")
    pos = q * (len(data) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def filter_words(text: str, suspicions: Sequence[float], threshold: float) -> tuple[str, int]:
    """Remove the words of ``text`` whose suspicion exceeds ``threshold``; words past the scored
    ones are kept, NaN scores never count as suspicious, and at least one word always stays
    (the least suspicious). Returns the text and how many words were removed; an unchanged
    text is returned as it was (whitespace kept)."""
    words = text.split()
    drop = {i for i, s in enumerate(suspicions) if s > threshold}
    if not drop:
        return text, 0
    if len(drop) >= len(words):
        keep = min(drop, key=lambda i: suspicions[i])
        drop.discard(keep)
        if not drop:
            return text, 0
    return " ".join(w for i, w in enumerate(words) if i not in drop), len(drop)


class Onion(Defense):
    """ONION (Qi et al. 2021): delete perplexity-outlier words from prompts at inference."""

    name = "onion"
    capabilities = Capabilities(changes_inputs=True)
    Options = OnionOptions

    def __init__(self, stage1: Any = None, stage2: Any = None, *, seed: int = 0,
                 options: Any = None) -> None:
        super().__init__(seed=seed, options=options)
        self._reference: tuple[Any, Any] | None = None
        # (id of the reference model, trusted instructions) -> (weak ref to it, threshold)
        self._calibrated: dict[tuple[int, tuple[str, ...]], tuple[Any, float]] = {}
        self.diagnostics.update(reference=self.options.reference, threshold=None,
                                threshold_source=None, calls=[])

    def _reference_model(self, model: Any, tokenizer: Any) -> tuple[Any, Any]:
        if self.options.reference == "model":
            if model is None or tokenizer is None:
                raise ConfigError(f"{_WHERE}: reference 'model' needs the model under test and "
                                  f"its tokenizer (at_inference(..., model=, tokenizer=))")
            return model, tokenizer
        if self._reference is None:
            from mbdefense.modeling.loading import load_model

            ref_model, ref_tok = load_model(self.options.reference, progress=False,
                                            log=lambda _msg: None)
            if model is not None:
                ref_model = ref_model.to(_model_device(model))
            self._reference = (ref_model, ref_tok)
        return self._reference

    def threshold_for(self, model: Any, tokenizer: Any,
                      trusted_set: Sequence[Example]) -> float:
        """The given threshold, or the ``clean_quantile`` quantile of the suspicions of all
        words of the trusted instructions (computed once per reference model and set)."""
        opts = self.options
        if opts.threshold is not None:
            self.diagnostics.update(threshold=opts.threshold, threshold_source="option")
            return opts.threshold
        instructions = tuple(e.instruction for e in trusted_set)
        if not instructions:
            raise ConfigError(f"{_WHERE}: option 'threshold' is unset (calibrate) but no "
                              f"trusted clean set was given; pass trusted_set= or set it")
        key = (id(model), instructions)
        cached = self._calibrated.get(key)
        if cached is None or cached[0]() is not model:     # an id reused by a new model
            scores = word_suspicions(model, tokenizer, instructions, opts.batch_size,
                                     max_words=opts.max_words)
            flat = [s for row in scores for s in row if not math.isnan(s)]
            if not flat:
                raise ConfigError(f"{_WHERE}: cannot calibrate 'threshold': the trusted "
                                  f"instructions give no word to score")
            cached = (weakref.ref(model), quantile(flat, opts.clean_quantile))
            self._calibrated[key] = cached
            self.diagnostics["calibration_words"] = len(flat)
        threshold = cached[1]
        self.diagnostics.update(threshold=threshold,
                                threshold_source=f"quantile {opts.clean_quantile} of "
                                                 f"{len(instructions)} trusted instructions")
        return threshold

    def at_inference(self, examples: Sequence[Example], *, model: Any = None,
                     tokenizer: Any = None, trusted_set: Sequence[Example] = ()) -> list[Example]:
        examples = list(examples)
        ref_model, ref_tok = self._reference_model(model, tokenizer)
        threshold = self.threshold_for(ref_model, ref_tok, trusted_set)
        texts: list[str] = []
        for example in examples:
            texts.append(example.instruction)
            texts.append(example.input)
        scores = word_suspicions(ref_model, ref_tok, texts, self.options.batch_size,
                                 max_words=self.options.max_words)
        out: list[Example] = []
        removed = changed = 0
        for j, example in enumerate(examples):
            instruction, k1 = filter_words(example.instruction, scores[2 * j], threshold)
            text_input, k2 = filter_words(example.input, scores[2 * j + 1], threshold)
            removed += k1 + k2
            if k1 or k2:
                changed += 1
                out.append(example.replace(instruction=instruction, input=text_input))
            else:
                out.append(example.replace())
        self.diagnostics["calls"].append({
            "examples": len(examples), "changed_examples": changed, "removed_words": removed,
            "scored_words": sum(len(row) for row in scores), "threshold": threshold})
        return out
