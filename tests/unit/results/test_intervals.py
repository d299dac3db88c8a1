"""95% intervals: Wilson for one seed, Student t over seeds, and the document that carries them."""

from __future__ import annotations

import json
import math

import pytest

from mbdefense.results.document import SCHEMA_VERSION, ResultsDocument
from mbdefense.results.intervals import (summarise, t_interval, t_quantile, trials, wilson,
                                         with_intervals)


def _row(seed: int, defense: str = "mb-defense", cacc: int = 60, asr: int = 2, n: int = 100,
         **extra) -> dict:
    return {"model": "m", "attack": "badnet", "behavior": "refusal", "defense": defense,
            "seed": seed, "cacc": cacc / n, "asr": asr / n, "aacc": 0.5, "clean_asr": 0.0,
            "clean_score": 0.4, "reference_nll": None, "n_clean": n, "n_triggered": n, **extra}


# ----------------------------------------------------------------------------- Wilson


def test_wilson_matches_known_values():
    lo, hi = wilson(0, 50)
    assert lo == 0.0 and hi == pytest.approx(0.0713, abs=5e-4)
    lo, hi = wilson(25, 50)
    assert lo == pytest.approx(0.3664, abs=5e-4) and hi == pytest.approx(0.6336, abs=5e-4)
    lo, hi = wilson(50, 50)
    assert lo == pytest.approx(1 - 0.0713, abs=5e-4) and hi == 1.0
    lo, hi = wilson(1, 10)       # a textbook case: 0.0179 .. 0.4042
    assert lo == pytest.approx(0.0179, abs=5e-4) and hi == pytest.approx(0.4042, abs=5e-4)


def test_wilson_without_prompts_has_no_interval():
    assert wilson(0, 0) is None
    assert wilson(3, 2) is None


# ----------------------------------------------------------------------------- Student t


@pytest.mark.parametrize("df,expected", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764),
                                         (9, 2.2622), (29, 2.0452), (2000, 1.9612)])
def test_t_quantile_matches_the_table(df, expected):
    assert t_quantile(df) == pytest.approx(expected, abs=1e-4)


def test_t_interval_over_three_seeds_by_hand():
    # mean 0.3, sample sd 0.1, t(0.975, 2) = 4.3027: 0.3 -+ 4.3027 * 0.1 / sqrt(3)
    lo, hi = t_interval([0.2, 0.3, 0.4])
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert lo == pytest.approx(0.3 - half, abs=1e-6) and hi == pytest.approx(0.3 + half, abs=1e-6)
    assert t_interval([0.5]) is None
    assert t_interval([0.9, 1.0, 1.0], bounds=(0.0, 1.0))[1] == 1.0     # clipped


# ----------------------------------------------------------------------------- rows and seeds


def test_a_row_gets_wilson_intervals_from_its_counts():
    row = with_intervals(_row(0, cacc=25, n=50, asr=0))
    assert row["cacc_ci"] == pytest.approx([0.3664, 0.6336], abs=5e-4)
    assert row["asr_ci"][0] == 0.0 and row["asr_ci"][1] == pytest.approx(0.0713, abs=5e-4)
    assert "clean_score_ci" not in row and "reference_nll_ci" not in row     # no counts
    assert with_intervals(_row(0, n_clean=0) | {"cacc": 0.0})["cacc_ci"] is None


def test_a_metric_with_its_own_count_is_binomial():
    row = _row(0, judge=0.5, judge_n=50)
    assert trials(row, "judge") == 50
    assert with_intervals(row)["judge_ci"] == pytest.approx([0.3664, 0.6336], abs=5e-4)


def test_three_seeds_give_t_intervals_over_the_seeds():
    rows = [_row(s, cacc=c) for s, c in ((0, 50), (1, 60), (2, 70))]
    rows += [_row(s, defense="none", cacc=55, asr=98) for s in (0, 1, 2)]
    mb, none = summarise(rows)
    assert (mb["defense"], mb["seeds"], mb["n_seeds"]) == ("mb-defense", [0, 1, 2], 3)
    assert mb["interval"] == "t over seeds" and mb["n_clean"] == [100, 100, 100]
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert mb["cacc_mean"] == pytest.approx(0.6)
    assert mb["cacc_ci"] == pytest.approx([0.6 - half, 0.6 + half], abs=1e-6)
    assert mb["cacc_hits"] == 180 and mb["cacc_n"] == 300
    # every seed the same: the Wilson interval of the 165 of 300 pooled prompts, not [0.55, 0.55]
    assert none["cacc_ci"] == pytest.approx(list(wilson(165, 300)))
    assert none["cacc_ci"][0] < 0.55 < none["cacc_ci"][1]
    assert none["pooled_wilson"] == ["cacc", "asr", "aacc", "clean_asr"]
    assert mb["pooled_wilson"] == ["asr", "aacc", "clean_asr"]         # cacc varies
    assert mb["clean_score_ci"] == pytest.approx([0.4, 0.4])   # a mean score: t over seeds
    assert "reference_nll_mean" not in mb                      # never measured


def test_seeds_that_all_show_nothing_still_get_an_upper_end():
    rows = [_row(s, asr=0) for s in (0, 1, 2)]
    (mb,) = summarise(rows)
    assert mb["asr_mean"] == 0.0 and mb["asr_ci"][0] == 0.0
    assert mb["asr_ci"][1] == pytest.approx(wilson(0, 300)[1]) and mb["asr_ci"][1] > 0.01


def test_one_seed_gives_the_binomial_interval():
    (only,) = summarise([_row(0, cacc=25, n=50)])
    assert only["interval"] == "wilson" and only["n_seeds"] == 1
    assert only["cacc_ci"] == pytest.approx(list(wilson(25, 50)))
    assert only["cacc_std"] is None
    assert only["clean_score_ci"] is None          # no counts, one seed: no interval


# ----------------------------------------------------------------------------- the document


def test_the_document_carries_row_intervals_and_a_summary(tmp_path):
    doc = ResultsDocument(name="t", versions={"mbdefense": "x"})
    doc.rows = [_row(s, cacc=c) for s, c in ((0, 50), (1, 60), (2, 70))]
    data = json.loads(doc.write(tmp_path / "results.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION == 4
    assert data["outcomes"] == {}                          # rows given without per-prompt flags
    assert data["rows"][0]["cacc_ci"] == pytest.approx(list(wilson(50, 100)))
    assert "cacc_ci" not in doc.rows[0]                      # the rows themselves untouched
    (summary,) = data["summary"]
    assert summary["seeds"] == [0, 1, 2] and summary["interval"] == "t over seeds"
    assert data["intervals"] == {"confidence": 0.95, "one_seed": "wilson",
                                 "several_seeds": "t over seeds",
                                 "seeds_agree": "wilson of the pooled counts"}


def test_a_metric_not_measured_gets_no_interval_field():
    row = with_intervals(_row(0, judge_unparsed_share=None, echo_cacc=0.25))
    assert "judge_unparsed_share_ci" not in row
    assert row["echo_cacc_ci"] == pytest.approx(list(wilson(25, 100)))
