"""`mbdefense run`: a grid end to end, shared stages, and resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mbdefense.cli import main

TINY_GRID = """\
name: tiny
models: [embedded-smoke]
attacks: [badnet]
behaviors: [refusal]
defenses: [clean, none, clean-fft, mb-defense]
world: {n_train: 400, n_trusted: 32, n_test: 24}
base: {n_per_pool: 400}
finetune: {epochs: 2}
stage1: {triggers: [mn, bb], min_per_trigger: 16}
stage2: {train: {epochs: 2}}
implant_prompts: 16
"""

METRICS = ("model", "attack", "behavior", "defense", "seed", "cacc", "asr", "aacc",
           "clean_asr", "n_clean", "n_triggered")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    (root / "tiny.yaml").write_text(TINY_GRID)
    environ = dict(os.environ, MBDEFENSE_CACHE=str(root / "base-cache"), OMP_NUM_THREADS="1",
                   PYTHONUNBUFFERED="1")
    return root, environ


def run_cli(args, environ):
    return subprocess.Popen([sys.executable, "-m", "mbdefense.cli", *args], env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def metrics(out: Path):
    rows = json.loads((out / "results.json").read_text())["rows"]
    return [{k: r[k] for k in METRICS} for r in rows]


@pytest.fixture(scope="module")
def reference(env):
    """The same grid run without interruption."""
    root, environ = env
    proc = run_cli(["run", str(root / "tiny.yaml"), "--out", str(root / "whole")], environ)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    return root / "whole", log


def test_grid_run_writes_results_and_reports(reference):
    out, log = reference
    rows = metrics(out)
    assert [r["defense"] for r in rows] == ["clean", "none", "clean-fft", "mb-defense"]
    assert {r["model"] for r in rows} == {"embedded-smoke"}
    assert rows[1]["asr"] >= 0.9 and rows[3]["asr"] < rows[1]["asr"]
    assert log.count("fine-tuning the base") == 3   # clean, attacked (shared), MB stage 1
    assert "[4/4 cells]" in log
    for name in ("report.md", "report.html", "results.csv"):
        assert (out / name).is_file()


def test_killed_run_resumes_without_redoing_finished_stages(env, reference):
    root, environ = env
    out = root / "resumed"
    args = ["run", str(root / "tiny.yaml"), "--out", str(out)]
    proc = run_cli(args, environ)
    seen = []
    for line in proc.stdout:  # kill it in the middle of the stage-1 fine-tune
        seen.append(line)
        if "fine-tuning the base" in line and "mb-defense stage 1" in line:
            time.sleep(0.5)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    assert "[3/4 cells]" in "".join(seen)        # clean, none and clean-fft were finished

    proc = run_cli(args, environ)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    assert log.count("finished before, loaded") == 3
    assert log.count("fine-tuning the base") == 1 and "mb-defense stage 1" in log
    assert metrics(out) == metrics(reference[0])   # the same results as the whole run

    proc = run_cli(args, environ)                  # a third run computes nothing
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "fine-tuning" not in log and "(cached)" in log
    assert metrics(out) == metrics(reference[0])


def test_run_refuses_a_bad_config_before_any_work(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("attacks: [badnet]\ndefenses: [none, magic]\n")
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "bad.yaml:2: defenses.1: unknown defense 'magic'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
