"""Reports over results documents: loading checks, combining, the paper table, HTML and CSV."""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from pathlib import Path

import pytest

from mbdefense.core.errors import ConfigError, DataError
from mbdefense.results.intervals import wilson
from mbdefense.reporting.report import (
    combine,
    csv_rows,
    html_report,
    load_results,
    markdown_report,
    paper_table_markdown,
    summary_rows,
    write_report,
)

N = 338
BEHAVIORS = ("refusal", "negsentiment")
ATTACKS = ("badnet", "vpi")
DEFENSES = ("clean", "none", "clean-fft", "mb-defense")
EVIL_PROMPT = "say <script>alert('x')</script> | now"


def _hits(seed: int, behavior: str, attack: str, defense: str, metric: str) -> int:
    """Deterministic, distinct success counts per cell."""
    b, d = BEHAVIORS.index(behavior), DEFENSES.index(defense)
    a = ATTACKS.index(attack) if attack in ATTACKS else 2
    base = 200 + 10 * b + 5 * a + d if metric == "cacc" else 20 * d + 7 * a + 3 * b + 1
    return base + 3 * seed


def _row(seed: int, behavior: str, attack: str, defense: str, **extra) -> dict:
    return {"model": "tiny", "attack": attack, "behavior": behavior, "defense": defense,
            "cacc": _hits(seed, behavior, attack, defense, "cacc") / N,
            "asr": _hits(seed, behavior, attack, defense, "asr") / N,
            "aacc": 0.25, "n_clean": N, "n_triggered": N, "seed": seed,
            "clean_asr": 0.01, "clean_score": 0.5, "reference_nll": None,
            "poison_rate": 0.0 if defense == "clean" else 0.2, "train_seconds": 1.5, **extra}


def _doc(seed: int) -> dict:
    rows = [_row(seed, b, a, d) for b in BEHAVIORS for a in ATTACKS for d in DEFENSES]
    samples = {f"tiny|{a}|{b}|{d}|{seed}": [
        {"kind": "clean", "prompt": EVIL_PROMPT, "reference": "ref", "answer": "ans"},
        {"kind": "triggered", "prompt": "cf hello", "reference": "r2", "answer": "I refuse"}]
        for b in BEHAVIORS for a in ATTACKS for d in DEFENSES}
    return {"rows": rows, "samples": samples,
            "diagnostics": {"mb-defense/stage1": {"implant_rates": {"word:mn": 0.8}}},
            "config": {"seed": seed}, "versions": {"mbdefense": "0.1.0", "torch": f"2.{seed}"},
            "wall_seconds": 100.0 + seed}


def _write(folder: Path, doc: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(doc))
    return folder


@pytest.fixture()
def runs(tmp_path: Path) -> list[Path]:
    return [_write(tmp_path / f"seed{s}", _doc(s)) for s in (0, 1)]


@pytest.fixture()
def combined(runs: list[Path]) -> dict:
    return combine(load_results(runs))


# ----------------------------------------------------------------------------- loading


def test_load_results_reads_folders_and_files(runs):
    docs = load_results([runs[0], runs[1] / "results.json"])
    assert [len(d["rows"]) for d in docs] == [16, 16]
    assert docs[0]["source"] == str(runs[0] / "results.json")


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(DataError) as err:
        load_results([tmp_path / "nowhere"])
    assert str(tmp_path / "nowhere") in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        load_results([tmp_path / "empty"])
    assert str(tmp_path / "empty" / "results.json") in str(err.value)


def test_bad_json_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad" / "results.json"
    bad.parent.mkdir()
    bad.write_text('{"rows": [\n  {"model": }\n]}')
    with pytest.raises(DataError) as err:
        load_results([bad.parent])
    assert err.value.path == str(bad) and err.value.line == 2
    assert str(bad) in str(err.value)


def test_missing_rows_is_an_error(tmp_path):
    folder = _write(tmp_path / "r", {"samples": {}})
    with pytest.raises(DataError) as err:
        load_results([folder])
    assert err.value.field == "rows" and "results.json" in str(err.value)


def test_row_missing_a_field_names_field_and_row(tmp_path):
    doc = _doc(0)
    del doc["rows"][3]["n_triggered"]
    with pytest.raises(DataError) as err:
        load_results([_write(tmp_path / "r", doc)])
    message = str(err.value)
    assert "n_triggered" in message and "row 3" in message and "results.json" in message


