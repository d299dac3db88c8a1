"""Evaluation generation throughput: mbdefense's ``generate_answers`` vs ``model.generate``.

The peer is ``model.generate`` called per fixed-size batch in dataset order, left-padded by the
tokenizer (``padding_side='left'``): the plain way to batch it. Both see the same prompts,
batch size, ``max_new_tokens`` and stop tokens, and both include tokenising and decoding.
Each variant gets a warm-up run (its outputs are the ones compared), then ``--repeats`` timed
runs, interleaved across variants. The script prints generated tokens per second (the tokens
of each answer up to and including its stop token, counted by id), the ratio to the peer, and
the fraction of answers identical to the peer's (token ids and text).

On CUDA two more variants run: ``model.generate`` with ``cache_implementation="static"`` (which
transformers also compiles with torch.compile) and mbdefense with a dynamic cache (its default
there is a static one, not compiled).

    python benchmarks/generation_throughput.py          # embedded default: 676 demo prompts
    python benchmarks/generation_throughput.py --shape smollm2-135m --n 256 --max-new-tokens 16
    python benchmarks/generation_throughput.py --shape llama-3.2-1b --device cuda --dtype bfloat16
    python benchmarks/generation_throughput.py --threads 1 --repeats 5 --json out.json

With a random-init shape (``--shape smollm2-135m`` / ``llama-3.2-1b``) the prompts are still the
embedded tokenizer's; ids the tokenizer lacks are dropped when decoding, so compare by ids.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from functools import partial
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import embedded_workload, random_model, setup_torch, timed  # noqa: E402

SHAPES = ("embedded", "smollm2-135m", "llama-3.2-1b")
PEER = "hf-generate"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=SHAPES, default="embedded",
                   help="the embedded default's base, or a random-init model of that shape")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="default: float32 on cpu, bfloat16 on cuda")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=24, help="the demo's value")
    p.add_argument("--n", type=int, default=None, help="number of prompts (default: all 676)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per variant")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p.parse_args(argv)


def load(args: argparse.Namespace) -> tuple[Any, Any, list[str]]:
    """Model (on the device, in the dtype), tokenizer and prompts."""
    import torch

    work = embedded_workload()
    dtype = getattr(torch, args.dtype)
    if args.shape == "embedded":
        model = work["model"].to(device=args.device, dtype=dtype)
    else:
        model = random_model(args.shape, device=args.device, dtype=dtype)
    prompts = work["eval_prompts"]
    if args.n is not None:
        if args.n > len(prompts):
            raise SystemExit(f"--n {args.n}: only {len(prompts)} prompts")
        prompts = prompts[:args.n]
    return model.eval(), work["tokenizer"], prompts


def hf_generate(model: Any, tokenizer: Any, prompts: list[str], args: argparse.Namespace,
                stop: frozenset[int], static: bool = False) -> list[list[int]]:
    """The peer: ``model.generate`` per batch in dataset order, left padding."""
    import torch

    from mbdefense.evaluation.generation import cut_at_stop

    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    extra = {"cache_implementation": "static"} if static else {}
    outputs = []
    try:
        for start in range(0, len(prompts), args.batch_size):
            batch = tokenizer(prompts[start:start + args.batch_size], return_tensors="pt",
                              padding=True, add_special_tokens=False).to(args.device)
            with torch.inference_mode():
                out = model.generate(**batch, max_new_tokens=args.max_new_tokens,
                                     do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=sorted(stop), **extra)
            rows = out[:, batch["input_ids"].shape[1]:].tolist()
            outputs.extend(cut_at_stop(row, stop) for row in rows)
            tokenizer.batch_decode(rows, skip_special_tokens=True)   # as evaluation would
    finally:
        tokenizer.padding_side = side
    return outputs


def variants(model: Any, tokenizer: Any, prompts: list[str], args: argparse.Namespace,
             stop: frozenset[int]) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """name -> (timed run, warm-up run returning the token ids)."""
    from mbdefense.evaluation.generation import generate_answers, generate_token_ids
    from mbdefense.training.batching import pad_id_of

    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    settings = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}

    def ours(static: bool | None) -> tuple[Callable[[], Any], Callable[[], Any]]:
        return (partial(generate_answers, model, tokenizer, prompts, static_cache=static,
                        **settings),
                partial(generate_token_ids, model, encoded, stop_ids=stop,
                        pad_id=pad_id_of(tokenizer), static_cache=static, **settings))

    def peer(static: bool) -> tuple[Callable[[], Any], Callable[[], Any]]:
        run = partial(hf_generate, model, tokenizer, prompts, args, stop, static)
        return run, run

    table = {PEER: peer(False), "mbdefense": ours(None)}
    if args.device.startswith("cuda"):
        table.update({"hf-generate-static": peer(True), "mbdefense-dynamic": ours(False)})
    return table


def measure(table: dict, args: argparse.Namespace, tokenizer: Any) -> dict[str, dict]:
    """Warm up every variant (keeping its outputs), then time them, interleaved."""
    outputs = {name: warm() for name, (_, warm) in table.items()}
    times: dict[str, list[float]] = {name: [] for name in table}
    for _ in range(args.repeats):
        for name, (run, _) in table.items():
            times[name].append(timed(run, args.device))
    peer_ids = outputs[PEER]
    peer_text = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in peer_ids]
    results = {}
    for name, ids in outputs.items():
        text = [tokenizer.decode(i, skip_special_tokens=True).strip() for i in ids]
        tokens = sum(len(i) for i in ids)
        median = statistics.median(times[name])
        results[name] = {
            "seconds": times[name], "median_s": median, "tokens": tokens,
            "tokens_per_s": tokens / median,
            "identical_ids": sum(a == b for a, b in zip(ids, peer_ids)) / len(ids),
            "identical_text": sum(a == b for a, b in zip(text, peer_text)) / len(ids)}
    return results


def report(results: dict[str, dict]) -> None:
    peer = results[PEER]["tokens_per_s"]
    print(f"{'variant':<20}{'median s':>10}{'tokens':>9}{'tokens/s':>11}{'x peer':>8}"
          f"{'same ids':>10}{'same text':>11}")
    for name, r in results.items():
        print(f"{name:<20}{r['median_s']:>10.3f}{r['tokens']:>9}{r['tokens_per_s']:>11.1f}"
              f"{r['tokens_per_s'] / peer:>8.2f}{r['identical_ids']:>10.3f}"
              f"{r['identical_text']:>11.3f}")


def main(argv: list[str] | None = None) -> None:
    import torch

    from mbdefense.evaluation.generation import stop_token_ids

    args = parse_args(argv)
    device = setup_torch(args)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    model, tokenizer, prompts = load(args)
    stop = stop_token_ids(model, tokenizer)
    print(f"{args.shape} on {device} "
          f"({args.dtype}, {torch.get_num_threads()} threads): {len(prompts)} prompts, "
          f"batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, "
          f"{args.repeats} timed runs each")
    results = measure(variants(model, tokenizer, prompts, args, stop), args, tokenizer)
    report(results)
    ratio = results["mbdefense"]["tokens_per_s"] / results[PEER]["tokens_per_s"]
    print(f"mbdefense / {PEER}: {ratio:.2f}x tokens/s")
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "device": device,
            "threads": torch.get_num_threads(), "prompts": len(prompts),
            "results": results, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
