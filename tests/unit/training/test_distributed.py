"""Two CPU processes under ``accelerate launch`` (gloo) train exactly as one process does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
WORKER = ROOT / "tests" / "distributed_worker.py"
# Shards are normalised by the whole batch's counts, so only the order of float additions
# differs from one process: losses and weights agree to float32 rounding.
TOLERANCE = 1e-5


def _run(command: list[str], out: Path) -> dict:
    import torch

    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(command + [str(WORKER), "--out", str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distributed")
    single = _run([sys.executable], tmp / "single.pt")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "configs" / "accelerate" / "ddp.yaml"), "--num_processes", "2",
              "--mixed_precision", "no"]
    return single, _run(launch, tmp / "two.pt")


def test_the_launch_really_ran_two_processes(runs):
    single, two = runs
    assert (single["world"], two["world"]) == (1, 2)


def test_same_optimizer_steps_over_the_same_data(runs):
    single, two = runs
    # 37 examples, batches of 8, 2 epochs, 2 micro-batches per step: 10 micro-batches
    assert len(single["sft_losses"]) == len(two["sft_losses"]) == 10
    assert single["sft_steps"] == two["sft_steps"] == 5
    assert single["stage2_steps"] == two["stage2_steps"] > 0


def test_losses_and_weights_match_the_single_process_run(runs):
    single, two = runs
    assert two["sft_losses"] == pytest.approx(single["sft_losses"], abs=TOLERANCE)
    assert two["stage2_eval"] == pytest.approx(single["stage2_eval"], abs=TOLERANCE)
    assert single["sft_losses"][-1] < single["sft_losses"][0]     # it did train
    for name, value in single["state"].items():
        assert (two["state"][name] - value).abs().max().item() < TOLERANCE, name
