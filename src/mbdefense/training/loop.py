"""A small training loop shared by supervised fine-tuning and the stage-2 objective."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

from mbdefense.training.config import TrainConfig
from mbdefense.training.runtime import Runtime
from mbdefense.training.seeding import device_of, seeded


def make_optimizer(model: Any, config: TrainConfig, total_steps: int):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters")
    kwargs: dict[str, Any] = {"lr": config.learning_rate, "weight_decay": config.weight_decay}
    try:  # one fused kernel over all parameters (CUDA, and CPU in recent torch): much faster
        optimizer = torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        optimizer = torch.optim.AdamW(params, **kwargs)
    warmup = max(int(total_steps * config.warmup_ratio), 0)

    def schedule(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        span = max(total_steps - warmup, 1)
        return max(0.0, 1.0 - (step - warmup) / span)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def progress_bar(total: int, description: str, enabled: bool):
    """A step bar with rate and time left; into a log file (not a terminal) it writes a line
    every 30 s instead of redrawing."""
    import sys

    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=description, disable=not enabled, leave=not interactive,
                dynamic_ncols=interactive, unit="step", mininterval=0.1 if interactive else 30,
                ascii=not interactive)


def run_steps(model: Any, batches_per_epoch: Callable[[int], Iterable[Any]],
              steps_per_epoch: int, loss_fn: Callable[[Any, Any], Any], config: TrainConfig,
              on_epoch_end: Callable[[int], None] | None = None) -> tuple[Any, list[float]]:
    """Run ``config.epochs`` epochs (fractions allowed) of optimizer steps; returns the
    trained model (in eval mode) and the micro-batch losses.

    ``batches_per_epoch(epoch)`` yields global micro-batches (:class:`~mbdefense.training.
    runtime.Shardable`); ``loss_fn(model, batch)`` returns a scalar loss normalised by the
    global batch's counts. ``grad_accum`` micro-batches make one optimizer step. Under
    ``accelerate launch`` every process trains on its shard of each batch
    (:mod:`mbdefense.training.runtime`). The model is trained in place; the one returned is
    the same module except after an engine that shards weights (FSDP, ZeRO-3), which gives a
    whole copy. Dropout is seeded from ``config.seed`` (:mod:`mbdefense.training.seeding`).
    """
    accum = max(config.grad_accum, 1)
    total_micro = int(math.ceil(steps_per_epoch * config.epochs))
    total_steps = max(math.ceil(total_micro / accum), 1)
    runtime = Runtime.for_run(model, config.precision, accum)
    optimizer, scheduler = make_optimizer(model, config, total_steps)
    checkpointing = config.gradient_checkpointing and hasattr(model,
                                                              "activation_checkpointing_enable")
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    wrapped, optimizer = runtime.prepare(model, optimizer)
    params = [p for p in model.parameters() if p.requires_grad]
    wrapped.train()
    losses: list[float] = []
    bar = progress_bar(total_steps, config.description, config.progress and runtime.is_main)
    micro = 0

    def train_epochs() -> None:
        nonlocal micro
        for epoch in range(math.ceil(config.epochs)):
            for batch in batches_per_epoch(epoch):
                if micro >= total_micro:
                    break
                micro += 1
                step_ends = micro % accum == 0 or micro == total_micro
                with runtime.accumulate(wrapped, sync=step_ends):
                    with runtime.forward_context():
                        part = loss_fn(wrapped, runtime.local(batch))
                    runtime.backward(runtime.scale(part), accum)
                losses.append(runtime.global_value(part))
                if step_ends:
                    if config.max_grad_norm:
                        runtime.clip(wrapped, params, config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    # the loss is drawn with the next refresh (at most every 30 s into a log)
                    bar.set_postfix(loss=f"{sum(losses[-accum:]) / min(accum, len(losses)):.3f}",
                                    refresh=False)
                    bar.update(1)
            if on_epoch_end is not None:
                on_epoch_end(epoch)

    try:  # dropout draws from torch's generators: seeded, the caller's RNG state kept
        with seeded(config.seed, "train", device_of(wrapped)):
            train_epochs()
    finally:
        bar.close()
        if checkpointing:
            model.activation_checkpointing_disable()
    model = runtime.finish(wrapped)
    model.eval()
    return model, losses
