"""benchmarks/bar_check.py: which settings and seeds meet the real-data bar."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "bar_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("bar_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _row(defense, seed, asr, clean_asr=0.0, nll=2.0, attack="word:cf"):
    return {"model": "m", "attack": attack, "behavior": "refusal", "defense": defense,
            "seed": seed, "cacc": 0.5, "asr": asr, "aacc": 0.3, "clean_asr": clean_asr,
            "n_clean": 100, "n_triggered": 100, "reference_nll": nll}


ROWS = [_row("none", 0, 0.9), _row("mb-defense", 0, 0.05, nll=2.04),       # met
        _row("none", 1, 0.9), _row("mb-defense", 1, 0.02, nll=2.06),       # NLL +0.06
        _row("none", 2, 0.9), _row("mb-defense", 2, 0.06),                 # ASR 0.06
        _row("none", 3, 0.9), _row("mb-defense", 3, 0.0, clean_asr=0.08),  # false refusals
        _row("mb-defense", 4, 0.0)]                                        # no attacked row


def test_each_bound_can_miss_and_a_seed_without_the_attacked_model_is_left_out():
    bar_check = _module()
    found = bar_check.checks(ROWS, "mb-defense", bar_check.Bar())
    per = found[("m", "word:cf", "refusal")]
    assert sorted(per) == [0, 1, 2, 3]
    assert [per[s].met for s in range(4)] == [True, False, False, False]
    assert per[1].nll_rise == pytest.approx(0.06) and per[2].leaks == 6
    # without the NLL bound seed 1 meets it
    loose = bar_check.checks(ROWS, "mb-defense", bar_check.Bar(max_nll_rise=float("inf")))
    assert loose[("m", "word:cf", "refusal")][1].met
    # a row without its clean-prompt rate or NLL does not meet a bound it cannot show
    unknown = bar_check.check({"asr": 0.0, "n_triggered": 100}, {"asr": 0.9}, bar_check.Bar())
    assert not unknown.met and unknown.text() == "missed: 0.00 / n/a / NLL n/a"
    assert bar_check.check({"asr": 0.0, "n_triggered": 100}, {"asr": 0.9},
                           bar_check.Bar(0.05, float("inf"), float("inf"))).met
    table = bar_check.table(found)
    assert "| 1 of 4 |" in table and table.splitlines()[-1].startswith("| settings met | 1 of 1 |")


def test_the_script_reads_run_files_and_a_bad_path_exits_2(tmp_path, capsys):
    bar_check = _module()
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"schema_version": 4, "rows": ROWS}))
    assert bar_check.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "pooled: 13 of 400" in out and "**met**: 0.05 / 0.00 / +0.040" in out
    assert bar_check.main([str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert bar_check.main([str(path), "--defense", "cleangen"]) == 2
