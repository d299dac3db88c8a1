"""The report's headline and intervals: every metric with its 95% interval (t over seeds, or
Wilson for one seed), the change against the attacked model, the proposed method marked, one
colour per defense whatever the order, the run's metadata, and old documents still rendered."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from pathlib import Path

import pytest

from mbdefense.reporting import html_report, markdown_report, write_report
from mbdefense.reporting.colours import defense_colours
from mbdefense.results.intervals import t_quantile, wilson

N = 100
# successes per (defense, metric) for seed 0; seeds 1 and 2 add 0, +4, -4 to each
BASE = {"clean": (70, 6, 66), "none": (64, 95, 8), "onion": (60, 80, 10),
        "mb-defense": (62, 5, 55)}
SHIFT = {0: 0, 1: 4, 2: -4}


def _row(defense: str, seed: int = 0, **extra) -> dict:
    cacc, asr, aacc = (k + SHIFT[seed] for k in BASE[defense])
    return {"model": "m", "attack": "badnet", "behavior": "refusal", "defense": defense,
            "seed": seed, "cacc": cacc / N, "asr": asr / N, "aacc": aacc / N, "n_clean": N,
            "n_triggered": N, "clean_asr": 0.0, "clean_score": 0.5, **extra}


def _doc(seeds=(0,), defenses=tuple(BASE), **fields) -> dict:
    return {"schema_version": 2, "rows": [_row(d, s) for s in seeds for d in defenses],
            "versions": {"mbdefense": "0.1.0", "torch": "2.13"}, "wall_seconds": 61.0,
            "metadata": {"date": "2025-06-01", "commit": "abc123", "command": "mbdefense demo",
                         "hardware": "x86_64, 2 CPUs"}, **fields}


def _headline(markdown: str) -> dict[str, list[str]]:
    """The first headline table's rows by defense (bold marks stripped)."""
    lines = markdown[markdown.index("## Headline"):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| defense | role"))
    header = [c.strip() for c in lines[start].strip("|").split(" | ")]
    out = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        out[cells[0].strip("*")] = dict(zip(header, cells))
    return out


def _text(interval) -> str:
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def test_one_seed_shows_wilson_intervals_and_changes_against_none():
    table = _headline(markdown_report([_doc()]))
    assert list(table) == ["clean", "none", "onion", "mb-defense"]
    mb = table["mb-defense"]
    assert mb["CACC [95% CI]"] == f"0.620 {_text(wilson(62, N))}"
    assert mb["ASR [95% CI]"] == f"0.050 {_text(wilson(5, N))}"
    assert mb["AACC [95% CI]"] == f"0.550 {_text(wilson(55, N))}"
    assert (mb["Δ CACC"], mb["Δ ASR"], mb["Δ AACC"]) == ("-0.020", "-0.900", "+0.470")
    assert table["none"]["Δ ASR"] == "–" and table["clean"]["Δ ASR"] == "-0.890"
    assert mb["seeds"] == "0" and mb["n (clean / triggered)"] == "100 / 100"


def test_three_seeds_show_t_intervals_over_the_seeds():
    table = _headline(markdown_report([_doc(seeds=(0, 1, 2))]))
    values = [(BASE["onion"][1] + SHIFT[s]) / N for s in (0, 1, 2)]
    mean, sd = statistics.mean(values), statistics.stdev(values)
    half = t_quantile(2) * sd / math.sqrt(3)
    assert half == pytest.approx(4.3027 * 0.04 / math.sqrt(3), abs=1e-4)
    onion = table["onion"]
    assert onion["ASR [95% CI]"] == f"{mean:.3f} {_text((mean - half, mean + half))}"
    assert onion["seeds"] == "0, 1, 2"
    assert onion["Δ ASR"] == f"{mean - 0.95:+.3f}"


def test_the_headline_says_what_clean_and_none_are_and_marks_the_proposed_method():
    markdown = markdown_report([_doc()])
    headline = markdown[markdown.index("## Headline"):markdown.index("## Results")]
    assert "`clean` is the reference" in headline and "never attacked" in headline
    assert "`none` is the attacked model" in headline and "no defense" in headline
    assert "| **mb-defense** | ★ proposed method |" in headline
    assert "| onion | baseline defense |" in headline
    html = html_report([_doc()])
    assert re.search(r'<th class="highlight"><span class="swatch" style="background:#e15759">'
                     r'</span>mb-defense</th><td class="highlight">★ proposed method</td>', html)


def test_old_documents_render_with_intervals_from_their_counts(tmp_path: Path):
    old = {"rows": [_row(d) for d in BASE]}          # schema 1: rows only, no intervals
    old["rows"][3]["n_clean"] = 0                     # no prompts: no interval
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(old))
    paths = write_report([folder])
    table = _headline(paths["markdown"].read_text())
    assert table["onion"]["ASR [95% CI]"] == f"0.800 {_text(wilson(80, N))}"
    assert table["mb-defense"]["CACC [95% CI]"] == "0.620 [n/a]"
    read = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert read[3]["cacc_ci_lo"] == read[3]["cacc_ci_hi"] == ""
    assert float(read[2]["asr_ci_lo"]) == pytest.approx(wilson(80, N)[0])


