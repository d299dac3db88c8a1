"""How the cost of a defended run grows with the training data: 1x, 2x, 4x.

One MB-Defense run on the embedded default (BadNet -> refusal, 20% poisoned) per size, with
the demo's settings: stage 1 (defensive poisoning: fine-tuning the base on the attacked data
plus the defender's examples), stage 2 (neutralization on the 128-example trusted set, whose
size does not change) and the evaluation (676 generations, also fixed). Prints the seconds of
each part and the ratios to the 1x run; stage 1 is the part that should grow linearly.

    python benchmarks/scaling.py                    # 1000, 2000, 4000 training examples
    python benchmarks/scaling.py --base-size 500 --threads 2 --json scaling.json
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-size", type=int, default=1000, help="training examples at 1x")
    p.add_argument("--factors", default="1,2,4")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--json", help="also write the results here")
    return p.parse_args(argv)


def defended_run(n_train: int) -> dict[str, float]:
    """MB-Defense on the embedded default with ``n_train`` training examples, through the
    library's lifecycle (nothing cached): seconds per stage."""
    from mbdefense.evaluation.scorers import ExactMatchScorer
    from mbdefense.runs.cache import StageCache
    from mbdefense.runs.lifecycle import Lifecycle
    from mbdefense.runs.presets import embedded
    from mbdefense.runs.spec import Experiment, ModelSpec
    from mbdefense.runs.workload import build_workload

    quiet = lambda message: None  # noqa: E731
    settings = embedded()
    settings.data = replace(settings.data, n_train=n_train)
    experiment = Experiment(model=ModelSpec(name="embedded"), settings=settings,
                            defenses=["mb-defense"], progress=False)
    work = build_workload(experiment, log=quiet)
    lifecycle = Lifecycle(work, settings, experiment.seed, scorer=ExactMatchScorer(),
                          cache=StageCache(None, log=quiet), progress=False, log=quiet)
    done = lifecycle.defend(lifecycle.make("mb-defense"))
    times = {"stage1": done.timings["finetune"] + done.timings.get("after_finetune", 0.0),
             "stage2": done.timings["after_training"]}
    t0 = time.perf_counter()
    lifecycle.evaluate(done.model, done.defense)
    times["evaluation"] = time.perf_counter() - t0
    times["total"] = sum(times.values())
    times["train_examples"] = len(done.train_set)
    return times


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    factors = [int(f) for f in args.factors.split(",")]
    results = {}
    for factor in factors:
        n = args.base_size * factor
        results[factor] = defended_run(n)
        r = results[factor]
        print(f"{factor}x ({n} examples, {r['train_examples']} after defensive poisoning): "
              f"stage 1 {r['stage1']:.1f}s  stage 2 {r['stage2']:.1f}s  "
              f"evaluation {r['evaluation']:.1f}s  total {r['total']:.1f}s", flush=True)
    one = results[factors[0]]
    print(f"\nratios to {factors[0]}x (linear in the data would be the factor itself):")
    for factor in factors[1:]:
        r = results[factor]
        data_ratio = r["train_examples"] / one["train_examples"]
        print(f"  {factor}x: data {data_ratio:.2f}x  stage 1 {r['stage1'] / one['stage1']:.2f}x  "
              f"total {r['total'] / one['total']:.2f}x  (stage 1 seconds per example "
              f"{r['stage1'] / r['train_examples'] * 1e3:.1f} ms vs "
              f"{one['stage1'] / one['train_examples'] * 1e3:.1f} ms at {factors[0]}x)")
    if args.json:
        from pathlib import Path

        from mbdefense.core.io import atomic_write_json

        atomic_write_json(Path(args.json), {"base_size": args.base_size, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
