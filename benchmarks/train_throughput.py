"""Supervised fine-tuning throughput: mbdefense's ``finetune`` against HF Trainer, TRL and a
fixed-length loop, in one run.

Every variant trains a fresh copy of the same weights on the same examples (the embedded
default's 2000 training examples, 20% BadNet-poisoned, tokenised by
``mbdefense.data.formatting``), with the same batch size, number of optimizer steps, AdamW
learning rate, linear schedule with 5% warm-up, gradient clipping at 1.0, no gradient
accumulation and the loss on the answer tokens only:

- ``mbdefense``:    ``mbdefense.training.sft.finetune`` (its public API; fractional epochs give
                    exactly ``--steps`` optimizer steps).
- ``hf-trainer``:   ``transformers.Trainer``, ``DataCollatorForSeq2Seq`` (pads each batch to its
                    longest sequence, labels with -100), the same encoded examples.
- ``trl-sft``:      ``trl.SFTTrainer`` on a prompt-completion dataset (prompt: the chat-formatted
                    prompt; completion: the answer and the end-of-turn token), packing off,
                    padding to the longest; its tokenisation is checked against mbdefense's.
- ``fixed-length``: a plain PyTorch loop padding every batch to ``--max-length`` and calling the
                    model's full forward with ``labels`` (the naive baseline).

What is measured, the same way for every variant (hooks installed before training starts):

- tokens: a forward pre-hook on the decoder (``model.get_decoder()``, which every variant runs
  once per micro-batch) keeps every batch the model is actually given and counts, after
  training, its rows, sequences, real tokens (``attention_mask == 1``; for packed rows, which
  come without a mask, the tokens that are not padding, and a new sequence wherever
  ``position_ids`` restart at 0) and padded tokens (``input_ids.numel()``, the compute spent).
  Forwards without gradients (a framework's own checks) are not counted. Checks: every
  sequence seen has the length of a training example (no more often than the epochs allow),
  ``steps x batch`` sequences in all, and the masks agree with ``input_ids != pad``;
- time: a global optimizer step post-hook timestamps the end of every optimizer step (after a
  CUDA synchronize on the first and last step). The timed window runs from the end of step 1
  to the end of step N: the warm-up step and everything before it (imports, loading the model,
  tokenising and preparing the dataset, building the trainer and optimizer) and everything
  after the last step (teardown, ``model.eval()``, the trainer's end-of-training bookkeeping)
  are excluded. Batch building/collation, forward, backward, clipping, the optimizer and the
  scheduler of steps 2..N, and each framework's per-step overhead are included.
- peak memory: CUDA max allocated since just before training (weights included), else the
  process's peak resident set (each variant runs in its own process; ``extra`` is how much
  training raised that peak above what loading had already reached).
- loss: the last step's loss (each variant's own batches, so not comparable), and the answer
  loss of the first 64 training examples after training, the same measurement for all.

    python benchmarks/train_throughput.py                     # embedded default, batch 8
    python benchmarks/train_throughput.py --steps 40 --variants mbdefense,hf-trainer --threads 1
    python benchmarks/train_throughput.py --threads 1 --repeats 3 --json train_throughput.json
    python benchmarks/train_throughput.py --shape smollm2-135m --device cuda --steps 100
    python benchmarks/train_throughput.py --shape llama-3.2-1b --device cuda --steps 50
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("mbdefense", "hf-trainer", "trl-sft", "fixed-length")
SHAPES = ("embedded", "smollm2-135m", "llama-3.2-1b")
# mbdefense vs each peer in real tokens/s
TARGETS = {"hf-trainer": 1.0, "trl-sft": 1.0, "fixed-length": 3.0}
LEARNING_RATE = 3e-4      # the demo's fine-tune (runs.presets.embedded)
WARMUP_RATIO = 0.05       # TrainConfig's default
MAX_GRAD_NORM = 1.0
SEED = 0
EVAL_EXAMPLES = 64        # after training: answer loss on these (the same for every variant)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=SHAPES, default="embedded",
                   help="the embedded default's model, or a randomly initialised Llama of a real "
                        "size (bf16 on a GPU) trained on the embedded data")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=8, help="the demo's fine-tune batch size")
    p.add_argument("--steps", type=int, default=60,
                   help="optimizer steps per variant (the first one is a warm-up, not timed)")
    p.add_argument("--max-length", type=int, default=256, help="TrainConfig's default")
    p.add_argument("--lr", type=float, default=LEARNING_RATE)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=1,
                   help="run the variants round-robin this many times; the table shows the "
                        "run with the median throughput (for a shared, noisy machine)")
    p.add_argument("--json", help="also write every run's measurements here")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps must be at least 2 (one warm-up step and at least one timed step)")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    return args


# ----------------------------------------------------------------------------------------
# the child: one variant in one process
# ----------------------------------------------------------------------------------------

class Probe:
    """Records what the decoder is given and timestamps the ends of optimizer steps.

    The batches are kept (cloned token ids, attention mask and position ids: small) and read
    after training, so the probe adds no device synchronisation to the steps. A row holds one
    sequence, or several when packed: then the sequences start where ``position_ids`` restart
    at 0 and the real tokens are those that are not ``pad_id`` (the packed layout's
    convention), since there is no 2-D attention mask to read.
    """

    def __init__(self, model, total_steps: int, cuda: bool, pad_id: int):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.total_steps = total_steps
        self.cuda = cuda
        self.pad_id = pad_id
        self.step = 0                           # optimizer steps finished so far
        self.step_ends: list[float] = []
        self.batches: list[tuple] = []          # (timed, ids, mask or None, positions or None)
        self.no_grad_forwards = 0               # e.g. a framework's own checks: not training
        self.optimizer: dict = {}
        decoder = model.get_decoder()
        self._handles = [decoder.register_forward_pre_hook(self._on_forward, with_kwargs=True),
                         register_optimizer_step_post_hook(self._on_step)]

    def _on_forward(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:                         # inputs_embeds: nothing to count
            return None
        import torch

        if not torch.is_grad_enabled():
            self.no_grad_forwards += 1
            return None
        mask = kwargs.get("attention_mask")
        if mask is not None and getattr(mask, "dim", lambda: 0)() != 2:
            mask = None                         # a 4-D mask: fall back to ids != pad
        positions = kwargs.get("position_ids")
        self.batches.append((self.step >= 1, ids.detach().clone(),
                             None if mask is None else mask.detach().clone(),
                             None if positions is None else positions.detach().clone()))
        return None

    def _on_step(self, optimizer, args, kwargs):
        import torch

        self.step += 1
        if self.step in (1, self.total_steps) and self.cuda:
            torch.cuda.synchronize()
        self.step_ends.append(time.perf_counter())
        if not self.optimizer:
            d = optimizer.defaults
            self.optimizer = {"class": type(optimizer).__name__, "fused": d.get("fused"),
                              "foreach": d.get("foreach"), "lr": d.get("lr"),
                              "weight_decay": d.get("weight_decay")}

    def close(self):
        for handle in self._handles:
            handle.remove()

    def counts(self) -> dict:
        """Rows, sequences, real and padded tokens ([all steps, timed steps]), the real length
        of every sequence seen, and how many rows' masks disagree with ``ids != pad_id``."""
        import torch

        out = {"rows": [0, 0], "sequences": [0, 0], "real": [0, 0], "padded": [0, 0],
               "forwards": len(self.batches), "no_grad_forwards": self.no_grad_forwards,
               "packed": False, "mask_mismatch": 0,
               "lengths": collections.Counter()}
        for timed, ids, mask, positions in self.batches:
            ids = ids.cpu()
            not_pad = ids != self.pad_id
            if mask is not None:
                real = mask.cpu().bool()
                out["mask_mismatch"] += int((real.sum(1) != not_pad.sum(1)).sum())
            else:
                real = not_pad
            if positions is not None:
                positions = positions.cpu().expand_as(ids)
            lengths = []
            for row in range(ids.shape[0]):
                where = torch.nonzero(real[row]).flatten()
                if positions is None or where.numel() == 0:
                    lengths.append(int(where.numel()))
                    continue
                starts = torch.nonzero(positions[row][where] == 0).flatten().tolist()
                if not starts or starts[0] != 0:
                    starts = [0, *starts]
                bounds = [*starts, where.numel()]
                lengths += [b - a for a, b in zip(bounds, bounds[1:])]
            out["packed"] |= len(lengths) > ids.shape[0]
            for k in {0, int(timed)}:
                out["rows"][k] += ids.shape[0]
                out["sequences"][k] += len(lengths)
                out["real"][k] += int(real.sum())
                out["padded"][k] += ids.numel()
            out["lengths"].update(lengths)
        return out


