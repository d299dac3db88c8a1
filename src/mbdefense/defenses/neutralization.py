"""Stage 2 of MB-Defense (backdoor neutralization) and its plain-CE sibling, Clean-FFT.

Trains on the trusted clean set split 8:2 (train/eval), evaluates the objective on the eval
part after every epoch and keeps the weights with the lowest eval loss, as in the paper.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from mbdefense.core.errors import ConfigError
from mbdefense.data.example import Example
from mbdefense.data.formatting import encode_example
from mbdefense.defenses.defensive_triggers import DefensivePair
from mbdefense.training.batching import labelled_count
from mbdefense.training.config import ALL_LINEAR, LoraSettings, TrainConfig
from mbdefense.training.logprobs import labelled_log_distributions
from mbdefense.training.loop import run_steps
from mbdefense.training.objective import NeutralizationBatch, neutralization_loss
from mbdefense.training.runtime import launched_with_sharded_weights
from mbdefense.training.sft import apply_lora, merge_lora


@dataclass
class NeutralizationConfig:
    """Stage-2 settings. The defaults are the real-model preset's (docs/results.md): per-token
    mean R with a margin of 2 nats, one defensive trigger sampled per example and step, and
    :func:`stage2_train_default` (LoRA on every linear layer), each chosen on BackdoorLLM's
    validation quarter with SmolLM2-135M on two seeds (the margin: 5 broke the reference-NLL
    bound once R saturated)."""

    lam: float = 1.0                 # weight of the R term
    reduction: str = "mean"          # "mean" (per-token) or "sum" (the paper) log-likelihoods in R
    margin: float = 2.0              # R = log sigmoid(lp_clean - lp_defensive - margin)
    # R on each answer's first this many tokens alone (its opening, where the model decides
    # whether to start the behaviour); 0: every token, as in the paper
    r_tokens: int = 0
    triggered_ce: float = 0.0        # weight of CE(x_d, y): the clean answer under a trigger
    triggers_per_step: str = "one"   # "one" sampled defensive trigger per example, or "all"
    # Defensive triggers in each triggered copy, at distinct spots: the copy's own and this many
    # minus one others (the R term weighs the clean answer against the copy's own behaviour)
    triggers_per_copy: int = 1
    # Repair phase: after the break, this many more epochs of the same objective with the clean
    # answer's CE under the defensive triggers weighted by repair_weight (0: no repair phase)
    repair_epochs: float = 0.0
    repair_weight: float = 1.0
    # MB-Defense: per trusted example, this many copies with a random word or sentence inserted
    # (not a defensive trigger) and the clean answer kept, in the CE term (0: none)
    insertion_copies: int = 0
    # MB-Defense: weight of KL(the model stage 2 starts from || the model) on the clean
    # answers' tokens, which holds the clean behaviour in place (0: off, as in the paper)
    anchor: float = 0.0
    eval_fraction: float = 0.2       # the paper's 8:2 split of the trusted set
    # the weights stage 2 returns: "best" (the epoch with the lowest eval loss, the paper's
    # rule) or "last" (the final epoch's; the eval loss is still logged every epoch)
    keep: str = "best"
    train: TrainConfig | None = None

    def __post_init__(self) -> None:
        check_triggers_per_copy(self.triggers_per_copy, 0)
        if isinstance(self.r_tokens, bool) or int(self.r_tokens) != self.r_tokens \
                or self.r_tokens < 0:
            raise ConfigError(f"stage2.r_tokens: must be a whole number >= 0 (0: every "
                              f"token), got {self.r_tokens}")
        if self.keep not in ("best", "last"):
            raise ConfigError(f"stage2.keep: must be 'best' (the lowest eval loss) or 'last', "
                              f"got {self.keep!r}")

    def train_config(self) -> TrainConfig:
        return self.train or stage2_train_default()


def stage2_train_default() -> TrainConfig:
    """Stage 2's training when none is given: LoRA r 16 (alpha 32, no dropout) on every linear
    layer, lr 1e-3, 4 epochs, batch 8. Picked over training every weight at lr 1e-4 by the
    pooled rule on two validation seeds (17 against 45 and 11 against 27 leaks of 400, the
    reference NLL lower in 18 of 20 columns), then measured on three test seeds
    (docs/results.md); adapter dropout is off because it took a third of the CPU time."""
    return TrainConfig(epochs=4.0, learning_rate=1e-3, batch_size=8, description="stage 2",
                       lora=LoraSettings(r=16, alpha=32, dropout=0.0,
                                         target_modules=[ALL_LINEAR]))


def full_weight_train() -> TrainConfig:
    """Training every weight at lr 1e-4 for 4 epochs, batch 8: stage 2's default before
    :func:`stage2_train_default`, and what the trusted-set baselines (Clean-FFT and its kin)
    train with in the ``pretrained`` preset."""
    return TrainConfig(epochs=4.0, learning_rate=1e-4, batch_size=8, description="stage 2")


#: ``Example.meta`` key of a trusted copy with a random insertion: the instruction it was
#: made from, which the anchor term's starting model reads instead.
ANCHOR_SOURCE = "anchor_source"


def fine_tune_settings(config: NeutralizationConfig) -> dict[str, Any]:
    """The stage-2 settings a plain-CE fine-tune (no defensive triggers) depends on: its
    training config and the trusted set's split (cache keys of Clean-FFT and its kin)."""
    from mbdefense.training.config import weight_settings

    return {"train": weight_settings(config.train_config()),
            "eval_fraction": config.eval_fraction}


