"""A run as a graph of tasks, for the cluster executors (``mbdefense run --executor ray|slurm``).

Each (model, seed, attack, behaviour) group has one fine-tuning task for its attacked model,
shared by the defenses that train on the attacked data unchanged; the clean reference's
fine-tune is one task per (model, seed), as its training set does not depend on the attack.
Every cell (the clean reference or a defense of a group) is one task that runs after the
fine-tune it reuses; a defense that trains on data of its own (MB-Defense, P2P) fine-tunes
inside its cell. Tasks are plain functions of plain data (the spec, the cache folder and
indices): any worker that sees the shared stage cache can run any of them, and the driver
gathers their rows into the document in the order of a local run.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from mbdefense.results.document import ResultsDocument, merge_outcome, new_outcome
from mbdefense.runs.spec import CLEAN_REFERENCE, RunSpec

ATTACKED, CLEAN = "attacked", "clean"


@dataclass(frozen=True)
class Task:
    """One node of the graph: a fine-tune (``defense`` None; ``training`` attacked or clean)
    or a cell (``defense`` set), of group ``group`` (an index into ``spec.groups``)."""

    name: str                       # unique in the graph, e.g. "g0/finetune-attacked"
    group: int
    defense: str | None = None
    training: str | None = None
    after: tuple[str, ...] = field(default=())

    @property
    def is_cell(self) -> bool:
        return self.defense is not None


def _shares_attacked_model(name: str) -> bool:
    from mbdefense.defenses import make_defense

    return not make_defense(name).changes_training_data


def task_graph(spec: RunSpec) -> list[Task]:
    """Fine-tunes first, then the cells, each cell after the fine-tune it reuses."""
    fine_tunes: list[Task] = []
    cells: list[Task] = []
    clean_of: dict[tuple, str] = {}
    defenses = [d for d in spec.defenses if d != CLEAN_REFERENCE]
    for g, (model, seed, attack, behavior) in enumerate(spec.groups):
        if CLEAN_REFERENCE in spec.defenses:
            # the clean training set depends on the attack only for BackdoorLLM folders
            per_attack = spec.settings(model).data.kind == "backdoorllm"
            shared = (g,) if per_attack else (model.name, model.label, seed)
            if shared not in clean_of:
                clean_of[shared] = f"g{g}/finetune-clean"
                fine_tunes.append(Task(clean_of[shared], g, training=CLEAN))
            cells.append(Task(f"g{g}/{CLEAN_REFERENCE}", g, CLEAN_REFERENCE,
                              after=(clean_of[shared],)))
        sharing = [d for d in defenses if _shares_attacked_model(d)]
        if sharing:
            fine_tunes.append(Task(f"g{g}/finetune-attacked", g, training=ATTACKED))
        for d in defenses:
            after = (f"g{g}/finetune-attacked",) if d in sharing else ()
            cells.append(Task(f"g{g}/{d}", g, d, after=after))
    return fine_tunes + cells


# ---- the work of one task (runs on a worker)

def _logger(verbose: bool) -> Callable[[str], None]:
    if not verbose:
        return lambda msg: None
    return lambda msg: print(msg, file=sys.stderr, flush=True)


def _experiment(spec: RunSpec, group: int, cache_dir: str, defenses: list[str],
                clean: bool) -> Any:
    model, seed, attack, behavior = spec.groups[group]
    experiment = spec.experiment(model, seed, attack, behavior, progress=False,
                                 cache_dir=cache_dir)
    return dataclasses.replace(experiment, defenses=defenses, include_clean_reference=clean)


def run_finetune(spec: RunSpec, cache_dir: str, task: Task, verbose: bool = True
                 ) -> dict[str, Any]:
    """Train (or find in the cache) the model a group's cells reuse. Returns its cache key and
    whether it was there already."""
    from mbdefense.runs.cache import StageCache
    from mbdefense.runs.lifecycle import Lifecycle
    from mbdefense.runs.workload import build_workload

    log = _logger(verbose)
    t0 = time.time()
    experiment = _experiment(spec, task.group, cache_dir, [], False)
    work = build_workload(experiment, log=log)
    cache = StageCache(cache_dir, log=log)
    lifecycle = Lifecycle(work, experiment.settings, experiment.seed, scorer=None,
                          cache=cache, progress=False, log=log, copy_base=False)
    if task.training == CLEAN:   # as Lifecycle.clean_cell trains it
        examples, label = list(work.clean_train), "clean reference"
    else:                        # as the first defense that reuses it trains it
        first = next(d for d in spec.defenses
                     if d != CLEAN_REFERENCE and _shares_attacked_model(d))
        examples, label = lifecycle.training_set(lifecycle.make(first))
    key = lifecycle.finetune_key(examples, label)
    cached = cache.has_model("finetune", key)
    lifecycle.train(examples, label)
    return {"key": key, "cached": cached, "seconds": round(time.time() - t0, 1)}


def run_cell(spec: RunSpec, cache_dir: str, task: Task, verbose: bool = True,
             *after: Any) -> dict[str, Any]:
    """One cell through the lifecycle (its fine-tuned model comes from the cache). ``after``
    holds the results of the tasks it depends on (unused: they only order the graph)."""
    from mbdefense.runs.experiment import run_experiment

    assert task.defense is not None
    clean = task.defense == CLEAN_REFERENCE
    experiment = _experiment(spec, task.group, cache_dir, [] if clean else [task.defense], clean)
    seen: list[bool] = []
    outcome = run_experiment(experiment, log=_logger(verbose),
                             on_cell=lambda label, cached: seen.append(cached))
    return {"outcome": outcome, "cached": bool(seen and seen[0])}


def run_task(spec: RunSpec, cache_dir: str, task: Task, verbose: bool = True,
             *after: Any) -> dict[str, Any]:
    """The one entry point the executors call: a fine-tune or a cell."""
    if task.is_cell:
        return run_cell(spec, cache_dir, task, verbose, *after)
    return run_finetune(spec, cache_dir, task, verbose)


# ---- the driver's side

def gather(spec: RunSpec, graph: list[Task], result: Callable[[Task], dict[str, Any]],
           doc: ResultsDocument, *, on_cell: Callable[[str, bool], None],
           on_group: Callable[[], None], log: Callable[[str], None]) -> ResultsDocument:
    """Wait for the tasks group by group (``result(task)`` blocks until it is done) and add
    each group's rows to ``doc`` in the order of a local run: the clean reference, then the
    defenses in the config's order."""
    by_group: dict[int, list[Task]] = {}
    for task in graph:
        by_group.setdefault(task.group, []).append(task)
    waited: set[str] = set()
    for g, (model, seed, attack, behavior) in enumerate(spec.groups):
        log(f"== {g + 1}/{len(spec.groups)}: model {model.row_name}, seed {seed}, attack "
            f"{attack}, behaviour {behavior}")
        tasks = by_group.get(g, [])
        for task in tasks:   # a failed fine-tune is reported as itself, not by its cells
            for name in task.after:
                if name not in waited:
                    done = result(next(t for t in graph if t.name == name))
                    waited.add(name)
                    log(f"{name}: {'loaded from the cache' if done['cached'] else 'trained'} "
                        f"({done['seconds']}s)")
        outcome = new_outcome()
        scorer, seconds = None, 0.0
        cells = sorted((t for t in tasks if t.is_cell),
                       key=lambda t: t.defense != CLEAN_REFERENCE)
        for task in cells:
            done = result(task)
            part = done["outcome"]
            merge_outcome(outcome, part)
            scorer, seconds = part["scorer"], seconds + part["wall_seconds"]
            on_cell("clean reference" if task.defense == CLEAN_REFERENCE else task.defense,
                    done["cached"])
        doc.add(outcome, {"model": model.row_name, "seed": seed, "attack": attack,
                          "behavior": behavior, "scorer": scorer,
                          "wall_seconds": round(seconds, 1)})
        on_group()
    return doc
