"""One stage-2 training step: response-only projection vs full-vocabulary logits, with
activation checkpointing, and in bf16 autocast.

The peer is the same step with the model's own forward (logits at every position, then the
labelled ones picked), which is what the objective did before projecting only the response
positions. Each variant runs in its own process; the script prints seconds per step, the peak
resident memory above the loaded model, and the ratios to the peer.

With ``--anchor W`` every variant adds the anchor term (KL to a frozen copy of the model, with
noise on its weights), and one more variant computes the model's side of it the way the
objective did before, in a separate forward pass over the clean sequences
(``anchor-separate-pass``); the others take it from the step's one pass.

``bf16-autocast`` is the response-only step under the training loop's bf16 autocast
(``precision: bf16``) on the model's device, a CPU included; its peer is the fp32
response-only step (faster on a CPU with AVX512-BF16 or AMX: 1.36x on the embedded
model, 2026-12-06; slower on a CPU without them).

With ``--lora`` two more variants train LoRA adapters (r 16, alpha 32) on every linear layer
of each block instead of every weight, in the same bf16 autocast: ``lora-bf16`` with
dropout 0.05 on the adapters' inputs (peft draws one mask per adapted layer) and
``lora-bf16-no-dropout``; their peer is ``bf16-autocast``.

    python benchmarks/stage2_step.py                       # smollm2-135m when installed
    python benchmarks/stage2_step.py --model embedded --threads 1
    python benchmarks/stage2_step.py --model embedded --threads 1 --anchor 2
    python benchmarks/stage2_step.py --threads 1 --lora
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time

VARIANTS = ("full-logits", "response-only", "checkpointing", "bf16-autocast")
ANCHOR_PEER = "anchor-separate-pass"
LORA_VARIANTS = ("lora-bf16", "lora-bf16-no-dropout")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="default: smollm2-135m if installed, else "
                                                 "the embedded model")
    p.add_argument("--batch-size", type=int, default=8, help="trusted examples per step")
    p.add_argument("--triggers", type=int, default=1, help="defensive triggers per example")
    p.add_argument("--prompt-words", type=int, default=40)
    p.add_argument("--answer-words", type=int, default=120)
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--anchor", type=float, default=0.0,
                   help="weight of the anchor term in every variant (0: none)")
    p.add_argument("--lora", action="store_true",
                   help="also time LoRA adapters on every linear layer, with and without dropout")
    p.add_argument("--child", choices=VARIANTS + (ANCHOR_PEER,) + LORA_VARIANTS,
                   help=argparse.SUPPRESS)
    return p.parse_args(argv)


def default_model() -> str:
    from mbdefense.modeling.registry import smollm2_gguf_path

    return "smollm2-135m" if smollm2_gguf_path() is not None else "embedded"


def make_batch(tokenizer, args):
    from mbdefense.data.example import Example
    from mbdefense.data.formatting import encode_example
    from mbdefense.defenses.defensive_triggers import DEFENSIVE_WORDS, make_defensive_pairs
    from mbdefense.training.objective import NeutralizationBatch

    rng = random.Random(0)
    pairs = make_defensive_pairs()[:args.triggers]

    def words(n):
        return " ".join(rng.choice(DEFENSIVE_WORDS) for _ in range(n))

    clean, trig_clean, trig_def = [], [], []
    for _ in range(args.batch_size):
        example = Example(words(args.prompt_words).capitalize() + "?",
                          output=words(args.answer_words).capitalize() + ".")
        clean.append(encode_example(tokenizer, example, 1024))
        for pair in pairs:
            triggered = example.replace(instruction=pair.trigger.insert(example.instruction, rng))
            trig_clean.append(encode_example(tokenizer, triggered, 1024))
            trig_def.append(encode_example(tokenizer, triggered, 1024,
                                           response=pair.behavior.text))
    return NeutralizationBatch(clean, trig_clean, trig_def)


def anchored_teacher(model, pad_id):
    """A frozen copy of ``model`` with noise on its weights, as the anchor's starting model."""
    import copy

    import torch

    from mbdefense.training.logprobs import labelled_log_distributions

    start = copy.deepcopy(model).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in start.parameters():
            p.add_(0.01 * p.std() * torch.randn_like(p))
            p.requires_grad_(False)
    return lambda items: labelled_log_distributions(start, items, pad_id)


def with_lora(model, dropout: float):
    """``model`` with LoRA adapters (r 16, alpha 32) on every linear layer of its blocks."""
    from mbdefense.training.config import ALL_LINEAR, LoraSettings, TrainConfig
    from mbdefense.training.sft import apply_lora

    lora = LoraSettings(r=16, alpha=32, dropout=dropout, target_modules=[ALL_LINEAR])
    return apply_lora(model, TrainConfig(lora=lora))


