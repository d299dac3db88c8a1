"""The rule benchmarks/tune_stage2.py chooses stage 2's settings by (on validation numbers)."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "tune_stage2.py"


def _module():
    spec = importlib.util.spec_from_file_location("tune_stage2", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def col(asr, aacc, drop=0.0, asr_hi=None):
    return {"asr": asr, "aacc": aacc, "cacc_drop": drop,
            "asr_hi": asr if asr_hi is None else asr_hi}


def test_within_the_rule_everywhere_wins_on_answers():
    pick = _module().pick
    said = pick({"a": [col(0.0, 0.3), col(0.0, 0.5)], "b": [col(0.0, 0.5), col(0.0, 0.5)],
                 "c": [col(0.2, 0.9), col(0.0, 0.9)]}, 0.05, 0.05)
    assert said.startswith("picked on validation: b")


def test_the_fallback_counts_columns_then_asr_then_answers():
    pick = _module().pick
    # no candidate is within the rule everywhere (b's CACC drop, c's and d's ASR)
    columns = {"b": [col(0.0, 0.2), col(0.0, 0.3, drop=0.07)],
               "c": [col(0.0, 0.8), col(0.10, 0.8)],
               "d": [col(0.0, 0.9), col(0.30, 0.9)]}
    # every one has 1 of 2 columns: the lower mean ASR wins over the better answers
    assert " picks b: 1 of 2 columns" in pick(columns, 0.05, 0.05)
    # one prompt of ASR (below the two decimals) does not outweigh the answers
    columns = {"b": [col(0.0, 0.2), col(0.0, 0.3, drop=0.07)],
               "e": [col(0.0, 0.4), col(0.003, 0.4, drop=0.07)]}
    assert " picks e: 1 of 2" in pick(columns, 0.05, 0.05)
    assert pick({}, 0.05, 0.05) == "no candidate was measured"