def test_fraction_above_one_is_rejected_naming_the_field(tmp_path):
    doc = _doc(0)
    doc["rows"][5]["asr"] = 1.2
    with pytest.raises(DataError) as err:
        load_results([_write(tmp_path / "r", doc)])
    assert err.value.field == "asr"
    assert "'asr'" in str(err.value) and "row 5" in str(err.value)
    assert str(tmp_path / "r" / "results.json") in str(err.value)


@pytest.mark.parametrize("name,value", [("cacc", -0.1), ("aacc", "0.5"), ("clean_asr", 3.0),
                                        ("n_clean", -1), ("n_clean", 2.5), ("model", 7)])
def test_other_bad_values_are_rejected(tmp_path, name, value):
    doc = _doc(0)
    doc["rows"][0][name] = value
    with pytest.raises(DataError) as err:
        load_results([_write(tmp_path / "r", doc)])
    assert err.value.field == name


def test_null_reference_nll_is_fine(runs):
    assert load_results(runs[:1])[0]["rows"][0]["reference_nll"] is None


# ----------------------------------------------------------------------------- combining


def test_combine_merges_runs_and_keeps_the_later_duplicate(tmp_path):
    first, second = _doc(0), _doc(0)
    second["rows"] = [dict(second["rows"][2], cacc=0.123)]
    second["samples"] = {"tiny|badnet|refusal|clean-fft|0": [], "new": []}
    out = combine([first, second])
    assert len(out["rows"]) == 16
    assert out["rows"][2]["cacc"] == 0.123
    assert out["samples"]["tiny|badnet|refusal|clean-fft|0"] == [] and "new" in out["samples"]
    assert out["wall_seconds"] == 200.0


def test_combine_of_two_seeds(combined):
    assert len(combined["rows"]) == 32
    assert len(combined["samples"]) == 32
    assert combined["versions"] == {"mbdefense": "0.1.0", "torch": "2.0 / 2.1"}
    assert [r["wall_seconds"] for r in combined["runs"]] == [100.0, 101.0]


# ----------------------------------------------------------------------------- summary


def test_summary_rows_aggregate_over_seeds(combined):
    summary = summary_rows(combined["rows"])
    assert len(summary) == 16
    cell = next(s for s in summary if (s["behavior"], s["attack"], s["defense"])
                == ("negsentiment", "vpi", "mb-defense"))
    asr = [_hits(s, "negsentiment", "vpi", "mb-defense", "asr") / N for s in (0, 1)]
    assert cell["n_seeds"] == 2
    assert cell["asr_mean"] == pytest.approx(statistics.mean(asr))
    assert cell["asr_std"] == pytest.approx(statistics.stdev(asr))
    assert cell["asr_hits"] == sum(_hits(s, "negsentiment", "vpi", "mb-defense", "asr")
                                   for s in (0, 1))
    assert cell["asr_n"] == cell["cacc_n"] == 2 * N
    assert cell["aacc_mean"] == pytest.approx(0.25) and cell["aacc_std"] == pytest.approx(0.0)


def test_summary_of_one_seed_has_no_std(runs):
    summary = summary_rows(load_results(runs[:1])[0]["rows"])
    assert all(s["n_seeds"] == 1 and s["cacc_std"] is None for s in summary)


# ----------------------------------------------------------------------------- paper table


def _table_lines(markdown: str) -> dict[str, list[str]]:
    """The first paper-layout table's body rows, by label, as lists of cells."""
    out: dict[str, list[str]] = {}
    lines = markdown.splitlines()
    skip = next((i for i, line in enumerate(lines) if line == "## Results (paper layout)"), 0)
    start = next(i for i, line in enumerate(lines)
                 if i > skip and line.startswith("| defense"))
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        out[cells[0].strip("*")] = cells[1:]
    return out


def _interval(k: int, n: int = N) -> str:
    lo, hi = wilson(k, n)
    return f"[{lo:.3f}, {hi:.3f}]"


def test_paper_table_one_seed_shows_values_with_wilson_intervals(runs):
    rows = load_results(runs[:1])[0]["rows"]
    markdown = paper_table_markdown(rows)
    header = next(line for line in markdown.splitlines() if line.startswith("| defense"))
    assert header.split(" | ")[1:5] == ["refusal · badnet CACC", "refusal · badnet ASR",
                                        "refusal · vpi CACC", "refusal · vpi ASR"]
    assert "negsentiment · vpi ASR |" in header
    table = _table_lines(markdown)
    assert list(table) == ["clean", "none", "clean-fft", "mb-defense"]
    k = _hits(0, "refusal", "vpi", "clean-fft", "cacc")
    assert table["clean-fft"][2] == f"{k / N:.3f} {_interval(k)}"
    k = _hits(0, "negsentiment", "vpi", "mb-defense", "asr")
    assert table["mb-defense"][7] == f"{k / N:.3f} {_interval(k)}"


