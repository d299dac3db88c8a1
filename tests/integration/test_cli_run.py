"""`mbdefense run`: a grid end to end, shared stages, and resume after a kill."""

import json
import os
import re
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
data: {n_train: 400, n_trusted: 32, n_test: 24}
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
    assert "step/s" in log            # progress reaches a log file too (a line per 30 s)
    # stage2.train given without a description: the stage-2 bars still say what they are
    bars = re.findall(r"running (\S+) after training \.\.\.\s+([a-z0-9 -]+): +\d+%", log)
    assert [d for d, _ in bars] == ["clean-fft", "mb-defense"], bars
    assert {label for _, label in bars} == {"stage 2"}, bars
    for name in ("report.md", "report.html", "results.csv"):
        assert (out / name).is_file()


def test_rows_keep_their_per_prompt_outcomes_for_paired_comparisons(reference):
    out, _ = reference
    doc = json.loads((out / "results.json").read_text())
    assert doc["schema_version"] == 4
    for row in doc["rows"]:
        key = "|".join([row["model"], row["attack"], row["behavior"], row["defense"],
                        f"seed{row['seed']}"])
        flags = doc["outcomes"][key]
        assert set(flags) == {"cacc", "asr", "aacc", "clean_asr"}
        assert len(flags["cacc"]) == len(flags["clean_asr"]) == row["n_clean"]
        assert len(flags["asr"]) == len(flags["aacc"]) == row["n_triggered"]
        for metric, text in flags.items():   # the flags are what the rates count
            assert text.count("1") / len(text) == pytest.approx(row[metric]), (key, metric)
    # the report compares MB-Defense with each other row on the same prompts
    report = (out / "report.md").read_text()
    section = report.split("## Paired comparisons", 1)[1].split("\n## ", 1)[0]
    against_none = next(line for line in section.splitlines() if line.startswith("| none"))
    rows = {r["defense"]: r for r in doc["rows"]}
    asr_gap = rows["mb-defense"]["asr"] - rows["none"]["asr"]
    assert f"{asr_gap:+.3f} [" in against_none


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


def test_a_new_stage2_setting_reuses_the_stage1_model_and_its_scores(env, reference, tmp_path):
    """Trying a stage-2 setting costs its stage 2 and one evaluation: the stage-1 model and
    its scores come from the cache."""
    root, environ = env
    proc = run_cli(["run", str(root / "tiny.yaml"), "--cache-dir", str(reference[0] / "cache"),
                    "--out", str(tmp_path / "m3"), "stage2.margin=3"], environ)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    assert log.count("finished before, loaded") == 4   # 3 cells and the stage-1 scores
    assert "the stage-1 model's scores: finished before" in log
    assert "fine-tuning" not in log and "running mb-defense after training" in log
    before = [line for line in reference[1].splitlines() if "after stage 1: ASR" in line]
    assert before and before == [line for line in log.splitlines()
                                 if "after stage 1: ASR" in line]


def test_run_refuses_a_bad_config_before_any_work(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("attacks: [badnet]\ndefenses: [none, magic]\n")
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "bad.yaml:2: defenses.1: unknown defense 'magic'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_analyze_reuses_the_grid_stages_and_reports_merge_and_heads(env, reference, monkeypatch,
                                                                     capsys):
    root, environ = env
    monkeypatch.setenv("MBDEFENSE_CACHE", environ["MBDEFENSE_CACHE"])
    out = root / "analysis"
    code = main(["analyze", "--config", str(root / "tiny.yaml"), "--cache-dir",
                 str(reference[0] / "cache"), "--out", str(out), "--n", "16"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "fine-tuning the base" not in captured.err      # attacked and stage 1 from the run
    assert captured.err.count("loading the fine-tuned model") == 2
    doc = json.loads((out / "analysis.json").read_text())
    stages = {s["stage"]: s for s in doc["stages"]}
    assert list(stages) == ["attacked", "after stage 1", "after stage 2"]
    attacked, defended = stages["attacked"], stages["after stage 2"]
    # the attacked model's elicitation agrees with the grid's ASR row, and stage 2 lowers it
    assert attacked["cross_elicitation"]["attacker_asr"] >= 0.8
    assert (defended["cross_elicitation"]["attacker_asr"]
            < attacked["cross_elicitation"]["attacker_asr"])
    for stage in doc["stages"]:
        assert [a["trigger"] for a in stage["attention"]][1:] == ["word:mn", "word:bb"]
        for a in stage["attention"]:
            assert 0 <= a["n_poisoned"] <= a["layers"] * a["heads"] and a["n_inputs"] > 0
    html = (out / "analysis.html").read_text()
    assert "<svg" in html and "poisoned" in (out / "analysis.md").read_text().lower()
    assert "after stage 2" in captured.out


def test_report_combines_runs_and_refuses_a_bad_one(reference, tmp_path, capsys):
    out = tmp_path / "combined"
    assert main(["report", str(reference[0]), str(reference[0] / "results.json"),
                 "--out", str(out)]) == 0
    csv_text = (out / "results.csv").read_text()
    assert csv_text.count("\n") == 1 + 4       # header + the 4 rows (duplicates merged)
    assert "<svg" in (out / "report.html").read_text()
    assert "| mb-defense |" in (out / "report.md").read_text()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text('{"rows": [{"model": "m"}]}')
    assert main(["report", str(bad)]) == 2
    assert "results.json" in capsys.readouterr().err
    assert not (bad / "report.md").exists()
