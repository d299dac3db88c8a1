"""One experiment (a model, seed, attack and behaviour) with all its defenses, and a grid of
them (``mbdefense run``), with progress and resume."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

from mbdefense.results.document import ResultsDocument, run_metadata
from mbdefense.runs.cache import StageCache, digest
from mbdefense.runs.evaluate import make_scorer
from mbdefense.runs.lifecycle import Lifecycle
from mbdefense.runs.spec import Experiment, RunSpec
from mbdefense.runs.workload import build_workload


def check_experiment(experiment: Experiment) -> None:
    """Every name, option and number checked before any work."""
    from mbdefense.defenses import make_defense

    for name in experiment.defenses:
        make_defense(name, options=experiment.settings.defense_options.get(name))


def run_experiment(experiment: Experiment, *, log: Callable[[str], None] = print,
                   on_cell: Callable[[str, bool], None] | None = None,
                   keep_models: bool = False) -> dict[str, Any]:
    """The rows of the clean reference and every defense, with samples and diagnostics. With
    ``keep_models`` the outcome also holds ``models`` and the ``workload`` (for analyses)."""
    start = time.time()
    check_experiment(experiment)
    work = build_workload(experiment, log=log)
    cache = StageCache(experiment.cache_dir, log=log, rescore=experiment.rescore,
                       rescore_since=experiment.rescore_since,
                       keep_defended=experiment.cache_defended)
    scorer = make_scorer(experiment.settings.evaluation, cache_dir=experiment.cache_dir,
                         progress=experiment.progress)
    lifecycle = Lifecycle(work, experiment.settings, experiment.seed, scorer=scorer,
                          cache=cache, progress=experiment.progress, log=log)
    outcome = lifecycle.run(experiment.defenses,
                            include_clean_reference=experiment.include_clean_reference,
                            on_cell=on_cell, keep_models=keep_models)
    outcome["scorer"] = getattr(scorer, "identity", None) or scorer.name
    if keep_models:
        outcome["workload"] = work
    outcome["wall_seconds"] = round(time.time() - start, 1)
    return outcome


class Progress:
    """Cells done, elapsed time and an estimate of the time left (from the cells computed so
    far; cells loaded from the cache count as done but not in the rate)."""

    def __init__(self, total: int, log: Callable[[str], None]) -> None:
        self.total, self.log = total, log
        self.done = self.computed = 0
        self.computed_seconds = 0.0
        self.start = self.last = time.time()

    def cell(self, label: str, cached: bool) -> None:
        now = time.time()
        self.done += 1
        if not cached:
            self.computed += 1
            self.computed_seconds += now - self.last
        self.last = now
        left = self.total - self.done
        eta = ""
        if self.computed and left:
            eta = f", about {duration(self.computed_seconds / self.computed * left)} left"
        self.log(f"[{self.done}/{self.total} cells] {label} {'(cached) ' if cached else ''}"
                 f"- {duration(now - self.start)} elapsed{eta}")


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def spec_json(spec: RunSpec) -> dict[str, Any]:
    """The resolved spec as plain data (results.json's ``config``)."""
    return {"name": spec.name, "description": spec.description,
            "models": [dataclasses.asdict(m) for m in spec.models], "attacks": spec.attacks,
            "behaviors": spec.behaviors, "defenses": spec.defenses, "seeds": spec.seeds,
            "poison_rate": spec.poison_rate, "overrides": spec.overrides,
            "settings": {name: dataclasses.asdict(s) for name, s in spec.resolved.items()}}


def run_spec(spec: RunSpec, out: str | Path, *, cache_dir: str | Path | None = None,
             progress: bool = True, log: Callable[[str], None] = print,
             executor: Any = None) -> ResultsDocument:
    """Run every cell (or load it from the cache); ``out/results.json`` is rewritten after each
    attacked model, so a partial run shows what is finished. ``executor``: an
    :class:`~mbdefense.runs.executors.ExecutorOptions` (None: this process, one group after
    another; ``ray`` or ``slurm``: the cells as tasks of a graph, the same rows in the same
    order)."""
    out = Path(out)
    cache = str(Path(cache_dir) if cache_dir is not None else out / "cache")
    if not spec.rescore:
        return _run_spec(spec, out, cache, progress=progress, log=log, executor=executor)
    plan, stage_cache = rescore_plan(spec), StageCache(cache, log=log)
    since, resumed = stage_cache.begin_rescore(plan)
    if resumed:
        log(f"resuming --rescore begun {time.ctime(since)}: cells scored again since then "
            f"are kept")
    doc = _run_spec(dataclasses.replace(spec, rescore_since=since), out, cache,
                    progress=progress, log=log, executor=executor)
    stage_cache.end_rescore(plan)
    return doc


def rescore_plan(spec: RunSpec) -> str:
    """A key of what a --rescore run scores: a stopped run of the same plan resumes it."""
    return digest("rescore", spec_json(spec))


def _run_spec(spec: RunSpec, out: Path, cache: str, *, progress: bool,
              log: Callable[[str], None], executor: Any) -> ResultsDocument:
    start = time.time()
    tracker = Progress(spec.n_cells, log)
    doc = ResultsDocument(name=spec.name, description=spec.description, config=spec_json(spec),
                          metadata=run_metadata(spec.description))
    if executor is not None and executor.name != "local":
        from mbdefense.runs.executors import run_graph

        def write() -> None:
            doc.wall_seconds = time.time() - start
            doc.write(out / "results.json")

        return run_graph(spec, cache, executor, doc, logs=out / "slurm-logs",
                         on_cell=tracker.cell, on_group=write, log=log)
    for n, (model, seed, attack, behavior) in enumerate(spec.groups, 1):
        log(f"== {n}/{len(spec.groups)}: model {model.row_name}, seed {seed}, attack {attack}, "
            f"behaviour {behavior}")
        experiment = spec.experiment(model, seed, attack, behavior, progress=progress,
                                     cache_dir=cache)
        outcome = run_experiment(experiment, log=log, on_cell=tracker.cell)
        doc.add(outcome, {"model": model.row_name, "seed": seed, "attack": attack,
                          "behavior": behavior, "scorer": outcome["scorer"],
                          "wall_seconds": outcome["wall_seconds"]})
        doc.wall_seconds = time.time() - start
        doc.write(out / "results.json")
    return doc