def test_paper_table_two_seeds_shows_mean_and_t_interval(combined):
    table = _table_lines(paper_table_markdown(combined["rows"]))
    for label, cells in table.items():
        for i, cell in enumerate(cells):
            behavior, attack = BEHAVIORS[i // 4], ATTACKS[(i // 2) % 2]
            metric = ("cacc", "asr")[i % 2]
            values = [_hits(s, behavior, attack, label, metric) / N for s in (0, 1)]
            mean = statistics.mean(values)
            half = 12.7062 * statistics.stdev(values) / 2 ** 0.5    # t(0.975, 1 df)
            lo, hi = max(0.0, mean - half), min(1.0, mean + half)
            assert cell == f"{mean:.3f} [{lo:.3f}, {hi:.3f}] (2 seeds)", (label, i)


def test_paper_table_puts_the_demo_reference_first(runs):
    doc = load_results(runs[:1])[0]
    rows = [r for r in doc["rows"] if r["defense"] != "clean"]
    rows.append(_row(0, "refusal", "none", "none"))        # the demo's never-attacked model
    table = _table_lines(paper_table_markdown(rows))
    assert list(table)[0] == "clean"
    header = next(line for line in paper_table_markdown(rows).splitlines()
                  if line.startswith("| defense"))
    assert header.split(" | ")[1] == "refusal · no attack CACC"
    assert table["clean"][2] == "–" and table["none"][0] == "–"


def test_paper_table_has_a_long_table_of_all_rows(combined):
    markdown = paper_table_markdown(combined["rows"])
    long = markdown[markdown.index("### All rows"):]
    assert long.count("\n| tiny |") == 32


# ----------------------------------------------------------------------------- reports


def test_html_is_self_contained_and_escaped(combined):
    html = html_report(combined)
    assert html.startswith("<!DOCTYPE html>")
    assert "<svg" in html and "<style>" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html)
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert html.count("<details>") >= 32
    assert "(2 seeds)" in html and "[95% CI]" in html
    assert "2.0 / 2.1" in html and "201 s" in html


def test_html_accepts_a_list_of_documents(runs):
    html = html_report(load_results(runs), title="T <1>")
    assert "<title>T &lt;1&gt;</title>" in html


def test_markdown_report_escapes_and_lists_sections(runs):
    docs = load_results(runs)
    docs[0].update(name="grid-a", description="two seeds")
    markdown = markdown_report(docs)
    assert "(grid-a: two seeds)" in markdown
    assert "implant_rates.word:mn: 0.8" in markdown
    assert "<script>" not in markdown and "&lt;script&gt;" in markdown
    assert "\\| now" in markdown
    for section in ("## Runs", "## Results (paper layout)", "## Diagnostics",
                    "## Sample generations", "## Versions"):
        assert section in markdown


def test_csv_round_trips(combined):
    text = csv_rows(combined["rows"])
    read = list(csv.DictReader(io.StringIO(text)))
    assert len(read) == len(combined["rows"]) == 32
    assert list(read[0])[:5] == ["model", "attack", "behavior", "defense", "seed"]
    bounds = {f"{m}_ci_{end}" for m in ("cacc", "asr", "aacc", "clean_asr")
              for end in ("lo", "hi")}
    for original, back in zip(combined["rows"], read):
        assert set(back) == set(original) | bounds
        assert float(back["asr"]) == original["asr"]
        lo, hi = wilson(round(original["asr"] * N), N)
        assert float(back["asr_ci_lo"]) == pytest.approx(lo)
        assert float(back["asr_ci_hi"]) == pytest.approx(hi)
        assert int(back["n_clean"]) == original["n_clean"]
        assert back["defense"] == original["defense"]
        assert back["reference_nll"] == ""


def test_csv_has_the_union_of_keys():
    rows = [_row(0, "refusal", "badnet", "none"), _row(0, "refusal", "vpi", "none", extra=1)]
    del rows[0]["clean_score"]
    read = list(csv.DictReader(io.StringIO(csv_rows(rows))))
    assert read[0]["extra"] == "" and read[1]["extra"] == "1"
    assert read[0]["clean_score"] == "" and "clean_score" in read[0]


def test_write_report_writes_into_the_single_input_folder(runs):
    paths = write_report([runs[0]])
    assert paths == {"markdown": runs[0] / "report.md", "html": runs[0] / "report.html",
                     "csv": runs[0] / "results.csv", "summary_csv": runs[0] / "summary.csv"}
    assert all(p.is_file() for p in paths.values())
    assert not [p for p in runs[0].iterdir() if p.name.endswith(".tmp")]


