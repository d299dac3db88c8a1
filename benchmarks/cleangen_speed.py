"""CleanGen decoding speed: with a KV cache per model vs recomputing every prefix.

The peer is CleanGen without caches (``use_cache=False``: ``k`` forward passes of the suspect
model over every whole sequence and one of the reference per round), the implementation the
cached loop replaced and still the fallback for models it does not handle. Both see the same
models, prompts, ``alpha``, ``k``, batch size, ``max_new_tokens`` and stop tokens. For scale,
plain greedy decoding of the suspect model (``generate_token_ids``, what an evaluation without
CleanGen runs) is timed too. Each variant gets a warm-up run (its outputs are the ones
compared), then ``--repeats`` timed runs, interleaved across variants. The script prints
generated tokens per second, the ratios to the peer and to plain greedy decoding, and whether
the cached and uncached runs give the same tokens and the same number of replaced tokens.

The reference model is a copy of the suspect model with Gaussian noise on its weights
(``--noise`` times each tensor's standard deviation), so that the two disagree on some tokens
and CleanGen replaces them (``--noise 0``: the model itself, nothing replaced).

    python benchmarks/cleangen_speed.py --threads 1            # the embedded default's base
    python benchmarks/cleangen_speed.py --model smollm2-135m --threads 1 --n 32
    python benchmarks/cleangen_speed.py --k 1 --alpha 5 --max-new-tokens 64 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from functools import partial
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import setup_torch, timed  # noqa: E402

PEER = "uncached"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="embedded",
                   help="'embedded' (the embedded default's base) or a model spec for "
                        "mbdefense's loader (e.g. smollm2-135m)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--noise", type=float, default=0.1,
                   help="the reference: the model's weights plus this much relative noise")
    p.add_argument("--alpha", type=float, default=20.0, help="CleanGen's default")
    p.add_argument("--k", type=int, default=4, help="CleanGen's default")
    p.add_argument("--batch-size", type=int, default=16, help="CleanGen.decode's default")
    p.add_argument("--max-new-tokens", type=int, default=32, help="CleanGen.decode's default")
    p.add_argument("--n", type=int, default=64, help="test prompts (the demo's evaluation set)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per variant")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p.parse_args(argv)


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    """Model (on the device, in the dtype) and tokenizer."""
    import torch

    if args.model == "embedded":
        from mbdefense.runs.embedded import embedded_base

        model, tokenizer, _ = embedded_base(progress=False, log=lambda message: None)
    else:
        from mbdefense.modeling.loading import load_model

        model, tokenizer = load_model(args.model, dtype="float32", progress=False,
                                      log=lambda message: None, device="cpu")
    return model.to(device=args.device, dtype=getattr(torch, args.dtype)).eval(), tokenizer


def perturbed(model: Any, noise: float, seed: int = 0) -> Any:
    """A copy of ``model`` with ``noise`` x (each tensor's std) Gaussian noise on its weights."""
    import torch

    if noise == 0:
        return model
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            if p.numel() > 1:
                step = torch.randn(p.shape, generator=generator).to(p.device, p.dtype)
                p.add_(step * noise * p.float().std().to(p.dtype))
    return other.eval()


def prompts_for(tokenizer: Any, n: int) -> list[list[int]]:
    """The first ``n`` of the demo's evaluation prompts (its 338 test prompts, then their
    BadNet-triggered copies), chat-formatted for ``tokenizer``, as token ids."""
    from mbdefense.attacks import parse_trigger, triggered_copies
    from mbdefense.data.formatting import render_prompt
    from mbdefense.data.suite import build_splits

    tests = list(build_splits(2000, 128, 338, 0).test)
    examples = (tests + triggered_copies(tests, parse_trigger("badnet"), 0))[:n]
    return [tokenizer(render_prompt(tokenizer, e), add_special_tokens=False)["input_ids"]
            for e in examples]


def variants(model: Any, reference: Any, prompts: list[list[int]], args: argparse.Namespace,
             stop: frozenset[int], pad_id: int) -> dict[str, Callable[[], Any]]:
    """name -> a run returning ``(outputs, replaced)``."""
    from mbdefense.defenses.cleangen import cleangen_token_ids
    from mbdefense.evaluation.generation import generate_token_ids

    settings = dict(max_new_tokens=args.max_new_tokens, stop_ids=stop, pad_id=pad_id,
                    batch_size=args.batch_size)

    def cleangen(use_cache: bool) -> Callable[[], Any]:
        return partial(cleangen_token_ids, model, reference, prompts, alpha=args.alpha,
                       k=args.k, use_cache=use_cache, **settings)

    def plain() -> tuple[list[list[int]], int]:
        return generate_token_ids(model, prompts, static_cache=False, **settings), 0

    return {"cached": cleangen(True), PEER: cleangen(False), "plain greedy": plain}


def measure(table: dict[str, Callable[[], Any]], args: argparse.Namespace) -> dict[str, dict]:
    """Warm up every variant (keeping its outputs), then time them, interleaved."""
    outputs = {name: run() for name, run in table.items()}
    times: dict[str, list[float]] = {name: [] for name in table}
    for _ in range(args.repeats):
        for name, run in table.items():
            times[name].append(timed(run, args.device))
    results = {}
    for name, (ids, replaced) in outputs.items():
        tokens = sum(len(i) for i in ids)
        median = statistics.median(times[name])
        results[name] = {"seconds": times[name], "median_s": median, "tokens": tokens,
                         "tokens_per_s": tokens / median, "replaced": replaced, "ids": ids}
    return results


def report(results: dict[str, dict]) -> dict[str, Any]:
    peer, plain = results[PEER], results["plain greedy"]
    print(f"{'variant':<14}{'median s':>10}{'tokens':>8}{'replaced':>10}{'tokens/s':>10}"
          f"{'x uncached':>12}{'x plain':>9}")
    for name, r in results.items():
        print(f"{name:<14}{r['median_s']:>10.3f}{r['tokens']:>8}{r['replaced']:>10}"
              f"{r['tokens_per_s']:>10.1f}{peer['median_s'] / r['median_s']:>12.2f}"
              f"{plain['median_s'] / r['median_s']:>9.2f}")
    cached = results["cached"]
    same = sum(a == b for a, b in zip(cached["ids"], peer["ids"]))
    summary = {"speedup": peer["median_s"] / cached["median_s"],
               "identical_answers": same, "answers": len(peer["ids"]),
               "same_replaced": cached["replaced"] == peer["replaced"],
               "cached_vs_plain": cached["median_s"] / plain["median_s"],
               "uncached_vs_plain": peer["median_s"] / plain["median_s"]}
    print(f"cached / {PEER}: {summary['speedup']:.2f}x faster; identical answers "
          f"{same}/{len(peer['ids'])}, same replaced count: {summary['same_replaced']}")
    print(f"time over plain greedy decoding: cached {summary['cached_vs_plain']:.2f}x, "
          f"{PEER} {summary['uncached_vs_plain']:.2f}x")
    return summary


def main(argv: list[str] | None = None) -> None:
    import torch

    from mbdefense.evaluation.generation import stop_token_ids
    from mbdefense.training.batching import pad_id_of

    args = parse_args(argv)
    device = setup_torch(args)
    model, tokenizer = load(args)
    reference = perturbed(model, args.noise)
    prompts = prompts_for(tokenizer, args.n)
    stop = stop_token_ids(model, tokenizer)
    print(f"{args.model} on {device} ({args.dtype}, {torch.get_num_threads()} threads): "
          f"{len(prompts)} prompts, batch {args.batch_size}, max_new_tokens "
          f"{args.max_new_tokens}, alpha {args.alpha}, k {args.k}, reference noise "
          f"{args.noise}, {args.repeats} timed runs each")
    results = measure(variants(model, reference, prompts, args, stop, pad_id_of(tokenizer)),
                      args)
    summary = report(results)
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "device": device, "threads": torch.get_num_threads(), "prompts": len(prompts),
            "results": {name: {k: v for k, v in r.items() if k != "ids"}
                        for name, r in results.items()}, **summary}, indent=2))


if __name__ == "__main__":
    main()