def load_inputs(args):
    """(model on the device, tokenizer, training examples, encoded examples)."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import embedded_workload, random_model
    from mbdefense.data.formatting import encode_examples

    work = embedded_workload()
    tokenizer, examples = work["tokenizer"], work["train"]
    tokenizer.padding_side = "right"
    if args.shape == "embedded":
        model = work["model"].to(args.device)
    else:
        dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
        model = random_model(args.shape, device=args.device, dtype=dtype, seed=SEED)
        if tokenizer.pad_token_id != model.config.pad_token_id:
            raise SystemExit("the random shape's pad id differs from the embedded tokenizer's")
        if len(tokenizer) > model.config.vocab_size:
            raise SystemExit("the embedded tokenizer's ids do not fit the shape's vocabulary")
    encoded = encode_examples(tokenizer, examples, args.max_length)
    return model, tokenizer, examples, encoded


def warmup_steps(steps: int) -> int:
    return max(int(steps * WARMUP_RATIO), 0)    # as mbdefense's make_optimizer


def run_mbdefense(args, model, tokenizer, examples, encoded, probe):
    from dataclasses import fields

    from mbdefense.training.config import TrainConfig
    from mbdefense.training.sft import finetune

    # finetune runs ceil(ceil(len / batch) * epochs) micro-batches: pick epochs for exactly
    # args.steps of them (the probe checks the count)
    per_epoch = math.ceil(len(examples) / args.batch_size)
    epochs = args.steps / per_epoch
    while math.ceil(per_epoch * epochs) > args.steps:
        epochs = math.nextafter(epochs, 0.0)
    settings = dict(epochs=epochs, learning_rate=args.lr, batch_size=args.batch_size,
                    grad_accum=1, max_length=args.max_length, warmup_ratio=WARMUP_RATIO,
                    weight_decay=0.0, max_grad_norm=MAX_GRAD_NORM, gradient_checkpointing=False,
                    seed=SEED, progress=False, description="throughput")
    names = {f.name for f in fields(TrainConfig)}
    if "precision" in names:
        settings["precision"] = "bf16" if args.cuda else "fp32"
    config = TrainConfig(**{k: v for k, v in settings.items() if k in names})
    trained, losses = finetune(model, tokenizer, examples, config)
    extra = {"precision": settings.get("precision", "n/a (no TrainConfig.precision)"),
             "epochs": epochs}
    for name in ("length_grouping",):
        if name in names:
            extra[name] = getattr(config, name)
    return trained, [float(x) for x in losses], extra


def trainer_arguments(args, cls, output_dir, **more):
    common = dict(output_dir=output_dir, per_device_train_batch_size=args.batch_size,
                  max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="linear",
                  warmup_steps=warmup_steps(args.steps), weight_decay=0.0,
                  max_grad_norm=MAX_GRAD_NORM, gradient_accumulation_steps=1,
                  logging_strategy="no", save_strategy="no", eval_strategy="no",
                  report_to="none", disable_tqdm=True, dataloader_num_workers=0,
                  use_cpu=not args.cuda, bf16=args.cuda, gradient_checkpointing=False,
                  seed=SEED)
    common.update(more)
    return cls(**common)


def recording(trainer_cls):
    """``trainer_cls`` keeping every step's (detached) loss; read after training."""

    class Recording(trainer_cls):
        step_losses: list

        def training_step(self, *a, **k):
            loss = super().training_step(*a, **k)
            self.step_losses.append(loss.detach())
            return loss

    return Recording