def test_write_report_of_several_runs_needs_an_output_folder(runs, tmp_path):
    with pytest.raises(ConfigError):
        write_report(runs)
    paths = write_report(runs, tmp_path / "out")
    assert len(list(csv.DictReader(io.StringIO(paths["csv"].read_text())))) == 32


def test_write_report_reports_a_bad_input(tmp_path):
    folder = _write(tmp_path / "r", _doc(0))
    (folder / "results.json").write_text("not json")
    with pytest.raises(DataError, match="results.json"):
        write_report([folder])
    assert not (folder / "report.html").exists()


# ----------------------------------------------------------------------------- one table model


def _html_paper_rows(html: str) -> dict[str, list[str]]:
    """The first paper table's body rows in the HTML, by label, as lists of cell texts."""
    start = html.index('<th rowspan="3">defense</th>')
    body = html[html.index("<tbody>", start):html.index("</tbody>", start)]
    out = {}
    for row in re.findall(r"<tr>(.*?)</tr>", body):
        cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
        out[cells[0]] = cells[1:]
    return out


def test_markdown_and_html_show_the_same_tables(combined):
    markdown = markdown_report(combined)
    html = html_report(combined)
    assert _html_paper_rows(html) == _table_lines(markdown)
    long_md = markdown[markdown.index("### All rows"):]
    long_html = html[html.index("<h3>All rows</h3>"):]
    assert long_md.count("\n| tiny |") == len(re.findall(r"<tr><td[^>]*>tiny</td>", long_html)) \
        == 32


def test_reference_and_proposed_rows_are_marked(combined):
    html = html_report(combined)
    assert re.search(r'<th class="reference"><span class="swatch"[^>]*></span>clean</th>', html)
    assert re.search(r'<th class="highlight"><span class="swatch" style="background:#e15759">'
                     r"</span>mb-defense</th>", html)
    assert '<td class="num highlight">' in html and '<td class="num reference">' in html
    table = _table_lines(markdown_report(combined))
    markdown = markdown_report(combined)
    assert "| **mb-defense** |" in markdown and "| **clean** |" in markdown
    assert "| mb-defense |" in markdown          # the long table's defense column stays plain
    assert list(table)[0] == "clean"


def test_metadata_and_unknown_fields_are_tolerated_and_shown(tmp_path):
    doc = _doc(0)
    doc.update(schema_version=3, metadata={"date": "2025-05-01", "commit": "abc123",
                                           "command": "mbdefense run <x>"})
    for row in doc["rows"]:
        row["cacc_ci"] = [0.1, 0.2]          # recomputed from the counts
        row["judge_ci"] = [0.3, 0.4]         # no counts: kept as recorded
    paths = write_report([_write(tmp_path / "r", doc)])
    markdown, html = paths["markdown"].read_text(), paths["html"].read_text()
    header = markdown[:markdown.index("## Runs")]
    assert "- commit: abc123" in header and "- command: mbdefense run &lt;x&gt;" in header
    assert "<td>mbdefense run &lt;x&gt;</td>" in html[:html.index("<h2>Runs</h2>")]
    assert "[0.100, 0.200]" not in markdown and "[0.300, 0.400]" in markdown
    assert f"| {_interval(_hits(0, 'refusal', 'badnet', 'clean', 'cacc'))} |" in markdown
    read = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert (read[0]["judge_ci_lo"], read[0]["judge_ci_hi"]) == ("0.3", "0.4")
    assert float(read[0]["cacc_ci_lo"]) != 0.1


def test_csv_escapes_formulas_but_keeps_negative_numbers():
    rows = [_row(0, "refusal", "badnet", "none", note="+cmd", who="@me", tab="\tx", cr="\rx",
                 delta=-0.25, shift=-3, plain="-1")]
    rows[0]["defense"] = "=HYPERLINK(\"x\")"
    read = list(csv.DictReader(io.StringIO(csv_rows(rows))))[0]
    assert read["defense"] == "'=HYPERLINK(\"x\")"
    assert (read["note"], read["who"], read["tab"], read["cr"]) == ("'+cmd", "'@me", "'\tx",
                                                                   "'\rx")
    assert read["delta"] == "-0.25" and read["shift"] == "-3"
    assert read["plain"] == "'-1"                 # a string, however numeric it looks
    assert float(read["asr"]) == rows[0]["asr"]
