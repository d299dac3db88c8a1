"""A run killed at any stage resumes to the same results, and SIGTERM ends a run like Ctrl-C.

``mbdefense run`` runs a tiny grid in a subprocess. The slow test kills it (SIGKILL) at the
start of each stage in turn, found from its log lines (a fine-tune starting, a fine-tuned
model being saved, the stage-1 check done, stage 2 starting, the final evaluation, a cell
finished), re-running after every kill; the last run must finish with the results of an
uninterrupted run, reuse everything finished before, and leave no temporaries in the cache.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

TINY = """\
name: tiny
models: [embedded-smoke]
attacks: [badnet]
behaviors: [refusal]
defenses: [clean, none, mb-defense]
data: {n_train: 200, n_trusted: 32, n_test: 16}
base: {n_per_pool: 200}
finetune: {epochs: 1}
stage1: {triggers: [mn, bb], min_per_trigger: 16}
stage2: {train: {epochs: 1}}
implant_prompts: 16
"""
METRICS = ("model", "attack", "behavior", "defense", "seed", "cacc", "asr", "aacc",
           "clean_asr", "n_clean", "n_triggered")
CELLS = ("clean reference", "none", "mb-defense")

#: Log lines that start a stage: (pattern, the stage's name; {0} is the pattern's group).
STAGE_STARTS = (
    (r"fine-tuning the base on \d+ examples \((.*)\)", "fine-tune: {0}"),
    (r"^  done in \d+s, final loss", "save: {last}"),
    (r"after stage 1: implant rates", "save: stage-1 check"),
    (r"running (\S+) after training", "stage 2: {0}"),
    (r"after stage 1: ASR", "final evaluation"),
    (r"\[(\d+)/\d+ cells\]", "after cell {0}"),
)


def stage_start(line: str, last: dict[str, str]) -> str | None:
    for pattern, name in STAGE_STARTS:
        match = re.search(pattern, line)
        if match:
            stage = name.format(*match.groups(), last=last.get("fine-tune", ""))
            if stage.startswith("fine-tune: "):
                last["fine-tune"] = stage
            return stage
    return None


def temporaries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.endswith((".tmp", ".old")))


@pytest.fixture()
def grid(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    env = dict(os.environ, MBDEFENSE_CACHE=str(tmp_path / "base-cache"), OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    return tmp_path, env


def start(root: Path, out: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mbdefense.cli", "run",
                             str(root / "tiny.yaml"), "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def results(out: Path) -> tuple[list[dict], dict]:
    """The rows (timings left out) and the generated samples of a finished run."""
    doc = json.loads((out / "results.json").read_text())
    rows = [{k: v for k, v in r.items() if "seconds" not in k} for r in doc["rows"]]
    assert all(set(METRICS) <= set(r) for r in rows)
    return rows, doc["samples"]


def test_sigterm_ends_a_run_like_ctrl_c_and_removes_its_temporaries(grid):
    root, env = grid
    out = root / "out"
    proc = start(root, out, env)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("  done in"):    # the first fine-tuned model is being saved
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=120)
    log = "".join(seen) + rest
    assert proc.returncode == 130, log
    assert log.rstrip().splitlines()[-1] == "mbdefense: interrupted"
    assert "Traceback" not in log
    assert not temporaries(out) and not temporaries(root / "base-cache")


@pytest.mark.slow
def test_a_run_killed_at_the_start_of_each_stage_resumes_to_the_same_results(grid):
    root, env = grid
    reference = start(root, root / "whole", env)
    log, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, log

    out, killed, logs = root / "resumed", [], []
    for attempt in range(30):
        if attempt == 2:   # temporaries a killed writer could have left: removed on start
            (out / "cache" / ".finetune-0123456789abcdef.x1y2.tmp").mkdir()
            (out / "cache" / "cells").mkdir(exist_ok=True)
            (out / "cache" / "cells" / ".0123456789abcdef.json.x1y2.tmp").write_text("{")
        proc, last, stage, lines = start(root, out, env), {}, None, []
        for line in proc.stdout:
            lines.append(line)
            stage = stage_start(line, last)
            if stage is not None and stage not in killed:
                proc.send_signal(signal.SIGKILL)
                killed.append(stage)
                break
        else:
            stage = None
        proc.communicate(timeout=600)
        logs.append("".join(lines))
        if stage is None:
            assert proc.returncode == 0, logs[-1]
            break
        assert proc.returncode == -signal.SIGKILL, logs[-1]
    else:
        pytest.fail(f"still not finished after {len(logs)} runs; killed at {killed}")

    for expected in ("fine-tune: clean reference", "fine-tune: attacked",
                     "fine-tune: attacked + mb-defense stage 1", "save: stage-1 check",
                     "stage 2: mb-defense", "final evaluation", "after cell 1", "after cell 2",
                     "after cell 3"):
        assert expected in killed, (expected, killed)
    for name in ("clean reference", "attacked", "attacked + mb-defense stage 1"):
        assert any(f"save: fine-tune: {name}" == k for k in killed), (name, killed)
    # a cell finished in one run is loaded, never computed again, in every later run
    for i, log in enumerate(logs):
        for cell in CELLS:
            if any(re.search(rf"\[\d+/\d+ cells\] {re.escape(cell)} ", earlier)
                   for earlier in logs[:i]):
                assert f"{cell}: finished before, loaded from the cache" in log, (i, cell, log)
    # the last run only loads: every cell was finished by the runs before it
    assert "fine-tuning" not in logs[-1] and logs[-1].count("(cached)") == len(CELLS)
    assert results(out) == results(root / "whole")
    assert not temporaries(out)