def run_hf_trainer(args, model, tokenizer, examples, encoded, probe):
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    data = [{"input_ids": list(e.input_ids), "labels": list(e.labels)} for e in encoded]
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100,
                                      return_tensors="pt")
    with tempfile.TemporaryDirectory() as out:
        trainer = recording(Trainer)(model=model, args=trainer_arguments(args, TrainingArguments,
                                                                          out),
                                     train_dataset=data, data_collator=collator)
        trainer.step_losses = []
        trainer.train()
    return trainer.model, [float(x) for x in trainer.step_losses], {
        "optim": str(trainer.args.optim), "bf16": trainer.args.bf16,
        "sampler": str(getattr(trainer.args, "train_sampling_strategy", "random")),
        "checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False))}


def run_trl(args, model, tokenizer, examples, encoded, probe):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from mbdefense.data.formatting import render_prompt

    # mbdefense tokenises the answer on its own and the embedded tokenizer gives every text
    # segment a prefix space (" WINDOW" -> "ĠW", "IN", "DOW"); TRL tokenises prompt + completion
    # in one go. The completion carries that space itself when it makes the ids identical.
    space = max(("", " "), key=lambda prefix: sum(
        tokenizer(text=render_prompt(tokenizer, e) + prefix + e.output + tokenizer.eos_token)[
            "input_ids"] == x.input_ids for e, x in zip(examples[:50], encoded[:50])))
    rows = [{"prompt": render_prompt(tokenizer, e),
             "completion": space + e.output + tokenizer.eos_token} for e in examples]
    dataset = Dataset.from_list(rows)
    with tempfile.TemporaryDirectory() as out:
        config = trainer_arguments(args, SFTConfig, out, max_length=args.max_length,
                                   packing=False, completion_only_loss=True)
        trainer = recording(SFTTrainer)(model=model, args=config, train_dataset=dataset,
                                        processing_class=tokenizer)
        trainer.step_losses = []
        prepared = trainer.train_dataset
        same = sum(1 for row, e in zip(prepared, encoded)
                   if list(row["input_ids"]) == e.input_ids and list(row["labels"]) == e.labels)
        trainer.train()
    return trainer.model, [float(x) for x in trainer.step_losses], {
        "optim": str(trainer.args.optim), "bf16": trainer.args.bf16,
        "completion_prefix": repr(space),
        "same_tokens_as_mbdefense": f"{same}/{len(encoded)} sequences",
        "trl_num_tokens": int(trainer._total_train_tokens),
        "checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False))}


def run_fixed_length(args, model, tokenizer, examples, encoded, probe):
    import random

    import torch

    from mbdefense.training.batching import collate

    pad_id = tokenizer.pad_token_id
    total = args.steps
    warm = warmup_steps(total)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=args.lr, weight_decay=0.0,
                                  **({"fused": True} if args.cuda else {}))

    def schedule(step):
        if warm and step < warm:
            return (step + 1) / warm
        return max(0.0, 1.0 - (step - warm) / max(total - warm, 1))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    rng = random.Random(SEED)

    def batches():
        while True:
            order = list(range(len(encoded)))
            rng.shuffle(order)
            for start in range(0, len(order), args.batch_size):
                items = [encoded[i] for i in order[start:start + args.batch_size]]
                batch = collate(items, pad_id, args.max_length)
                yield batch["input_ids"], batch["attention_mask"], batch["labels"]

    losses = []
    model.train()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.cuda)
    stream = batches()
    for _ in range(total):
        ids, mask, labels = (t.to(args.device) for t in next(stream))
        with autocast:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    model.eval()
    return model, [float(x) for x in losses], {"precision": "bf16 autocast" if args.cuda else "fp32"}


