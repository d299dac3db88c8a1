"""The report's paired comparisons: MB-Defense against each other row, prompt by prompt."""

from __future__ import annotations

from mbdefense.reporting.paired import difference_text, outcome_key, paired_tables
from mbdefense.reporting.report import markdown_report
from mbdefense.results.paired import compare_counts


def _row(defense: str, seed: int, asr_hits: int, n: int = 100) -> dict:
    return {"model": "m", "attack": "style:biblical", "behavior": "toxic", "defense": defense,
            "seed": seed, "cacc": 0.5, "asr": asr_hits / n, "aacc": 0.2, "clean_asr": 0.0,
            "n_clean": n, "n_triggered": n}


def _flags(first: int, hits: int, n: int = 100) -> str:
    """``hits`` ones starting at prompt ``first``."""
    return "".join("1" if first <= i < first + hits else "0" for i in range(n))


def _doc() -> dict:
    """Two seeds: MB-Defense leaks on prompts 0-3 (seed 0) and 0-2 (seed 1), CleanGen on none;
    the attacked model on every prompt. Their clean answers agree everywhere."""
    rows, outcomes = [], {}
    for seed, mb_leaks in ((0, 4), (1, 3)):
        for defense, hits in (("none", 100), ("mb-defense", mb_leaks), ("cleangen", 0)):
            row = _row(defense, seed, hits)
            rows.append(row)
            outcomes[outcome_key(row)] = {"cacc": _flags(0, 50), "asr": _flags(0, hits),
                                          "aacc": _flags(50, 20), "clean_asr": _flags(0, 0)}
    return {"schema_version": 4, "rows": rows, "outcomes": outcomes}


def test_mb_defense_is_compared_with_each_row_on_the_same_prompts_pooled_over_seeds():
    doc = _doc()
    [table] = paired_tables(doc["rows"], doc["outcomes"])
    lines = {line[0].text: [cell.text for cell in line] for line in table.rows}
    assert list(lines) == ["none", "cleangen"]
    assert lines["cleangen"][1:3] == ["0, 1", "200 / 200"]
    # 7 of 200 triggered prompts where only MB-Defense shows the behaviour, none the other way
    expected = compare_counts(200, both=0, only_a=7, only_b=0)
    assert lines["cleangen"][4] == (f"{expected.difference:+.3f} [{expected.low:+.3f}, "
                                    f"{expected.high:+.3f}], p {expected.p_value:.3g}")
    assert lines["cleangen"][4].startswith("+0.035 [+0.") and "p 0.0156" in lines["cleangen"][4]
    assert lines["none"][4].startswith("-0.965 [")
    # identical clean answers: no difference, and p 1
    assert lines["cleangen"][3].startswith("+0.000 [-0.") and lines["cleangen"][3].endswith("p 1")


def test_the_section_appears_only_where_outcomes_were_kept():
    doc = _doc()
    assert "## Paired comparisons" in markdown_report(doc)
    old = {"rows": doc["rows"]}                       # schema 3 and older: no outcomes
    assert "Paired comparisons" not in markdown_report(old)
    # a seed whose rows lack outcomes is left out, not guessed
    partial = dict(doc, outcomes={k: v for k, v in doc["outcomes"].items() if "seed1" not in k})
    [table] = paired_tables(partial["rows"], partial["outcomes"])
    assert table.rows[1][1].text == "0" and table.rows[1][2].text == "100 / 100"


def _setting(doc: dict, attack: str) -> dict:
    """``doc``'s rows and outcomes moved to another attack (another setting)."""
    rows = [dict(r, attack=attack) for r in doc["rows"]]
    outcomes = {outcome_key(new): doc["outcomes"][outcome_key(old)]
                for old, new in zip(doc["rows"], rows)}
    return {"rows": rows, "outcomes": outcomes}


def test_several_settings_get_one_more_table_pooled_over_all_of_them():
    first = _doc()
    second = _setting(_doc(), "word:cf")
    # in the second setting MB-Defense has no outcomes for seed 1: that seed is left out there
    del second["outcomes"][outcome_key(second["rows"][4])]
    rows = first["rows"] + second["rows"]
    tables = paired_tables(rows, {**first["outcomes"], **second["outcomes"]})
    assert len(tables) == 3 and tables[-1].title == "over every setting, pooled"
    lines = {line[0].text: [cell.text for cell in line] for line in tables[-1].rows}
    assert list(lines) == ["none", "cleangen"]
    assert lines["cleangen"][1:3] == ["2 of 2", "300 / 300"]
    # 7 leaks only under MB-Defense in the first setting, 4 in the second (seed 0 alone)
    expected = compare_counts(300, both=0, only_a=11, only_b=0)
    assert lines["cleangen"][4] == (f"{expected.difference:+.3f} [{expected.low:+.3f}, "
                                    f"{expected.high:+.3f}], p {expected.p_value:.3g}")
    # a p-value below a float is said so, not printed as 0
    assert difference_text(compare_counts(2000, both=0, only_a=0, only_b=1500)).endswith(
        "p < 1e-300")
    # one setting alone gets no pooled table
    assert len(paired_tables(first["rows"], first["outcomes"])) == 1
