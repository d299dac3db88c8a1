"""One function per verb: parse nothing, check paths, call the library, print."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable


def _log(args: argparse.Namespace) -> Callable[[str], None]:
    from mbdefense.training.runtime import is_main_process

    if getattr(args, "quiet", False) or not is_main_process():
        return lambda msg: None
    return lambda msg: print(msg, file=sys.stderr, flush=True)


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars unless --quiet; into a log file they write a line every 30 s."""
    return not getattr(args, "quiet", False)


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
    if args.margin is not None:   # checked like a config value (finite, >= 0)
        from mbdefense.runs.defend import settings_with

        settings = settings_with(settings, {"stage2.margin": args.margin})
    experiment = Experiment(model=model, settings=settings, attack=args.attack,
                            behavior=args.behavior, seed=args.seed, poison_rate=args.rate,
                            defenses=[d.strip() for d in args.defenses.split(",") if d.strip()],
                            progress=_progress(args))
    outcome = run_experiment(experiment, log=_log(args))
    doc = ResultsDocument(name="demo", description=f"mbdefense demo ({args.size})",
                          config=dataclasses.asdict(experiment),
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
    from mbdefense.runs.defend import (DEFEND_OPTIONS, defend, lora_values, preset_settings,
                                       settings_with)

    model = _model_spec(args, lora=args.lora)
    values: dict[str, Any] = {}
    for flag, paths, _ in DEFEND_OPTIONS:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            values.update({path: value for path in paths})
    if args.gradient_checkpointing:
        values.update({"finetune.gradient_checkpointing": True,
                       "stage2.train.gradient_checkpointing": True})
    preset = preset_settings(model)
    if model.lora is not None:
        values.update(lora_values(preset, model.lora))
    settings = settings_with(preset, values)
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
                              outcomes=result["outcomes"],
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
    spec.rescore = args.rescore
    spec.cache_defended = args.cache_defended
    executor = _executor(args)
    print(describe(spec))
    if executor.name != "local":
        from mbdefense.runs.executors import describe_tasks

        print(describe_tasks(spec, executor))
    if args.dry_run:
        return 0
    from mbdefense.runs.experiment import run_spec
    from mbdefense.runs.outputs import check_cache_dir, check_output_dir

    out = check_output_dir(args.out or Path("runs") / spec.name, command="run",
                           marker=("results.json", "cache/cells", "cache/locks", "slurm-logs"),
                           inputs=[args.config], force=args.force)
    check_cache_dir(args.cache_dir)
    doc = run_spec(spec, out, cache_dir=args.cache_dir, log=_log(args),
                   progress=_progress(args), executor=executor)
    _finish(doc, out)
    return 0


def _executor(args: argparse.Namespace) -> Any:
    """``run --executor``'s options; a missing engine is one line (the cluster extra)."""
    from mbdefense.runs.executors import ExecutorOptions, parse_slurm_options, require

    options = ExecutorOptions(
        name=args.executor, gpus_per_task=args.gpus_per_task, cpus_per_task=args.cpus_per_task,
        ray_address=args.ray_address, slurm_partition=args.slurm_partition,
        slurm_time=args.slurm_time, slurm_cluster=args.slurm_cluster,
        slurm_options=parse_slurm_options(args.slurm_option),
        worker_logs=not getattr(args, "quiet", False))
    if options.name != "local":
        require(options.name)
    return options


def _cmd_analyze(args: argparse.Namespace) -> int:
    from mbdefense.analysis import analysis_html, analysis_markdown, stage_summary
    from mbdefense.core.errors import ConfigError
    from mbdefense.core.io import atomic_write_json, atomic_write_text
    from mbdefense.reporting import text_table
    from mbdefense.runs.analyze import analyze_experiment
    from mbdefense.runs.outputs import check_cache_dir, check_output_dir
    from mbdefense.runs.presets import preset_for
    from mbdefense.runs.spec import Experiment, ModelSpec

    out = check_output_dir(args.out, command="analyze", marker=("analysis.json", "cache"),
                           force=args.force)
    check_cache_dir(args.cache_dir)
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
    else:
        from mbdefense.runs.outputs import check_output_dir

        check_output_dir(out, command="report", marker=("report.md", "results.json"),
                         force=args.force)
    paths = write_report(args.runs, out)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


COMMANDS = {"demo": _cmd_demo, "poison": _cmd_poison, "defend": _cmd_defend, "eval": _cmd_eval,
            "run": _cmd_run, "report": _cmd_report, "analyze": _cmd_analyze}
