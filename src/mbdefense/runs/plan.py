"""What a run will do, before it does it (``mbdefense run --dry-run``): cells, training stages
and an estimate of the compute."""

from __future__ import annotations

from pathlib import Path

from mbdefense.runs.spec import CLEAN_REFERENCE, ModelSpec, RunSpec, Settings

#: Parameter counts of models the shipped configs name (for the compute estimate).
KNOWN_SIZES = {
    "embedded": 4.2e6, "embedded-smoke": 0.5e6, "smollm2-135m": 135e6,
    "HuggingFaceTB/SmolLM2-135M-Instruct": 135e6,
    "meta-llama/Llama-2-7b-hf": 6.7e9, "meta-llama/Llama-2-7b-chat-hf": 6.7e9,
    "Qwen/Qwen3-8B": 8.2e9, "Qwen/Qwen3-1.7B": 1.7e9,
    "meta-llama/Llama-3.2-1B-Instruct": 1.24e9, "meta-llama/Llama-3.2-1B": 1.24e9,
}
#: Training examples and test prompts assumed when a data file's size is unknown here.
ASSUMED_TRAIN, ASSUMED_TEST, ASSUMED_TOKENS = 52_000, 218, 300
GPU_FLOPS = 989e12 * 0.4    # one H100 (dense bf16) at 40% utilisation


def _count(path: str | None, fallback: int, cap: int) -> int:
    if path is None:
        return cap or fallback
    if not Path(path).is_file():   # a hub id or a folder: no download for an estimate
        return min(fallback, cap) if cap else fallback
    try:
        from mbdefense.data import load_examples

        n = len(load_examples(path))
    except Exception:   # an estimate: a file that does not load is reported by the run
        n = fallback
    return min(n, cap) if cap else n


def stage_counts(spec: RunSpec) -> dict[str, int]:
    """Fine-tuning runs, stage-2 style repairs and evaluations the grid needs (before any
    cache hit)."""
    from mbdefense.defenses import make_defense

    groups = len(spec.groups)
    defenses = [make_defense(d) for d in spec.defenses if d != CLEAN_REFERENCE]
    data_changing = sum(1 for d in defenses if d.changes_training_data)
    shared = 1 if any(not d.changes_training_data for d in defenses) else 0
    clean = len(spec.models) * len(spec.seeds) if CLEAN_REFERENCE in spec.defenses else 0
    return {"fine-tunes": groups * (data_changing + shared) + clean,
            "repairs": groups * sum(1 for d in defenses if d.changes_model),
            "evaluations": spec.n_cells}


def estimate_flops(spec: RunSpec, model: ModelSpec, settings: Settings) -> float | None:
    size = KNOWN_SIZES.get(model.name)
    if size is None:
        return None
    data = settings.data
    n_train = _count(data.train, ASSUMED_TRAIN, data.n_train) if data.kind != "embedded" \
        else data.n_train
    n_test = _count(data.test, ASSUMED_TEST, data.n_test) if data.kind != "embedded" \
        else data.n_test
    tokens = ASSUMED_TOKENS if data.kind != "embedded" else 40
    counts = stage_counts(spec)
    per_model = len(spec.models)
    train = counts["fine-tunes"] / per_model * n_train * settings.finetune.epochs * tokens
    stage2 = settings.stage2.train_config()
    repair = counts["repairs"] / per_model * data.n_trusted * stage2.epochs * tokens * 3
    evaluate = counts["evaluations"] / per_model * 2 * n_test * (
        tokens + settings.generation.max_new_tokens)
    return 6 * size * (train + repair) + 2 * size * evaluate


def describe(spec: RunSpec) -> str:
    """The plan in words."""
    counts = stage_counts(spec)
    lines = [f"run '{spec.name}': {len(spec.groups)} attacked models ({len(spec.models)} models "
             f"x {len(spec.seeds)} seeds x {len(spec.attacks)} attacks x "
             f"{len(spec.behaviors)} behaviours), {spec.n_cells} cells",
             f"  defenses: {', '.join(spec.defenses)}",
             f"  stages: {counts['fine-tunes']} fine-tunes, {counts['repairs']} after-training "
             f"repairs, {counts['evaluations']} evaluations "
             + ("(every cell scored again: --rescore; trained models still come from the cache)"
                if spec.rescore else "(fewer when cached)")]
    if CLEAN_REFERENCE in spec.defenses:
        lines.append(f"  the clean reference is trained once per model and seed "
                     f"({len(spec.models) * len(spec.seeds)} in all)")
    total = 0.0
    for model in spec.models:
        settings = spec.settings(model)
        data = settings.data
        where = {"embedded": "the embedded suite", "files": f"files (train {data.train}, "
                 f"trusted {data.trusted}, test {data.test})",
                 "backdoorllm": f"BackdoorLLM at {data.backdoorllm}"}[data.kind]
        lines.append(f"  model {model.row_name}: data from {where}; scorer "
                     f"{settings.evaluation.scorer}; fine-tune {settings.finetune.epochs:g} "
                     f"epochs at lr {settings.finetune.learning_rate:g}")
        flops = estimate_flops(spec, model, settings)
        if flops is None:
            lines.append("    compute: unknown model size, no estimate")
            continue
        total += flops
        lines.append(f"    compute: about {flops / 1e15:.3g} PFLOP, "
                     f"{flops / GPU_FLOPS / 3600:.3g} GPU-hours (H100 bf16 at 40% utilisation)")
    if total and len(spec.models) > 1:
        lines.append(f"  total: about {total / 1e15:.3g} PFLOP, "
                     f"{total / GPU_FLOPS / 3600:.3g} GPU-hours")
    return "\n".join(lines)
