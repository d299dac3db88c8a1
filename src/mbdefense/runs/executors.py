"""Where a run's tasks run (``mbdefense run --executor``): ``local`` is one process, one group
after another (:func:`mbdefense.runs.experiment.run_spec`); ``ray`` hands the task graph of
:mod:`mbdefense.runs.tasks` to a Ray cluster, ``slurm`` submits it as SLURM jobs through
submitit (both in the ``cluster`` extra). The scheduling is the engine's: a cell waits for its
fine-tune through Ray object references or SLURM's ``afterok`` dependencies, and each task asks
for ``gpus_per_task`` GPUs and ``cpus_per_task`` CPUs. Workers share the stage cache, which
must sit on a file system they all see; its locks make a stage one worker started wait for
it, and a killed grid resumes from it.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mbdefense.core.errors import ConfigError
from mbdefense.results.document import ResultsDocument
from mbdefense.runs.spec import RunSpec
from mbdefense.runs.tasks import Task, gather, run_task, task_graph

EXECUTORS = ("local", "ray", "slurm")
SLURM_CLUSTERS = ("slurm", "local", "debug")   # submitit's: local processes, or in-process
#: Passed to the workers of a Ray cluster (never an API key: workers read their own).
FORWARDED_ENV = ("MBDEFENSE_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_VERBOSITY",
                 "TOKENIZERS_PARALLELISM", "HF_HUB_DISABLE_PROGRESS_BARS")


@dataclass
class ExecutorOptions:
    """How the tasks run. ``gpus_per_task`` None: one GPU when the Ray cluster has GPUs (else
    none), one on SLURM; ``cpus_per_task`` None: 1 on Ray, 4 on SLURM."""

    name: str = "local"
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    ray_address: str | None = None          # join this Ray cluster (default: start one here)
    slurm_partition: str | None = None
    slurm_time: int = 240                   # minutes per task
    slurm_cluster: str = "slurm"            # submitit's "local" or "debug" to try a grid here
    slurm_options: dict[str, str] = field(default_factory=dict)   # more sbatch options
    worker_logs: bool = True                # the tasks' own log lines

    def __post_init__(self) -> None:
        if self.name not in EXECUTORS:
            raise ConfigError(f"--executor: unknown '{self.name}' (known: "
                              f"{', '.join(EXECUTORS)})")
        if self.slurm_cluster not in SLURM_CLUSTERS:
            raise ConfigError(f"--slurm-cluster: unknown '{self.slurm_cluster}' (known: "
                              f"{', '.join(SLURM_CLUSTERS)})")
        for flag, value, low in (("--gpus-per-task", self.gpus_per_task, 0),
                                 ("--cpus-per-task", self.cpus_per_task, 1),
                                 ("--slurm-time", self.slurm_time, 1)):
            if value is not None and value < low:
                raise ConfigError(f"{flag}: must be >= {low}, got {value}")
        given = {"--ray-address": self.ray_address is not None and self.name != "ray",
                 "--slurm-partition": self.slurm_partition is not None and self.name != "slurm",
                 "--slurm-option": bool(self.slurm_options) and self.name != "slurm",
                 "--gpus-per-task": self.gpus_per_task is not None and self.name == "local",
                 "--cpus-per-task": self.cpus_per_task is not None and self.name == "local"}
        if self.gpus_per_task is not None and self.gpus_per_task > 1:
            raise ConfigError(f"--gpus-per-task: a task is one process on one GPU (0 or 1), got "
                              f"{self.gpus_per_task}; several GPUs per task are not supported")
        wrong = [flag for flag, bad in given.items() if bad]
        if wrong:
            raise ConfigError(f"{', '.join(wrong)}: not an option of --executor {self.name}")


def parse_slurm_options(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` sbatch options (``account=abc``, ``qos=high``, ``mem=64G``)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--slurm-option: expected KEY=VALUE, got '{item}'")
        out[key.strip().lstrip("-")] = value.strip()
    return out


def require(name: str) -> Any:
    """The engine's module, or one line naming the extra that brings it."""
    module = {"ray": "ray", "slurm": "submitit"}[name]
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"--executor {name} needs the cluster extra: pip install "
                          f"'mbdefense[cluster]'") from None


def describe_tasks(spec: RunSpec, options: ExecutorOptions) -> str:
    """The graph in one line (``--dry-run``)."""
    graph = task_graph(spec)
    cells = sum(1 for t in graph if t.is_cell)
    gpus: Any = options.gpus_per_task
    if gpus is None:
        gpus = slurm_gpus(options) if options.name == "slurm" else "1 if the cluster has GPUs"
    return (f"  executor {options.name}: {len(graph)} tasks ({len(graph) - cells} fine-tunes, "
            f"{cells} cells, each cell after the fine-tune it reuses); GPUs per task: {gpus}")


