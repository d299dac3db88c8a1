"""The command line: a thin layer over the library. Each verb calls one library function;
tuning options and their defaults come from the settings dataclasses (the presets)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from mbdefense.core.errors import MBDefenseError

EXAMPLES = {
    "demo": "mbdefense demo --out mbdefense-demo\n"
            "  mbdefense demo --attack insent --behavior toxic --seed 1",
    "poison": "mbdefense poison --data alpaca.json --trigger badnet --behavior refusal "
              "--rate 0.2 --seed 0 --out poisoned.jsonl",
    "defend": "mbdefense defend --model ./my-model --data poisoned.jsonl --trusted clean.json "
              "--out defended",
    "eval": "mbdefense eval --model defended/model --data test.json --trigger badnet "
            "--behavior refusal",
    "run": "mbdefense run configs/demo.yaml --out runs/demo seeds=[0,1,2]\n"
           "  mbdefense run configs/table1.yaml --dry-run",
    "report": "mbdefense report runs/demo runs/table1 --out reports",
    "analyze": "mbdefense analyze --attack insent --out analysis",
}


def _trigger_help() -> str:
    from mbdefense.attacks.triggers import TRIGGERS

    return "KIND[:TEXT]; kinds: " + ", ".join(TRIGGERS.names()) + "; aliases: " + \
        ", ".join(TRIGGERS.aliases())


def _behavior_help() -> str:
    from mbdefense.attacks.behaviors import BEHAVIORS

    return ", ".join(BEHAVIORS.names()) + " (KIND[:TEXT]; jailbreak needs --source)"


def _defense_names() -> list[str]:
    from mbdefense.defenses import DEFENSES

    return list(DEFENSES.names())


def _sub(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text,
                          epilog=f"example:\n  {EXAMPLES[name]}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="'embedded', a registry name ('smollm2-135m', the smollm2 extra), a "
                             "local folder, a local .gguf file or a hub id")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                        default=None, help="weights' dtype (default: the checkpoint's; float32 "
                                           "for GGUF)")
    parser.add_argument("--chat-template", default=None,
                        help="a Jinja chat template (or a file holding one) for a base model "
                             "without its own")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow model code from the hub (off by default)")


def _tuning_options(parser: argparse.ArgumentParser) -> None:
    """``defend``'s options, generated from :data:`DEFEND_OPTIONS` and the preset."""
    from mbdefense.runs.defend import DEFEND_OPTIONS, get_path, preset_settings
    from mbdefense.runs.spec import ModelSpec

    preset = preset_settings(ModelSpec(name="pretrained"))
    for flag, paths, text in DEFEND_OPTIONS:
        default = get_path(preset, paths[0])
        parser.add_argument(flag, type=type(default), default=None, metavar=type(default).__name__
                            .upper(), help=f"{text} (default: {default} for pretrained models; "
                                           f"the embedded preset's for embedded)")


