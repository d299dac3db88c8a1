"""The command line: a thin layer over the library. Each verb calls one library function."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Sequence

from mbdefense.core.errors import MBDefenseError


def _trigger_help() -> str:
    """The trigger kinds, styles and aliases, from their registries (light imports)."""
    from mbdefense.attacks.rewriting import STYLES
    from mbdefense.attacks.triggers import TRIGGER_ALIASES, TRIGGER_KINDS

    def form(kind: str, default: str | None) -> str:
        return kind if default == "" else f"{kind}:TEXT" if default is None else f"{kind}[:TEXT]"

    kinds = ", ".join(form(k, v.default_text) for k, v in TRIGGER_KINDS.items())
    aliases = ", ".join(f"{a} ({spec})" for a, spec in TRIGGER_ALIASES.items())
    return f"kinds: {kinds}; styles: {', '.join(STYLES)}; aliases: {aliases}"


def _behavior_help() -> str:
    from mbdefense.attacks.behaviors import BEHAVIOR_KINDS

    return ", ".join(f"{k}:TEXT" if v.needs_text else k for k, v in BEHAVIOR_KINDS.items()) + \
        " (jailbreak needs --source)"


def _defense_names() -> str:
    from mbdefense.defenses import DEFENSES

    return ", ".join(DEFENSES)


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mbdefense",
        description="MB-Defense: defensive poisoning + backdoor neutralization for "
                    "instruction-tuned language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the whole method end to end on the embedded default "
                                       "(CPU, no download)")
    demo.add_argument("--out", default="mbdefense-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--attack", default="badnet",
                      help=f"attacker's trigger, KIND[:TEXT]; {_trigger_help()}; "
                           "default: %(default)s")
    demo.add_argument("--behavior", default="refusal",
                      help=f"backdoor behaviour, {_behavior_help()}; default: %(default)s")
    demo.add_argument("--rate", type=float, default=0.2, help="poison rate (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--defenses", default="none,clean-fft,mb-defense",
                      help=f"comma-separated defenses ({_defense_names()})")
    demo.add_argument("--size", choices=["default", "smoke"], default="default",
                      help="'smoke': a one-minute run on a smaller model and data set, to check "
                           "an installation (clean accuracy is low); default: %(default)s")
    demo.add_argument("--margin", type=float, default=None,
                      help="stage-2 margin in R, in nats per token (default: 5 for the default "
                           "size, 0 for smoke)")
    demo.add_argument("--generator", choices=["plain", "vllm"], default="plain",
                      help="evaluation backend: plain (transformers) or vllm (needs vllm and "
                           "CUDA GPUs; tensor parallel over all of them)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")

    poison = sub.add_parser("poison", help="poison an instruction data file")
    poison.add_argument("--data", required=True, help="input data (.json, .jsonl, .csv, .parquet)")
    poison.add_argument("--trigger", required=True, help=f"KIND[:TEXT]; {_trigger_help()}")
    poison.add_argument("--behavior", required=True, help=_behavior_help())
    poison.add_argument("--rate", type=float, required=True, help="share of examples to replace")
    poison.add_argument("--seed", type=int, default=0)
    poison.add_argument("--out", required=True, help="output file (.json or .jsonl)")
    poison.add_argument("--source", help="examples to trigger instead of the replaced ones "
                                         "(required by jailbreak: harmful requests with "
                                         "compliant answers)")
    poison.add_argument("--paraphraser", help="model for syntactic/style rewriting instead of "
                                              "the offline rules: a local HF model folder, or a "
                                              "model name served at --paraphraser-url")
    poison.add_argument("--paraphraser-url", help="base URL of an OpenAI-compatible endpoint "
                                                  "(key from $OPENAI_API_KEY)")
    poison.add_argument("--rewrite-cache", default=None,
                        help="JSONL cache of paraphrases (default: next to --out)")

    defend = sub.add_parser("defend", help="train your model on your (possibly poisoned) data "
                                           "with a defense")
    defend.add_argument("--model", required=True,
                        help="'embedded', 'smollm2-135m' (the smollm2 extra), a local folder, a "
                             "local .gguf file or a hub id of a causal LM")
    defend.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                        default=None, help="weights' dtype (default: the checkpoint's; float32 "
                                           "for GGUF)")
    defend.add_argument("--data", required=True, help="training data")
    defend.add_argument("--trusted", required=True, help="trusted clean data for stage 2")
    defend.add_argument("--out", required=True, help="output folder for the defended model")
    defend.add_argument("--defense", default="mb-defense",
                        choices=_defense_names().split(", "))
    defend.add_argument("--n-trusted", type=_non_negative_int, default=128,
                        help="trusted examples used (default: %(default)s, as in the paper)")
    defend.add_argument("--epochs", type=float, default=3.0, help="fine-tuning epochs")
    defend.add_argument("--lr", type=float, default=2e-5, help="fine-tuning learning rate")
    defend.add_argument("--stage2-epochs", type=float, default=4.0)
    defend.add_argument("--stage2-lr", type=float, default=5e-5)
    defend.add_argument("--lam", type=float, default=1.0, help="weight of the R term")
    defend.add_argument("--margin", type=float, default=5.0,
                        help="stage-2 margin in R, nats per token: log sigmoid(lp_clean - "
                             "lp_defensive - margin) (default: %(default)s)")
    defend.add_argument("--reduction", choices=["mean", "sum"], default="mean",
                        help="R on per-token mean or summed log-likelihoods (default: %(default)s)")
    defend.add_argument("--stage2-triggers", choices=["all", "one"], default="one",
                        help="defensive triggers per trusted example in a stage-2 step: all "
                             "(1 + 2T sequences) or one sampled (3 sequences; default: "
                             "%(default)s)")
    defend.add_argument("--min-per-trigger", type=_non_negative_int, default=0,
                        help="at least this many defensive examples per trigger (default: only "
                             "the paper's 1%% of the training set)")
    defend.add_argument("--implant-threshold", type=float, default=0.3,
                        help="after stage 1, every defensive trigger should elicit its behaviour "
                             "on at least this share of held-out prompts (default: %(default)s)")
    defend.add_argument("--on-weak-implant", choices=["warn", "top-up"], default="warn",
                        help="below the threshold: warn, or train on more defensive examples "
                             "(default: %(default)s)")
    defend.add_argument("--batch-size", type=int, default=8)
    defend.add_argument("--max-length", type=int, default=1024)
    defend.add_argument("--lora", action="store_true", help="train LoRA adapters (merged at the end)")
    defend.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="training precision: auto = bf16 autocast on a bf16 GPU, else fp32 "
                             "(under accelerate launch its config decides)")
    defend.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute activations in the backward pass (less memory)")
    defend.add_argument("--trust-remote-code", action="store_true",
                        help="allow model code from the hub (off by default)")
    defend.add_argument("--seed", type=int, default=0)
    defend.add_argument("--quiet", action="store_true")

    run = sub.add_parser("run", help="an experiment grid from a YAML config (models x attacks x "
                                     "behaviours x defenses x seeds), cached and resumable")
    run.add_argument("config", help="the grid config (YAML; see configs/)")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                     help="override config keys, values in YAML (e.g. seeds=[0,1] "
                          "stage2.margin=0)")
    run.add_argument("--out", default=None,
                     help="output folder (default: runs/NAME, NAME from the config)")
    run.add_argument("--cache-dir", default=None,
                     help="where finished stages are kept (default: OUT/cache); point several "
                          "runs at one folder to share their stages")
    run.add_argument("--dry-run", action="store_true",
                     help="validate the config and print the plan; train nothing")
    run.add_argument("--generator", choices=["plain", "vllm"], default=None,
                     help="evaluation backend (same as the override generator=...)")
    run.add_argument("--quiet", action="store_true", help="no progress output")

    analyze = sub.add_parser(
        "analyze", help="why the defense works (paper section 5): cross-trigger elicitation "
                        "and poisoned attention heads, before and after each stage")
    analyze.add_argument("--out", default="mbdefense-analysis",
                         help="output folder (default: %(default)s)")
    analyze.add_argument("--attack", default="badnet",
                         help="attacker's trigger, KIND[:TEXT] (default: %(default)s)")
    analyze.add_argument("--behavior", default="refusal",
                         help="backdoor behaviour (default: %(default)s)")
    analyze.add_argument("--rate", type=float, default=None,
                         help="poison rate (default: 0.2, or the config's)")
    analyze.add_argument("--seed", type=int, default=0)
    analyze.add_argument("--size", choices=["default", "smoke"], default="default",
                         help="the embedded world's size, as in demo (default: %(default)s)")
    analyze.add_argument("--config", default=None,
                         help="take the model and settings from this grid config instead (its "
                              "first model unless --model; reuse its stages with --cache-dir "
                              "RUN/cache)")
    analyze.add_argument("--model", default=None, help="with --config: which of its models")
    analyze.add_argument("--alpha", type=float, default=0.5,
                         help="a head is poisoned when the share of triggered inputs whose "
                              "maximum attention goes to the trigger exceeds this "
                              "(default: %(default)s)")
    analyze.add_argument("--n", type=int, default=64,
                         help="test prompts per trigger (default: %(default)s)")
    analyze.add_argument("--cache-dir", default=None,
                         help="stage cache to reuse (e.g. a run's OUT/cache); default: "
                              "OUT/cache")
    analyze.add_argument("--quiet", action="store_true")

    report = sub.add_parser("report", help="Markdown, HTML and CSV reports of finished runs")
    report.add_argument("runs", nargs="+", metavar="DIR",
                        help="run folders (or results.json files) to report together")
    report.add_argument("--out", default=None,
                        help="output folder (default: the run folder, when there is one)")
    return parser


def _log(args: argparse.Namespace):
    from mbdefense.training.runtime import is_main_process

    if args.quiet or not is_main_process():  # under `accelerate launch`, one process speaks
        return lambda msg: None
    return lambda msg: print(msg, file=sys.stderr, flush=True)


def _cmd_demo(args: argparse.Namespace) -> int:
    from mbdefense.experiment import ExperimentConfig, run_experiment, smoke_config
    from mbdefense.core.io import atomic_write_json
    from mbdefense.reporting import text_table, write_report

    settings = dict(attack=args.attack, behavior=args.behavior, poison_rate=args.rate,
                    seed=args.seed,
                    defenses=[d.strip() for d in args.defenses.split(",") if d.strip()],
                    generator=args.generator, progress=not args.quiet and sys.stderr.isatty())
    config = smoke_config(**settings) if args.size == "smoke" else ExperimentConfig(**settings)
    if args.margin is not None:
        config.stage2 = dataclasses.replace(config.stage2, margin=args.margin)
    results = run_experiment(config, log=_log(args))
    out = Path(args.out)
    atomic_write_json(out / "results.json", results)
    paths = write_report([out], out, title="mbdefense demo")
    print(text_table(results["rows"]))
    print(f"\nwall time {results['wall_seconds']:.0f}s; wrote {out / 'results.json'}, "
          + ", ".join(str(p) for p in paths.values()))
    return 0


def _cmd_poison(args: argparse.Namespace) -> int:
    from mbdefense.attacks import parse_behavior, parse_trigger, poison
    from mbdefense.attacks.poisoning import check_rate
    from mbdefense.data import load_examples, save_examples
    from mbdefense.core.errors import DataError

    rewriter = None
    if args.paraphraser:
        from mbdefense.attacks.rewriting import paraphraser_rewriter

        cache = args.rewrite_cache or str(Path(args.out).with_suffix(".rewrites.jsonl"))
        rewriter = paraphraser_rewriter(args.paraphraser, args.paraphraser_url, cache)
    trigger = parse_trigger(args.trigger, rewriter=rewriter)
    behavior = parse_behavior(args.behavior)
    rate = check_rate(args.rate)
    if Path(args.out).suffix.lower() not in (".json", ".jsonl"):
        raise DataError("output must end in .json or .jsonl", path=args.out)
    examples = load_examples(args.data)
    source = load_examples(args.source) if args.source else None
    poisoned = poison(examples, trigger, behavior, rate, args.seed, source=source)
    save_examples(poisoned, args.out)
    n = sum(1 for e in poisoned if e.meta.get("poisoned"))
    print(f"poisoned {n} of {len(poisoned)} examples with {trigger.spec} -> {behavior.spec}; "
          f"wrote {args.out}")
    return 0


def _cmd_defend(args: argparse.Namespace) -> int:
    from mbdefense.pipeline import DefendOptions, defend

    options = DefendOptions(
        model=args.model, dtype=args.dtype, data=args.data, trusted=args.trusted, out=args.out,
        defense=args.defense, n_trusted=args.n_trusted, epochs=args.epochs, lr=args.lr,
        stage2_epochs=args.stage2_epochs, stage2_lr=args.stage2_lr, lam=args.lam,
        margin=args.margin,
        min_per_trigger=args.min_per_trigger, reduction=args.reduction,
        implant_threshold=args.implant_threshold, on_weak_implant=args.on_weak_implant,
        triggers_per_step=args.stage2_triggers,
        batch_size=args.batch_size, max_length=args.max_length, lora=args.lora,
        precision=args.precision, gradient_checkpointing=args.gradient_checkpointing,
        trust_remote_code=args.trust_remote_code, seed=args.seed,
        progress=not args.quiet and sys.stderr.isatty())
    summary = defend(options, log=_log(args))
    if summary.get("model_dir"):
        print(f"defended model written to {summary['model_dir']}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from mbdefense.grid import load_grid_config, plan, run_grid

    overrides = list(args.overrides)
    if args.generator:
        overrides.append(f"generator={args.generator}")
    config = load_grid_config(args.config, overrides)
    print(plan(config))
    if args.dry_run:
        return 0
    from mbdefense.reporting import text_table, write_report

    out = Path(args.out or Path("runs") / config.name)
    results = run_grid(config, out, cache_dir=args.cache_dir, log=_log(args),
                       progress=not args.quiet and sys.stderr.isatty())
    paths = write_report([out], out)
    print(text_table(results["rows"]))
    print(f"\nwall time {results['wall_seconds']:.0f}s; wrote {out / 'results.json'}, "
          + ", ".join(str(p) for p in paths.values()))
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from mbdefense.analysis import analysis_html, analysis_markdown, stage_summary
    from mbdefense.analysis.run import analyze_experiment
    from mbdefense.core.errors import ConfigError
    from mbdefense.experiment import ExperimentConfig, smoke_config
    from mbdefense.core.io import atomic_write_json, atomic_write_text
    from mbdefense.reporting import text_table

    out = Path(args.out)
    progress = not args.quiet and sys.stderr.isatty()
    cache_dir = args.cache_dir or str(out / "cache")
    if args.config:
        from mbdefense.grid import load_grid_config

        grid = load_grid_config(args.config,
                                [f"poison_rate={args.rate}"] if args.rate is not None else [])
        model = args.model or grid.models[0]
        if model not in grid.models:
            raise ConfigError(f"--model: '{model}' is not in {args.config} (models: "
                              f"{', '.join(grid.models)})")
        config = grid.experiment(model, args.seed, args.attack, args.behavior,
                                 progress=progress, cache_dir=cache_dir)
    else:
        settings = dict(attack=args.attack, behavior=args.behavior,
                        poison_rate=0.2 if args.rate is None else args.rate, seed=args.seed,
                        progress=progress, cache_dir=cache_dir)
        config = smoke_config(**settings) if args.size == "smoke" else ExperimentConfig(**settings)
    doc = analyze_experiment(config, alpha=args.alpha, n=args.n, log=_log(args))
    atomic_write_json(out / "analysis.json", doc)
    atomic_write_text(out / "analysis.md", analysis_markdown(doc))
    atomic_write_text(out / "analysis.html", analysis_html(doc))
    print(text_table(stage_summary(doc), [
        "stage", "attacker_asr", "defensive_to_attacker", "baseline_attacker",
        "attacker_to_defensive", "defensive_cross", "attacker_poisoned_heads",
        "defensive_poisoned_heads", "shared_heads", "attacker_attention"]))
    print(f"\nwrote {out / 'analysis.json'}, {out / 'analysis.md'}, {out / 'analysis.html'}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from mbdefense.core.errors import ConfigError
    from mbdefense.reporting import write_report

    out = args.out
    if out is None:
        if len(args.runs) != 1:
            raise ConfigError("report: give --out when reporting several runs together")
        first = Path(args.runs[0])
        out = first.parent if first.is_file() else first
    paths = write_report(args.runs, out)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


COMMANDS = {"demo": _cmd_demo, "poison": _cmd_poison, "defend": _cmd_defend, "run": _cmd_run,
            "report": _cmd_report, "analyze": _cmd_analyze}


def _quiet_libraries() -> None:
    """Keep the libraries' own progress bars and notices out of the command's output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE overrides may follow options of `run`
        if args.command != "run" or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        return COMMANDS[args.command](args)
    except MBDefenseError as exc:
        print(f"mbdefense: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mbdefense: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
