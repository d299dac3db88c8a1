"""The command line's options: generated from the settings dataclasses where they tune a run,
every default shown in --help, an example in each subcommand's help."""

from __future__ import annotations

import argparse
from typing import Any


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


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line (naming the option and where to read more), exit status 2,
    like every other error."""

    def error(self, message: str) -> Any:
        from mbdefense.core.text import one_line

        self.exit(2, f"{self.prog}: error: {one_line(message, 600)} (see {self.prog} "
                     f"--help)\n")


def build_parser() -> argparse.ArgumentParser:
    import mbdefense

    parser = OneLineParser(
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
    from mbdefense.runs.presets import embedded, embedded_smoke

    demo.add_argument("--margin", type=float, default=None,
                      help=f"stage-2 margin in R, nats per token (default: the preset's: "
                           f"{embedded().stage2.margin:g}, or {embedded_smoke().stage2.margin:g} "
                           f"for smoke)")
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
    defend.add_argument("--lora", action="store_true",
                        help="instruction-tune through LoRA adapters, merged at the end "
                             "(stage 2 trains adapters by default; with this flag it trains "
                             "them under a preset whose stage 2 trains every weight)")
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
    run.add_argument("--rescore", action="store_true",
                     help="score every cell again, reusing the cache's trained models (e.g. "
                          "for the per-prompt outcomes a cell cached by an older version "
                          "lacks); the same command after a stop keeps the cells it already "
                          "scored again")
    run.add_argument("--cache-defended", action="store_true",
                     help="keep each defense's model after training in the cache too, so "
                          "--rescore or another split (evaluation.split) does not train it "
                          "again (a model per defense and attacked model: mind the disk for "
                          "large models)")
    run.add_argument("--generator", choices=["plain", "vllm"], default=None,
                     help="evaluation backend (same as generation.backend=...)")
    _executor_options(run)
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
    report.add_argument("--force", action="store_true",
                        help="write into a non-empty --out that is not an earlier report or run "
                             "folder (only the report's files are replaced)")
    return parser


def _executor_options(run: argparse.ArgumentParser) -> None:
    """``run --executor``: the grid's cells as tasks on Ray or SLURM (the cluster extra)."""
    group = run.add_argument_group("cluster (--executor ray or slurm; see docs/cluster.md)")
    group.add_argument("--executor", choices=["local", "ray", "slurm"], default="local",
                       help="local: this process, one cell after another; ray: tasks on a Ray "
                            "cluster; slurm: SLURM jobs through submitit (default: %(default)s)")
    group.add_argument("--gpus-per-task", type=int, default=None, metavar="N",
                       help="GPUs each fine-tune or cell asks for, 0 or 1 (a task is one "
                            "process; default: 1 on SLURM; on Ray 1 when the cluster has GPUs, "
                            "else 0)")
    group.add_argument("--cpus-per-task", type=int, default=None, metavar="N",
                       help="CPUs each task asks for (default: 1 on Ray, 4 on SLURM)")
    group.add_argument("--ray-address", default=None,
                       help="join this Ray cluster (e.g. auto, or ray://HOST:10001; default: "
                            "start one on this machine)")
    group.add_argument("--slurm-partition", default=None, help="the jobs' partition")
    group.add_argument("--slurm-time", type=int, default=240, metavar="MINUTES",
                       help="time limit of each job (default: %(default)s)")
    group.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                       help="another sbatch option, e.g. account=abc, qos=high, mem=64G "
                            "(repeatable)")
    group.add_argument("--slurm-cluster", choices=["slurm", "local", "debug"], default="slurm",
                       help="local: run the jobs as processes on this machine, debug: in this "
                            "process (to try a grid without SLURM; default: %(default)s)")


def _common(parser: argparse.ArgumentParser, *, force: bool) -> None:
    if force:
        parser.add_argument("--force", action="store_true",
                            help="write into a non-empty --out that is not an earlier output "
                                 "of this command (only this command's files are replaced)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