def held_loss(model, items, pad_id, args) -> float:
    """Token-mean answer NLL on ``items`` with the model's own forward, after training (not
    timed): the one loss that is comparable across variants, whose batches differ."""
    import torch

    from mbdefense.training.batching import collate

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.cuda):
        for start in range(0, len(items), 16):
            chunk = items[start:start + 16]
            batch = {k: v.to(args.device) for k, v in collate(chunk, pad_id).items()}
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits[:, :-1].float()
            labels = batch["labels"][:, 1:]
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels,
                                                    ignore_index=-100, reduction="sum")
            total += float(nll)
            count += int((labels != -100).sum())
    return total / max(count, 1)


RUNNERS = {"mbdefense": run_mbdefense, "hf-trainer": run_hf_trainer, "trl-sft": run_trl,
           "fixed-length": run_fixed_length}


def child(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    args.cuda = args.device.startswith("cuda")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common

    model, tokenizer, examples, encoded = load_inputs(args)
    params = sum(p.numel() for p in model.parameters())
    eval_before = held_loss(model, encoded[:EVAL_EXAMPLES], tokenizer.pad_token_id, args)
    common.reset_peak_memory()
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    probe = Probe(model, args.steps, args.cuda, tokenizer.pad_token_id)
    trained, losses, extra = RUNNERS[args.child](args, model, tokenizer, examples, encoded,
                                                 probe)
    probe.close()
    peak = common.peak_memory_gb()
    peak_extra = (None if args.cuda else
                  (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - loaded_rss) / 2**20)
    eval_loss = held_loss(trained, encoded[:EVAL_EXAMPLES], tokenizer.pad_token_id, args)
    if probe.step != args.steps:
        raise SystemExit(f"{args.child}: {probe.step} optimizer steps, expected {args.steps}")
    seconds = probe.step_ends[-1] - probe.step_ends[0]
    step_times = [b - a for a, b in zip(probe.step_ends, probe.step_ends[1:])]
    c = probe.counts()
    # every sequence the model saw is one training example: its real length must be one of
    # theirs, no more often than the epochs allow
    epochs = math.ceil(c["sequences"][0] / len(encoded))
    available = collections.Counter(len(e.input_ids) for e in encoded)
    lengths_ok = all(n <= epochs * available[length] for length, n in c["lengths"].items())
    result = {
        "variant": args.child, "shape": args.shape, "device": common.device_name(),
        "threads": torch.get_num_threads(), "batch_size": args.batch_size, "steps": args.steps,
        "timed_steps": args.steps - 1, "seconds": seconds,
        "seconds_per_step_median": statistics.median(step_times),
        "real_tokens": c["real"][1], "padded_tokens": c["padded"][1],
        "sequences": c["sequences"][1], "rows": c["rows"][1], "packed": c["packed"],
        "real_tokens_per_s": c["real"][1] / seconds,
        "padded_tokens_per_s": c["padded"][1] / seconds,
        "pad_fraction": 1 - c["real"][1] / max(c["padded"][1], 1),
        "all_steps": {"real_tokens": c["real"][0], "padded_tokens": c["padded"][0],
                      "sequences": c["sequences"][0], "rows": c["rows"][0],
                      "forwards": c["forwards"],
                      "no_grad_forwards": c["no_grad_forwards"]},
        "sequences_are_training_examples": lengths_ok,
        "sequences_per_step_ok": c["sequences"][0] == args.steps * args.batch_size,
        "mask_vs_pad_mismatches": c["mask_mismatch"],
        "peak_memory_gb": peak, "peak_memory_extra_gb": peak_extra,
        "memory_kind": "cuda max allocated" if args.cuda else "process peak RSS",
        "final_loss": losses[-1],
        "mean_loss_last_10pct": statistics.fmean(losses[-max(1, len(losses) // 10):]),
        "first_loss": losses[0], "eval_loss": eval_loss, "eval_loss_before": eval_before,
        "optimizer": probe.optimizer, "parameters": params,
        **extra,
    }
    if args.shape != "embedded":
        # useful work: attention over each sequence's own length; computed work: over the rows
        real_flops = common.training_flops_per_token(model, c["real"][1] / c["sequences"][1])
        padded_flops = common.training_flops_per_token(model, c["padded"][1] / c["rows"][1])
        result["mfu_real"] = common.mfu(result["real_tokens_per_s"], real_flops,
                                        common.device_name())
        result["mfu_padded"] = common.mfu(result["padded_tokens_per_s"], padded_flops,
                                          common.device_name())
        result["flops_per_real_token"] = real_flops
    print(json.dumps(result))


# ----------------------------------------------------------------------------------------
# the parent: every variant in its own process, then the summary
# ----------------------------------------------------------------------------------------

def run_child(args, variant) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--shape", args.shape, "--device",
           args.device, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
           "--max-length", str(args.max_length), "--lr", str(args.lr), "--threads",
           str(args.threads)]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error",
               HF_HUB_OFFLINE="1", WANDB_DISABLED="true")
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode:
        print(done.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"{variant} failed (exit {done.returncode})")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - start
    return result


def fmt_mfu(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def summary(args, chosen: dict, runs: dict) -> None:
    first = next(iter(chosen.values()))
    print(f"\nshape {args.shape}, device {first['device']}, {first['threads']} threads, batch "
          f"{args.batch_size}, {args.steps} optimizer steps (step 1 = warm-up, not timed), "
          f"max_length {args.max_length}, lr {args.lr}"
          + (f", median of {args.repeats} runs" if args.repeats > 1 else ""))
    print(f"eval loss: answer NLL of the first {EVAL_EXAMPLES} training examples after training "
          f"(before: {first['eval_loss_before']:.4f}); final loss: the last step's batch (the "
          f"variants' batches differ)")
    mfu = args.shape != "embedded"
    header = (f"{'variant':<13} {'seconds':>8} {'s/step':>7} {'real tok':>9} {'real tok/s':>11} "
              f"{'padded tok':>10} {'pad %':>6} {'peak GB':>8} {'+train':>7} {'final loss':>10} "
              f"{'eval loss':>9}" + (f" {'MFU real':>9} {'MFU pad':>8}" if mfu else ""))
    print(header)
    for name, r in chosen.items():
        extra = r["peak_memory_extra_gb"]
        print(f"{name:<13} {r['seconds']:8.2f} {r['seconds_per_step_median']:7.3f} "
              f"{r['real_tokens']:9d} {r['real_tokens_per_s']:11.0f} {r['padded_tokens']:10d} "
              f"{100 * r['pad_fraction']:6.1f} {r['peak_memory_gb']:8.2f} "
              f"{'-' if extra is None else f'{extra:.2f}':>7} {r['final_loss']:10.4f} "
              f"{r['eval_loss']:9.4f}"
              + (f" {fmt_mfu(r.get('mfu_real')):>9} {fmt_mfu(r.get('mfu_padded')):>8}"
                 if mfu else ""))
    if args.repeats > 1:
        for name, rs in runs.items():
            print(f"  {name:<13} real tok/s per run: "
                  + ", ".join(f"{r['real_tokens_per_s']:.0f}" for r in rs))
    for name, r in chosen.items():
        notes = [f"optimizer {r['optimizer'].get('class')} fused={r['optimizer'].get('fused')}"
                 f" foreach={r['optimizer'].get('foreach')}"]
        for key in ("precision", "length_grouping", "optim", "bf16", "sampler", "checkpointing",
                    "same_tokens_as_mbdefense", "completion_prefix"):
            if key in r:
                notes.append(f"{key}={r[key]}")
        if "trl_num_tokens" in r and r["trl_num_tokens"] != r["all_steps"]["real_tokens"]:
            notes.append(f"TRL's own token count {r['trl_num_tokens']} != "
                         f"{r['all_steps']['real_tokens']}")
        if r.get("packed"):
            notes.append(f"packed: {r['sequences']} sequences in {r['rows']} rows")
        if (not r["sequences_are_training_examples"] or r["mask_vs_pad_mismatches"]
                or not r["sequences_per_step_ok"]):
            notes.append("TOKEN COUNT CHECK FAILED")
        print(f"  {name}: " + ", ".join(notes))
    if "mbdefense" in chosen:
        mine = chosen["mbdefense"]["real_tokens_per_s"]
        print("\nmbdefense vs peers (real tokens/s):")
        for name, r in chosen.items():
            if name == "mbdefense":
                continue
            ratio = mine / r["real_tokens_per_s"]
            target = TARGETS.get(name)
            verdict = "" if target is None else (
                f"  (target >= {target:.1f}x: {'met' if ratio >= target else 'NOT met'})")
            print(f"  vs {name:<13} {ratio:5.2f}x{verdict}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        child(args)
        return 0
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    for repeat in range(args.repeats):
        for variant in args.variants:
            result = run_child(args, variant)
            runs[variant].append(result)
            print(f"[{repeat + 1}/{args.repeats}] {variant:<13} {result['seconds']:7.2f}s timed, "
                  f"{result['real_tokens_per_s']:8.0f} real tok/s, "
                  f"{result['process_seconds']:.0f}s process", flush=True)
    chosen = {v: sorted(rs, key=lambda r: r["real_tokens_per_s"])[len(rs) // 2]
              for v, rs in runs.items()}
    summary(args, chosen, runs)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items()
                                                        if k != "child"},
                                               "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