def test_csv_files_have_the_bound_columns(tmp_path: Path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(_doc(seeds=(0, 1, 2))))
    paths = write_report([folder])
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert len(rows) == 12
    for metric in ("cacc", "asr", "aacc", "clean_asr"):
        assert {f"{metric}_ci_lo", f"{metric}_ci_hi"} <= set(rows[0])
    lo, hi = wilson(BASE["onion"][1], N)
    assert float(rows[2]["asr_ci_lo"]) == pytest.approx(lo)
    assert float(rows[2]["asr_ci_hi"]) == pytest.approx(hi)
    summary = list(csv.DictReader(io.StringIO(paths["summary_csv"].read_text())))
    assert [s["defense"] for s in summary] == list(BASE)
    onion = summary[2]
    assert onion["seeds"] == "[0, 1, 2]" and onion["interval"] == "t over seeds"
    half = t_quantile(2) * 0.04 / math.sqrt(3)
    assert float(onion["asr_ci_lo"]) == pytest.approx(0.8 - half)
    assert float(onion["asr_ci_hi"]) == pytest.approx(0.8 + half)


def test_colours_are_the_same_whatever_the_order_of_the_defenses():
    # custom-0 and custom-14 hash to the same spare colour: who gets it must not depend on order
    first = [_row("clean"), _row("none")]
    first += [dict(_row("onion"), defense=name) for name in ("custom-0", "custom-14", "zeta")]
    second = [first[4], first[3], first[1], first[2], first[0]]
    swatch = re.compile(r'<span class="swatch" style="background:(#[0-9a-f]{6})"></span>'
                        r"([^<]+)</th>")
    pages = [html_report([{"rows": rows}]) for rows in (first, second)]
    colours = [{name: colour for colour, name in swatch.findall(page)} for page in pages]
    assert colours[0] == colours[1]
    assert len(set(colours[0].values())) == 5
    assert defense_colours(["custom-0", "custom-14"]) == defense_colours(["custom-14", "custom-0"])


def test_the_header_carries_the_run_and_whatever_scorer_record_is_present():
    doc = _doc(seeds=(0, 1), scorers={"toxic": {"backend": "classifier", "version": "1.6"}},
               groups=[{"seed": 0, "scorer": "rouge-l"}, "odd"])
    doc["rows"][0]["scorer"] = {"name": "judge", "model": "gpt-x"}
    markdown = markdown_report([doc])
    header = markdown[:markdown.index("## Runs")]
    for line in ("- date: 2025-06-01", "- commit: abc123", "- command: mbdefense demo",
                 "- hardware: x86_64, 2 CPUs", "- seeds: 0, 1 (2 seeds)", "- wall time: 61 s",
                 "- scorers.toxic.backend: classifier", "- scorers.toxic.version: 1.6",
                 "- scorer: rouge-l", "- scorer.name: judge", "- scorer.model: gpt-x",
                 "- versions: mbdefense 0.1.0, torch 2.13"):
        assert line in header, line


def test_bar_charts_draw_the_intervals():
    html = html_report([_doc()])
    lo, hi = wilson(BASE["onion"][1], N)
    assert f"onion / badnet: 0.800 [{lo:.3f}, {hi:.3f}]" in html
    assert html.count('class="whisker"') == 3 * 2 * 4      # 3 lines, 2 charts, 4 defenses


def test_the_honesty_figures_get_intervals_and_columns_when_recorded():
    rows = [_row(d, echo_cacc=0.3, rouge_l=0.25, judge_unparsed=4, judge_unparsed_share=0.02,
                 backends={"scorer": "judge", "rouge": "rouge-score 0.1.2"}) for d in BASE]
    markdown = markdown_report([{"rows": rows}])
    table = _headline(markdown)
    assert table["onion"]["echo CACC (floor) [95% CI]"] == f"0.300 {_text(wilson(30, N))}"
    assert table["onion"]["judge unparsed [95% CI]"] == f"0.020 {_text(wilson(4, 2 * N))}"
    assert table["onion"]["ROUGE-L [95% CI]"] == "0.250 [n/a]"     # a mean score, one seed
    assert "- backends.scorer: judge" in markdown and "- backends.rouge: rouge-score 0.1.2" \
        in markdown
    assert "ROUGE-L [95% CI]" not in _headline(markdown_report([_doc()]))["onion"]