def run_graph(spec: RunSpec, cache_dir: str | Path, options: ExecutorOptions,
              doc: ResultsDocument, *, logs: Path, on_cell: Callable[[str, bool], None],
              on_group: Callable[[], None], log: Callable[[str], None]) -> ResultsDocument:
    """Every task of ``spec`` on the engine, the rows gathered into ``doc`` group by group."""
    graph = task_graph(spec)
    cache = str(Path(cache_dir).resolve())   # the workers' working folders may differ
    run = _run_ray if options.name == "ray" else _run_slurm
    return run(spec, cache, graph, options, doc, logs=logs, on_cell=on_cell,
               on_group=on_group, log=log)


def _run_ray(spec: RunSpec, cache: str, graph: list[Task], options: ExecutorOptions,
             doc: ResultsDocument, *, logs: Path, on_cell: Callable[[str, bool], None],
             on_group: Callable[[], None], log: Callable[[str], None]) -> ResultsDocument:
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")      # every worker's "done in" line
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no colour codes in a log file
    ray = require("ray")
    started = not ray.is_initialized()
    if started:
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        local = {} if options.ray_address else {"object_store_memory": 256 * 2**20}
        ray.init(address=options.ray_address, include_dashboard=False,
                 log_to_driver=options.worker_logs, runtime_env={"env_vars": env}, **local)
    try:
        gpus = options.gpus_per_task
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        cpus = options.cpus_per_task or 1
        log(f"Ray: {len(graph)} tasks, {gpus} GPU(s) and {cpus} CPU(s) each, on "
            f"{ray.cluster_resources().get('CPU', 0):g} CPUs and "
            f"{ray.cluster_resources().get('GPU', 0):g} GPUs")
        remote = ray.remote(run_task)
        shared = ray.put(spec)
        refs: dict[str, Any] = {}
        for task in graph:   # a reference among the arguments: Ray runs that task first
            refs[task.name] = remote.options(num_gpus=gpus, num_cpus=cpus, name=task.name).remote(
                shared, cache, task, options.worker_logs, *(refs[n] for n in task.after))
        try:
            return gather(spec, graph, lambda t: ray.get(refs[t.name]), doc, on_cell=on_cell,
                          on_group=on_group, log=log)
        except KeyboardInterrupt:
            for ref in refs.values():
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()


def slurm_executor(spec: RunSpec, options: ExecutorOptions, logs: Path) -> Any:
    """submitit's executor with the run's resources; job files and logs under ``logs``."""
    submitit = require("slurm")
    if options.slurm_cluster == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        raise ConfigError("--executor slurm: sbatch is not on this machine's PATH; run from a "
                          "SLURM login node (or try the grid here with --slurm-cluster local)")
    executor = submitit.AutoExecutor(folder=logs, cluster=options.slurm_cluster)
    executor.update_parameters(name=f"mbdefense-{spec.name}", timeout_min=options.slurm_time,
                               nodes=1, tasks_per_node=1, gpus_per_node=slurm_gpus(options),
                               cpus_per_task=options.cpus_per_task or 4,
                               slurm_partition=options.slurm_partition)
    return executor


def slurm_gpus(options: ExecutorOptions) -> int:
    return 1 if options.gpus_per_task is None else options.gpus_per_task


def submit_jobs(executor: Any, spec: RunSpec, cache: str, graph: list[Task],
                options: ExecutorOptions) -> dict[str, Any]:
    """One job per task, a cell after its fine-tune: on SLURM through ``afterok`` (a job whose
    fine-tune failed is cancelled, not left pending), elsewhere by waiting for the fine-tune
    before submitting the cell. Tasks without dependencies go first."""
    native = options.slurm_cluster == "slurm"
    sbatch = {**options.slurm_options, "kill-on-invalid-dep": "yes"}
    jobs: dict[str, Any] = {}
    try:
        for task in sorted(graph, key=lambda t: bool(t.after)):
            deps = [jobs[n] for n in task.after]
            extra = dict(sbatch)
            if deps and native:
                extra["dependency"] = "afterok:" + ":".join(str(j.job_id) for j in deps)
            elif deps:
                for job in deps:
                    job.result()
            executor.update_parameters(slurm_additional_parameters=extra)
            jobs[task.name] = executor.submit(run_task, spec, cache, task, options.worker_logs)
    except KeyboardInterrupt:
        _cancel(jobs)
        raise
    return jobs


def _cancel(jobs: dict[str, Any]) -> None:
    for job in jobs.values():
        if not job.done():
            job.cancel(check=False)


def _run_slurm(spec: RunSpec, cache: str, graph: list[Task], options: ExecutorOptions,
               doc: ResultsDocument, *, logs: Path, on_cell: Callable[[str, bool], None],
               on_group: Callable[[], None], log: Callable[[str], None]) -> ResultsDocument:
    executor = slurm_executor(spec, options, logs)
    jobs = submit_jobs(executor, spec, cache, graph, options)
    log(f"submitted {len(jobs)} jobs ({slurm_gpus(options)} GPU(s) each) to "
        f"{options.slurm_cluster}; their logs: {logs}")
    try:
        return gather(spec, graph, lambda t: jobs[t.name].result(), doc, on_cell=on_cell,
                      on_group=on_group, log=log)
    except KeyboardInterrupt:   # Ctrl-C or SIGTERM stops the grid; a failed task does not
        _cancel(jobs)
        raise