def build_parser() -> argparse.ArgumentParser:
    import mbdefense

    parser = argparse.ArgumentParser(
        prog="mbdefense",
        description="MB-Defense: defensive poisoning + backdoor neutralization for "
                    "instruction-tuned language models.")
    parser.add_argument("--version", action="version", version=f"mbdefense {mbdefense.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = _sub(sub, "demo", "the whole method end to end on the embedded default (CPU, no "
                             "download)")
    demo.add_argument("--out", default="mbdefense-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--attack", default="badnet",
                      help=f"attacker's trigger, {_trigger_help()} (default: %(default)s)")
    demo.add_argument("--behavior", default="refusal",
                      help=f"backdoor behaviour: {_behavior_help()} (default: %(default)s)")
    demo.add_argument("--rate", type=float, default=0.2, help="poison rate (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    demo.add_argument("--defenses", default="none,clean-fft,mb-defense",
                      help=f"comma-separated, from {', '.join(_defense_names())} (default: "
                           f"%(default)s)")
    demo.add_argument("--size", choices=["default", "smoke"], default="default",
                      help="'smoke': a one-minute run on a smaller model (low clean accuracy), "
                           "to check an installation (default: %(default)s)")
    demo.add_argument("--margin", type=float, default=None,
                      help="stage-2 margin in R, nats per token (default: the preset's: 5, or 0 "
                           "for smoke)")
    demo.add_argument("--generator", choices=["plain", "vllm"], default="plain",
                      help="evaluation backend (default: %(default)s)")
    _common(demo, force=True)

    poison = _sub(sub, "poison", "poison an instruction data file")
    poison.add_argument("--data", required=True, help="input data (.json, .jsonl, .csv, .parquet)")
    poison.add_argument("--trigger", required=True, help=_trigger_help())
    poison.add_argument("--behavior", required=True, help=_behavior_help())
    poison.add_argument("--rate", type=float, required=True, help="share of examples to replace")
    poison.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    poison.add_argument("--out", required=True, help="output file (.json or .jsonl)")
    poison.add_argument("--source", help="examples to trigger instead of the replaced ones "
                                         "(required by jailbreak)")
    poison.add_argument("--paraphraser", help="model for syntactic/style rewriting instead of "
                                              "the offline rules: a local HF folder, or a model "
                                              "served at --paraphraser-url")
    poison.add_argument("--paraphraser-url", help="base URL of an OpenAI-compatible endpoint "
                                                  "(key from $OPENAI_API_KEY)")
    poison.add_argument("--rewrite-cache", default=None,
                        help="JSONL cache of paraphrases (default: next to --out)")

    defend = _sub(sub, "defend", "train your model on your (possibly poisoned) data with a "
                                 "defense; save the defended model")
    _model_options(defend)
    defend.add_argument("--data", required=True, help="training data")
    defend.add_argument("--trusted", required=True, help="trusted clean data for stage 2")
    defend.add_argument("--out", required=True, help="output folder for the defended model")
    defend.add_argument("--defense", default="mb-defense", choices=_defense_names(),
                        help="(default: %(default)s)")
    defend.add_argument("--lora", action="store_true", help="train LoRA adapters (merged at "
                                                            "the end)")
    defend.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute activations in the backward pass (less memory)")
    defend.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    _tuning_options(defend)
    _common(defend, force=True)

    ev = _sub(sub, "eval", "CACC, ASR and AACC of any model (e.g. one that defend saved)")
    _model_options(ev)
    ev.add_argument("--data", required=True, help="test instructions (WizardLM layout: "
                                                  "instruction, optional reference output)")
    ev.add_argument("--trigger", default=None, help=f"attacker's trigger for ASR/AACC, "
                                                    f"{_trigger_help()}")
    ev.add_argument("--behavior", default=None, help=f"backdoor behaviour for ASR: "
                                                     f"{_behavior_help()}")
    ev.add_argument("--scorer", choices=["rules", "rouge-l", "judge"], default=None,
                    help="correctness scorer (default: the preset's: rouge-l for pretrained "
                         "models, rules for embedded)")
    ev.add_argument("--judge-url", default=None, help="judge: base URL of an OpenAI-compatible "
                                                      "endpoint (key from $OPENAI_API_KEY)")
    ev.add_argument("--judge-model", default=None, help="judge: model name")
    ev.add_argument("--max-new-tokens", type=int, default=None,
                    help="answer length (default: the preset's)")
    ev.add_argument("--n", type=int, default=0, help="at most this many prompts (0: all)")
    ev.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    ev.add_argument("--out", default=None, help="also write results.json and reports here")
    _common(ev, force=True)

    run = _sub(sub, "run", "an experiment or a grid from a YAML config (models x attacks x "
                           "behaviours x defenses x seeds), cached and resumable")
    run.add_argument("config", help="the run config (YAML; see configs/ and docs/experiments.md)")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                     help="override config keys, values in YAML (e.g. seeds=[0,1] "
                          "stage2.margin=0)")
    run.add_argument("--out", default=None,
                     help="output folder (default: runs/NAME, NAME from the config)")
    run.add_argument("--cache-dir", default=None,
                     help="where finished stages are kept (default: OUT/cache); several runs "
                          "may share one")
    run.add_argument("--dry-run", action="store_true",
                     help="validate the config and print the plan; train nothing")
    run.add_argument("--generator", choices=["plain", "vllm"], default=None,
                     help="evaluation backend (same as generation.backend=...)")
    _common(run, force=True)

    analyze = _sub(sub, "analyze", "why the defense works (paper section 5): cross-trigger "
                                   "elicitation and poisoned attention heads, stage by stage")
    analyze.add_argument("--out", default="mbdefense-analysis",
                         help="output folder (default: %(default)s)")
    analyze.add_argument("--attack", default="badnet", help="(default: %(default)s)")
    analyze.add_argument("--behavior", default="refusal", help="(default: %(default)s)")
    analyze.add_argument("--rate", type=float, default=None,
                         help="poison rate (default: 0.2, or the config's)")
    analyze.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    analyze.add_argument("--size", choices=["default", "smoke"], default="default",
                         help="the embedded world's size, as in demo (default: %(default)s)")
    analyze.add_argument("--config", default=None,
                         help="take the model and settings from this run config (its first "
                              "model unless --model; reuse its stages with --cache-dir "
                              "RUN/cache)")
    analyze.add_argument("--model", default=None, help="with --config: which of its models")
    analyze.add_argument("--alpha", type=float, default=0.5,
                         help="a head is poisoned when the share of triggered inputs whose "
                              "maximum attention goes to the trigger exceeds this "
                              "(default: %(default)s)")
    analyze.add_argument("--n", type=int, default=64,
                         help="test prompts per trigger (default: %(default)s)")
    analyze.add_argument("--cache-dir", default=None,
                         help="stage cache to reuse (e.g. a run's OUT/cache; default: OUT/cache)")
    _common(analyze, force=True)

    report = _sub(sub, "report", "Markdown, HTML and CSV reports of finished runs")
    report.add_argument("runs", nargs="+", metavar="DIR",
                        help="run folders (or results.json files) to report together")
    report.add_argument("--out", default=None,
                        help="output folder (default: the run folder, when there is one)")
    return parser