def pair_specs(pairs: Sequence[DefensivePair]) -> list[list[str]]:
    """The defensive pairs as text (cache keys)."""
    return [[pair.trigger.spec, pair.behavior.text] for pair in pairs]


def starting_model(model: Any, pad_id: int) -> Any:
    """The model as it is now, frozen, as a :data:`~mbdefense.training.objective.Teacher` for
    the anchor term: with LoRA adapters, the same model with them switched off (no copy);
    otherwise a frozen copy of its weights (twice the model's memory)."""
    import copy

    if hasattr(model, "disable_adapter"):
        def scored(items: Sequence[Any]) -> Any:
            with model.disable_adapter():
                return labelled_log_distributions(model, items, pad_id)
        return scored
    frozen = copy.deepcopy(model).eval()
    for param in frozen.parameters():
        param.requires_grad_(False)
    return lambda items: labelled_log_distributions(frozen, items, pad_id)


def _state_of_trainable(model: Any) -> dict[str, Any]:
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()
            if p.requires_grad}


def neutralize(model: Any, tokenizer: Any, trusted: Sequence[Example],
               pairs: Sequence[DefensivePair], config: NeutralizationConfig,
               seed: int = 0,
               augment: Callable[[list[Example], random.Random], list[Example]] | None = None,
               ) -> tuple[Any, dict[str, Any]]:
    """Run stage 2 (or Clean-FFT when ``pairs`` is empty or ``lam`` is 0).

    ``augment`` rewrites the train and the eval part after the split (trigger-augmented
    fine-tuning adds triggered copies there, so an example and its copies stay on one side).
    Returns the model with the best-eval-loss weights and a history of the eval losses; with
    ``repair_epochs``, the repair phase then starts from those weights (its own history and
    best epoch under ``"repair"``). ``config.triggers_per_copy`` above the number of ``pairs``
    is a :class:`ConfigError` before any training.
    """
    check_triggers_per_copy(config.triggers_per_copy, len(pairs))
    model, info = _train_phase(model, tokenizer, trusted, pairs, config, seed, augment)
    if config.repair_epochs > 0 and pairs:
        train = config.train_config()
        repair = replace(config, triggered_ce=config.repair_weight, repair_epochs=0.0,
                         train=replace(train, epochs=config.repair_epochs,
                                       description=f"{train.description} (repair)"))
        model, info["repair"] = _train_phase(model, tokenizer, trusted, pairs, repair, seed,
                                             augment)
    return model, info


def check_triggers_per_copy(count: int, n_pairs: int) -> None:
    if int(count) != count or count < 1:
        raise ConfigError(f"stage2.triggers_per_copy: must be a whole number >= 1, got {count}")
    if n_pairs and count > n_pairs:
        raise ConfigError(f"stage2.triggers_per_copy: {count} is more than the {n_pairs} "
                          "defensive triggers")


def stacked_insert(instruction: str, pair: DefensivePair, pairs: Sequence[DefensivePair],
                   count: int, rng: random.Random) -> str:
    """``instruction`` with ``pair``'s trigger and ``count - 1`` other defensive triggers
    (distinct, seeded) inserted, each at its own random place; ``count`` 1 draws no more from
    ``rng`` than inserting ``pair``'s trigger alone. The caller checks ``count`` against the
    pairs (:func:`check_triggers_per_copy`: when the defense is built, and on entering
    :func:`neutralize`)."""
    others = [p for p in pairs if p is not pair]
    for extra in rng.sample(others, count - 1):
        instruction = extra.trigger.insert(instruction, rng)
    return pair.trigger.insert(instruction, rng)


