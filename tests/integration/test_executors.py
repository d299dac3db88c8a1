"""`mbdefense run --executor ray|slurm`: the cells as tasks of a graph on an engine give the
rows of a local run, in the same order, and a partial grid resumes from the shared cache."""

import json
import os
import sys
from pathlib import Path

import pytest

from mbdefense.cli import main
from mbdefense.runs.load import load_run_spec, run_spec_from_dict
from mbdefense.runs.tasks import task_graph

GRID = """\
name: cluster
models: [embedded-smoke]
attacks: [badnet]
behaviors: [refusal]
defenses: [clean, none, clean-fft]
seeds: [0, 1]
data: {n_train: 200, n_trusted: 16, n_test: 16}
base: {n_per_pool: 200}
finetune: {epochs: 1}
stage2: {train: {epochs: 1}}
implant_prompts: 8
"""

METRICS = ("model", "attack", "behavior", "defense", "seed", "cacc", "asr", "aacc",
           "clean_asr", "n_clean", "n_triggered")


def metrics(out: Path):
    rows = json.loads((out / "results.json").read_text())["rows"]
    return [{k: r[k] for k in METRICS} for r in rows]


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


# ---- the graph and the options (no engine needed)

def test_graph_trains_each_shared_model_once_and_orders_cells_after_it():
    spec = run_spec_from_dict({"models": ["embedded-smoke"], "attacks": ["badnet", "insent"],
                               "seeds": [0, 1],
                               "defenses": ["clean", "none", "clean-fft", "mb-defense", "p2p"]})
    graph = {t.name: t for t in task_graph(spec)}
    fine_tunes = [t for t in graph.values() if not t.is_cell]
    # one attacked model per group; one clean reference per seed (not per attack)
    assert sorted(t.name for t in fine_tunes) == [
        "g0/finetune-attacked", "g0/finetune-clean", "g1/finetune-attacked",
        "g2/finetune-attacked", "g2/finetune-clean", "g3/finetune-attacked"]
    assert sum(t.is_cell for t in graph.values()) == spec.n_cells
    assert graph["g1/clean"].after == ("g0/finetune-clean",)      # seed 0, second attack
    assert graph["g3/none"].after == ("g3/finetune-attacked",)
    assert graph["g3/clean-fft"].after == ("g3/finetune-attacked",)
    assert graph["g3/mb-defense"].after == graph["g3/p2p"].after == ()   # data of their own
    order = list(graph)
    assert all(order.index(d) < order.index(t.name) for t in graph.values() for d in t.after)


def test_a_missing_engine_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    (tmp_path / "grid.yaml").write_text(GRID)
    monkeypatch.setitem(sys.modules, "ray", None)   # import ray fails
    code, err = run(["run", str(tmp_path / "grid.yaml"), "--executor", "ray", "--out",
                     str(tmp_path / "out")], capsys)
    assert code == 2
    assert err.strip() == ("mbdefense: error: --executor ray needs the cluster extra: pip "
                           "install 'mbdefense[cluster]'")
    assert not (tmp_path / "out").exists()


def test_engine_options_belong_to_their_engine(tmp_path, capsys):
    (tmp_path / "grid.yaml").write_text(GRID)
    code, err = run(["run", str(tmp_path / "grid.yaml"), "--slurm-partition", "gpu",
                     "--dry-run"], capsys)
    assert code == 2 and "--slurm-partition: not an option of --executor local" in err
    code, err = run(["run", str(tmp_path / "grid.yaml"), "--executor", "slurm",
                     "--slurm-option", "account", "--dry-run"], capsys)
    assert code == 2 and "--slurm-option: expected KEY=VALUE, got 'account'" in err


FAKE_SBATCH = """#!/bin/sh
# records the job script and answers like sbatch
n=$(( $(cat "$(dirname "$0")/count" 2>/dev/null || echo 100) + 1 ))
echo $n > "$(dirname "$0")/count"
cp "$1" "$(dirname "$0")/job-$n.sh"
echo "Submitted batch job $n"
"""