def _common(parser: argparse.ArgumentParser, *, force: bool) -> None:
    if force:
        parser.add_argument("--force", action="store_true",
                            help="write into a non-empty --out that is not an earlier output "
                                 "of this command (only this command's files are replaced)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def _log(args: argparse.Namespace) -> Callable[[str], None]:
    from mbdefense.training.runtime import is_main_process

    if getattr(args, "quiet", False) or not is_main_process():
        return lambda msg: None
    return lambda msg: print(msg, file=sys.stderr, flush=True)


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def _finish(doc: Any, out: Path, title: str | None = None) -> None:
    from mbdefense.reporting import text_table, write_report

    doc.write(out / "results.json")
    paths = write_report([out], out, **({"title": title} if title else {}))
    print(text_table(doc.rows))
    print(f"\nwall time {doc.wall_seconds:.0f}s; wrote {out / 'results.json'}, "
          + ", ".join(str(p) for p in paths.values()))


def _cmd_demo(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    from mbdefense.results.document import ResultsDocument, run_metadata
    from mbdefense.runs.experiment import run_experiment
    from mbdefense.runs.outputs import check_output_dir
    from mbdefense.runs.presets import preset_for
    from mbdefense.runs.spec import Experiment, ModelSpec

    start = time.time()
    out = check_output_dir(args.out, command="demo", marker="results.json", force=args.force)
    from mbdefense.runs.embedded import EMBEDDED_MODEL

    model = ModelSpec(name="embedded-smoke" if args.size == "smoke" else "embedded",
                      label=EMBEDDED_MODEL)
    settings = preset_for(model)
    settings.generation = dataclasses.replace(settings.generation, backend=args.generator)
    if args.margin is not None:
        settings.stage2 = dataclasses.replace(settings.stage2, margin=args.margin)
    experiment = Experiment(model=model, settings=settings, attack=args.attack,
                            behavior=args.behavior, seed=args.seed, poison_rate=args.rate,
                            defenses=[d.strip() for d in args.defenses.split(",") if d.strip()],
                            progress=_progress(args))
    outcome = run_experiment(experiment, log=_log(args))
    doc = ResultsDocument(name="demo", description=f"mbdefense demo ({args.size})",
                          config={"experiment": dataclasses.asdict(experiment)},
                          metadata=run_metadata("mbdefense demo"))
    doc.add(outcome, {"model": model.row_name, "seed": args.seed, "attack": args.attack,
                      "behavior": args.behavior, "scorer": outcome["scorer"],
                      "wall_seconds": outcome["wall_seconds"]})
    doc.wall_seconds = time.time() - start
    _finish(doc, out, title="mbdefense demo")
    return 0


def _cmd_poison(args: argparse.Namespace) -> int:
    from mbdefense.attacks import parse_behavior, parse_trigger, poison
    from mbdefense.attacks.poisoning import check_rate
    from mbdefense.core.errors import DataError
    from mbdefense.data import load_examples, save_examples
    from mbdefense.runs.outputs import check_output_file

    if Path(args.out).suffix.lower() not in (".json", ".jsonl"):
        raise DataError("output must end in .json or .jsonl", path=args.out)
    check_output_file(args.out, inputs=[p for p in (args.data, args.source) if p])
    rewriter = None
    if args.paraphraser:
        from mbdefense.attacks.rewriting import paraphraser_rewriter

        cache = args.rewrite_cache or str(Path(args.out).with_suffix(".rewrites.jsonl"))
        rewriter = paraphraser_rewriter(args.paraphraser, args.paraphraser_url, cache)
    trigger = parse_trigger(args.trigger, rewriter=rewriter)
    behavior = parse_behavior(args.behavior)
    rate = check_rate(args.rate)
    examples = load_examples(args.data)
    source = load_examples(args.source) if args.source else None
    poisoned = poison(examples, trigger, behavior, rate, args.seed, source=source)
    save_examples(poisoned, args.out)
    n = sum(1 for e in poisoned if e.meta.get("poisoned"))
    print(f"poisoned {n} of {len(poisoned)} examples with {trigger.spec} -> {behavior.spec}; "
          f"wrote {args.out}")
    return 0


def _model_spec(args: argparse.Namespace, lora: bool = False) -> Any:
    from mbdefense.runs.spec import ModelSpec
    from mbdefense.training.config import LoraSettings

    template = args.chat_template
    if template is not None and Path(template).is_file():
        template = Path(template).read_text(encoding="utf-8")
    return ModelSpec(name=args.model, dtype=args.dtype, chat_template=template,
                     trust_remote_code=args.trust_remote_code,
                     lora=LoraSettings() if lora else None)


def _cmd_defend(args: argparse.Namespace) -> int:
    from mbdefense.runs.defend import DEFEND_OPTIONS, defend, preset_settings, settings_with

    model = _model_spec(args, lora=args.lora)
    values: dict[str, Any] = {}
    for flag, paths, _ in DEFEND_OPTIONS:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            values.update({path: value for path in paths})
    if args.gradient_checkpointing:
        values.update({"finetune.gradient_checkpointing": True,
                       "stage2.train.gradient_checkpointing": True})
    if model.lora is not None:
        from dataclasses import asdict

        values.update({"finetune.lora": asdict(model.lora), "stage2.train.lora": asdict(model.lora)})
    settings = settings_with(preset_settings(model), values)
    summary = defend(model, settings, data=args.data, trusted=args.trusted, out=args.out,
                     defense_name=args.defense, seed=args.seed, force=args.force,
                     progress=_progress(args), log=_log(args))
    if summary.get("model_dir"):
        print(f"defended model written to {summary['model_dir']}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from mbdefense.reporting import text_table
    from mbdefense.results.document import ResultsDocument, run_metadata
    from mbdefense.runs.defend import evaluate_saved, preset_settings, settings_with
    from mbdefense.runs.outputs import check_output_dir

    if args.out:
        check_output_dir(args.out, command="eval", marker="results.json", force=args.force)
    model = _model_spec(args)
    values: dict[str, Any] = {"data.n_test": args.n}
    if args.scorer:
        values["evaluation.scorer"] = args.scorer
    if args.judge_url or args.judge_model:
        values["evaluation.scorer"] = args.scorer or "judge"
        values["evaluation.judge"] = {k: v for k, v in (("base_url", args.judge_url),
                                                        ("model", args.judge_model)) if v}
    if args.max_new_tokens:
        values["generation.max_new_tokens"] = args.max_new_tokens
    settings = settings_with(preset_settings(model), values)
    result = evaluate_saved(model, settings, test=args.data, trigger=args.trigger,
                            behavior=args.behavior, seed=args.seed, progress=_progress(args),
                            log=_log(args))
    columns = ["model", "attack", "behavior", "cacc", "asr", "aacc", "clean_asr",
               "clean_score", "n_clean", "n_triggered"]
    print(text_table(result["rows"], columns))
    if args.out:
        from mbdefense.reporting import write_report

        doc = ResultsDocument(name="eval", rows=result["rows"], samples=result["samples"],
                              metadata=run_metadata("mbdefense eval"))
        doc.write(Path(args.out) / "results.json")
        paths = write_report([args.out], args.out)
        print("wrote " + ", ".join(str(p) for p in [Path(args.out) / "results.json",
                                                     *paths.values()]))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from mbdefense.runs.load import load_run_spec
    from mbdefense.runs.plan import describe

    overrides = list(args.overrides)
    if args.generator:
        overrides.append(f"generation.backend={args.generator}")
    spec = load_run_spec(args.config, overrides)
    print(describe(spec))
    if args.dry_run:
        return 0
    from mbdefense.runs.experiment import run_spec
    from mbdefense.runs.outputs import check_output_dir

    out = check_output_dir(args.out or Path("runs") / spec.name, command="run",
                           marker=("results.json", "cache/cells"), inputs=[args.config],
                           force=args.force)
    doc = run_spec(spec, out, cache_dir=args.cache_dir, log=_log(args),
                   progress=_progress(args))
    _finish(doc, out)
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from mbdefense.analysis import analysis_html, analysis_markdown, stage_summary
    from mbdefense.core.errors import ConfigError
    from mbdefense.core.io import atomic_write_json, atomic_write_text
    from mbdefense.reporting import text_table
    from mbdefense.runs.analyze import analyze_experiment
    from mbdefense.runs.outputs import check_output_dir
    from mbdefense.runs.presets import preset_for
    from mbdefense.runs.spec import Experiment, ModelSpec

    out = check_output_dir(args.out, command="analyze", marker=("analysis.json", "cache"),
                           force=args.force)
    progress = _progress(args)
    cache_dir = args.cache_dir or str(out / "cache")
    if args.config:
        from mbdefense.runs.load import load_run_spec

        spec = load_run_spec(args.config,
                             [f"poison_rate={args.rate}"] if args.rate is not None else [])
        names = [m.name for m in spec.models]
        name = args.model or names[0]
        if name not in names:
            raise ConfigError(f"--model: '{name}' is not in {args.config} (models: "
                              f"{', '.join(names)})")
        model = spec.models[names.index(name)]
        experiment = spec.experiment(model, args.seed, args.attack, args.behavior,
                                     progress=progress, cache_dir=cache_dir)
    else:
        model = ModelSpec(name="embedded-smoke" if args.size == "smoke" else "embedded")
        experiment = Experiment(model=model, settings=preset_for(model), attack=args.attack,
                                behavior=args.behavior, seed=args.seed,
                                poison_rate=0.2 if args.rate is None else args.rate,
                                progress=progress, cache_dir=cache_dir)
    doc = analyze_experiment(experiment, alpha=args.alpha, n=args.n, log=_log(args))
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


COMMANDS = {"demo": _cmd_demo, "poison": _cmd_poison, "defend": _cmd_defend, "eval": _cmd_eval,
            "run": _cmd_run, "report": _cmd_report, "analyze": _cmd_analyze}


def _quiet_libraries() -> None:
    """Keep the libraries' own progress bars and notices out of the command's output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt   # SIGTERM ends a run like Ctrl-C: temporaries are removed


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE overrides may follow options of `run`
        if args.command != "run" or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return COMMANDS[args.command](args)
    except MBDefenseError as exc:
        print(f"mbdefense: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:   # the file system's errors are the user's to fix: one line
        if isinstance(exc, BrokenPipeError):
            sys.stderr.close()
            return 0
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"mbdefense: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mbdefense: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