def _train_phase(model: Any, tokenizer: Any, trusted: Sequence[Example],
                 pairs: Sequence[DefensivePair], config: NeutralizationConfig, seed: int,
                 augment: Callable[[list[Example], random.Random], list[Example]] | None,
                 ) -> tuple[Any, dict[str, Any]]:
    train_cfg = replace(config.train_config(), seed=seed)   # LoRA init, dropout: this seed
    if config.triggers_per_step not in ("all", "one"):
        raise ValueError("triggers_per_step must be 'all' or 'one'")
    rng = random.Random(f"neutralize-split:{seed}")
    shuffled = list(trusted)
    rng.shuffle(shuffled)
    n_eval = max(1, int(round(len(shuffled) * config.eval_fraction))) if len(shuffled) > 1 else 0
    eval_set, train_set = shuffled[:n_eval], shuffled[n_eval:]
    if not train_set:
        raise ValueError("stage 2: the trusted set is too small to split")
    if augment is not None:
        eval_set = augment(eval_set, random.Random(f"augment-eval:{seed}"))
        train_set = augment(train_set, random.Random(f"augment-train:{seed}"))
    active_pairs = list(pairs) if config.lam or config.triggered_ce else []
    anchor = config.anchor if pairs else 0.0   # MB-Defense's term, never a baseline's
    if anchor and launched_with_sharded_weights():
        raise ConfigError("stage2.anchor: the starting model is read outside the training "
                          "engine, which a sharded engine (FSDP, ZeRO-3) does not allow; run "
                          "stage 2 with one process or DDP, or set stage2.anchor=0")
    max_len = train_cfg.max_length
    pad_id = tokenizer.pad_token_id

    def make_batch(examples: Sequence[Example], batch_rng: random.Random) -> NeutralizationBatch:
        clean, trig_clean, trig_def, sources = [], [], [], []
        for example in examples:
            clean.append(encode_example(tokenizer, example, max_len))
            sources.append(anchor_source(example, clean[-1]) if anchor else clean[-1])
            chosen = active_pairs
            if config.triggers_per_step == "one" and active_pairs:
                chosen = [batch_rng.choice(active_pairs)]
            for pair in chosen:
                triggered = example.replace(instruction=stacked_insert(
                    example.instruction, pair, active_pairs, config.triggers_per_copy,
                    batch_rng))
                trig_clean.append(encode_example(tokenizer, triggered, max_len))
                trig_def.append(encode_example(tokenizer, triggered, max_len,
                                               response=pair.behavior.text))
        return NeutralizationBatch(clean, trig_clean, trig_def, anchor_sources=sources)

    def anchor_source(example: Example, encoded: Any) -> Any:
        """What the starting model reads for the anchor: a copy with an insertion is held to
        the answer on its prompt without it (when truncation leaves the same answer tokens)."""
        original = example.meta.get(ANCHOR_SOURCE)
        if original is None:
            return encoded
        source = encode_example(tokenizer, example.replace(instruction=original), max_len)
        return source if labelled_count(source) == labelled_count(encoded) else encoded

    bs = train_cfg.batch_size
    steps_per_epoch = math.ceil(len(train_set) / bs)

    def batches(epoch: int):
        epoch_rng = random.Random(f"neutralize:{seed}:{epoch}")
        order = list(range(len(train_set)))
        epoch_rng.shuffle(order)
        for start in range(0, len(order), bs):
            yield make_batch([train_set[i] for i in order[start:start + bs]], epoch_rng)

    eval_batches = []
    eval_rng = random.Random(f"neutralize-eval:{seed}")
    for start in range(0, len(eval_set), bs):
        eval_batches.append(make_batch(eval_set[start:start + bs], eval_rng))

    teacher = None

    def terms_of(m: Any, batch: NeutralizationBatch):
        return neutralization_loss(m, batch, pad_id, config.lam, config.reduction,
                                   config.margin, config.triggered_ce, anchor, teacher,
                                   r_tokens=int(config.r_tokens))

    def loss_fn(m: Any, batch: NeutralizationBatch):
        return terms_of(m, batch).loss

    names = ("loss", "ce", "reg", "triggered_ce") + (("anchor_kl",) if anchor else ())

    def eval_loss(m: Any) -> dict[str, float]:
        import torch

        if not eval_batches:
            return {k: float("nan") for k in names}
        totals = dict.fromkeys(names, 0.0)
        was_training = m.training
        m.eval()        # no dropout: every epoch's eval loss is measured the same way
        with torch.no_grad():
            for batch in eval_batches:
                terms = terms_of(m, batch)
                for name in names:
                    totals[name] += float(getattr(terms, name) or 0.0)
        m.train(was_training)
        return {k: v / len(eval_batches) for k, v in totals.items()}

    model = apply_lora(model, train_cfg)
    if anchor:
        teacher = starting_model(model, pad_id)
    history: list[dict[str, float]] = [{"epoch": 0, **eval_loss(model)}]
    best: dict[str, Any] = {"loss": math.inf, "epoch": 0, "state": None}

    def on_epoch_end(epoch: int) -> None:
        stats = eval_loss(model)
        history.append({"epoch": epoch + 1, **stats})
        if not eval_batches or stats["loss"] < best["loss"]:
            # under keep="last" the weights in place at the end are kept: nothing to save
            best.update(loss=stats["loss"], epoch=epoch + 1,
                        state=None if config.keep == "last" else _state_of_trainable(model))

    model, _ = run_steps(model, batches, steps_per_epoch, loss_fn, train_cfg,
                         on_epoch_end=on_epoch_end)
    if best["state"] is not None:
        params = dict(model.named_parameters())
        import torch

        with torch.no_grad():
            for name, value in best["state"].items():
                params[name].copy_(value.to(params[name].device))
    model.eval()
    # best_epoch: the lowest eval loss; kept_epoch: the weights returned (the same under
    # keep="best", the last epoch under keep="last")
    kept_epoch = history[-1]["epoch"] if config.keep == "last" else best["epoch"]
    info = {"history": history, "best_epoch": best["epoch"], "kept_epoch": kept_epoch,
            "kept": config.keep, "n_train": len(train_set), "n_eval": len(eval_set)}
    return merge_lora(model), info