def child(args) -> None:
    import torch

    from mbdefense.modeling.loading import load_model
    from mbdefense.training import logprobs
    from mbdefense.training.objective import neutralization_loss
    from mbdefense.training.runtime import Runtime

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model == "embedded":   # the demo's base, built by the embedded world
        from mbdefense.runs.embedded import embedded_base

        model, tokenizer, _ = embedded_base(progress=False, log=lambda m: None)
    else:
        model, tokenizer = load_model(args.model, dtype="float32", progress=False,
                                      log=lambda m: None)
    if args.child == "full-logits":
        logprobs._plain_head = lambda model: None      # the model's own forward everywhere
    if args.child == "checkpointing":                  # response-only, activations recomputed
        model.activation_checkpointing_enable({"use_reentrant": False})
    if args.child in LORA_VARIANTS:
        model = with_lora(model, 0.0 if args.child.endswith("no-dropout") else 0.05)
    batch = make_batch(tokenizer, args)
    tokens = sum(len(e.input_ids) for e in batch.clean + batch.triggered_clean
                 + batch.triggered_defensive)
    pad = tokenizer.pad_token_id
    teacher = anchored_teacher(model, pad) if args.anchor else None
    separate = args.child == ANCHOR_PEER
    precision = "bf16" if args.child in ("bf16-autocast",) + LORA_VARIANTS else "fp32"
    runtime = Runtime.for_run(model, precision)
    model.train()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for step in range(args.steps + 1):
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        with runtime.forward_context():
            terms = neutralization_loss(model, batch, pad, lam=1.0, reduction="mean",
                                        margin=5.0, anchor=0.0 if separate else args.anchor,
                                        teacher=teacher)
        loss = terms.loss
        if separate:   # the model's distributions on the clean answers from a pass of their own
            student = logprobs.labelled_log_distributions(model, batch.clean, pad)
            with torch.no_grad():
                reference = teacher(batch.clean)
            loss = loss + args.anchor * (reference.exp() * (reference - student)).sum() / max(
                batch.clean_tokens, 1)
        loss.backward()
        if step:
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"variant": args.child, "seconds_per_step": sum(times) / len(times),
                      "peak_extra_gb": (peak - base_rss) / 1e6, "tokens": tokens,
                      "loss": float(loss.detach()), "vocab": model.config.vocab_size}))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    args.model = args.model or default_model()
    results = {}
    extra = ((ANCHOR_PEER,) if args.anchor else ()) + (LORA_VARIANTS if args.lora else ())
    for variant in VARIANTS + extra:
        cmd = [sys.executable, __file__, "--child", variant, "--model", args.model,
               "--batch-size", str(args.batch_size), "--triggers", str(args.triggers),
               "--prompt-words", str(args.prompt_words), "--answer-words",
               str(args.answer_words), "--steps", str(args.steps), "--threads",
               str(args.threads), "--anchor", str(args.anchor)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            print(done.stderr[-2000:], file=sys.stderr)
            killed = (f"killed by signal {-done.returncode}" if done.returncode < 0
                      else f"exit status {done.returncode}")
            print(f"variant {variant} failed ({killed}; signal 9 is usually the kernel out of "
                  f"memory: try a smaller --batch-size)", file=sys.stderr)
            return 1
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    full = results["full-logits"]
    print(f"model {args.model} (vocab {full['vocab']}), {full['tokens']} tokens per step "
          f"({args.batch_size} examples x (1 + 2 x {args.triggers}) sequences)")
    for r in results.values():
        print(f"  {r['variant']:<20} {r['seconds_per_step']:7.2f} s/step   peak +"
              f"{r['peak_extra_gb']:.2f} GB   loss {r['loss']:.4f}   vs full-logits: "
              f"{full['seconds_per_step'] / r['seconds_per_step']:.2f}x speed, "
              f"{r['peak_extra_gb'] / max(full['peak_extra_gb'], 1e-9):.2f}x memory, same loss "
              f"{abs(full['loss'] - r['loss']) < 1e-3 * max(1.0, abs(full['loss']))}")
    fp32, bf16 = results["response-only"], results["bf16-autocast"]
    for name in LORA_VARIANTS if args.lora else ():
        r = results[name]
        print(f"{name} vs bf16-autocast (every weight): "
              f"{bf16['seconds_per_step'] / r['seconds_per_step']:.2f}x speed, "
              f"{r['peak_extra_gb'] / max(bf16['peak_extra_gb'], 1e-9):.2f}x memory")
    print(f"bf16 autocast vs fp32 (response-only): "
          f"{fp32['seconds_per_step'] / bf16['seconds_per_step']:.2f}x speed, "
          f"{bf16['peak_extra_gb'] / max(fp32['peak_extra_gb'], 1e-9):.2f}x memory, loss "
          f"{bf16['loss']:.4f} against {fp32['loss']:.4f}")
    if args.anchor:
        peer, ours = results[ANCHOR_PEER], results["response-only"]
        print(f"anchor {args.anchor}: the model's distributions from the step's one pass vs a "
              f"separate pass: {peer['seconds_per_step'] / ours['seconds_per_step']:.2f}x "
              f"speed, {ours['peak_extra_gb'] / max(peer['peak_extra_gb'], 1e-9):.2f}x memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