def test_slurm_cells_wait_for_their_fine_tune_through_afterok(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from mbdefense.runs.executors import ExecutorOptions, slurm_executor, submit_jobs

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    (tmp_path / "grid.yaml").write_text(GRID)
    spec = load_run_spec(tmp_path / "grid.yaml")
    options = ExecutorOptions(name="slurm", slurm_partition="gpu", slurm_time=600,
                              slurm_options={"account": "abc"})
    executor = slurm_executor(spec, options, tmp_path / "logs")
    jobs = submit_jobs(executor, spec, str(tmp_path / "cache"), task_graph(spec), options)
    script = {name: (bin_dir / f"job-{job.job_id}.sh").read_text() for name, job in jobs.items()}
    assert len(script) == 10
    for text in script.values():
        for line in ("--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=4",
                     "--time=600", "--account=abc", "--kill-on-invalid-dep=yes",
                     f"--output={tmp_path / 'logs'}"):
            assert f"#SBATCH {line}" in text
    assert "--dependency" not in script["g1/finetune-attacked"]
    for cell, fine_tune in (("g1/none", "g1/finetune-attacked"),
                            ("g1/clean-fft", "g1/finetune-attacked"),
                            ("g0/clean", "g0/finetune-clean")):
        assert f"#SBATCH --dependency=afterok:{jobs[fine_tune].job_id}\n" in script[cell]


# ---- the engines, on this machine's CPUs

@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The grid's config and the rows of a plain local run (the reference)."""
    root = tmp_path_factory.mktemp("executors")
    (root / "grid.yaml").write_text(GRID)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MBDEFENSE_CACHE", str(root / "base-cache"))
        assert main(["run", str(root / "grid.yaml"), "--out", str(root / "local"),
                     "--quiet"]) == 0
    return root, metrics(root / "local")


@pytest.fixture()
def env(grid, monkeypatch):
    root, _ = grid
    monkeypatch.setenv("MBDEFENSE_CACHE", str(root / "base-cache"))   # the workers' too
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return root


@pytest.mark.slow   # tens of seconds: worker processes start and import torch
def test_ray_grid_gives_the_local_rows_and_a_partial_grid_resumes(grid, env, capsys):
    pytest.importorskip("ray")
    root, reference = grid
    args = ["run", str(root / "grid.yaml"), "--out", str(root / "ray"), "--executor", "ray",
            "--cpus-per-task", "1"]
    code, err = run(args + ["seeds=[0]"], capsys)   # the first half, as if killed after it
    assert code == 0, err
    assert metrics(root / "ray") == reference[:3]
    code, err = run(args, capsys)                    # the whole grid in the same folder
    assert code == 0, err
    assert metrics(root / "ray") == reference
    assert err.count("(cached)") == 3                 # seed 0's cells, from the cache
    assert "g0/finetune-attacked: loaded from the cache" in err
    assert "g1/finetune-attacked: trained" in err


@pytest.mark.slow   # tens of seconds: worker processes start and import torch
def test_slurm_path_through_submitit_gives_the_local_rows(grid, env, capsys):
    pytest.importorskip("submitit")
    root, reference = grid
    out = root / "slurm"
    code, err = run(["run", str(root / "grid.yaml"), "--out", str(out), "--executor", "slurm",
                     "--slurm-cluster", "local", "--gpus-per-task", "0", "--cpus-per-task",
                     "1", "--slurm-time", "10"], capsys)
    assert code == 0, err
    assert metrics(out) == reference
    assert "submitted 10 jobs" in err                 # 2 clean + 2 attacked fine-tunes, 6 cells
    logs = sorted((out / "slurm-logs").glob("*_log.err"))
    assert len(logs) == 10
    assert sum("fine-tuning the base" in p.read_text() for p in logs) == 4
