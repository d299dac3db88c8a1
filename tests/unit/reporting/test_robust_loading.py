"""Odd results documents: one clear line naming the file and the field, or a sensible report;
never a traceback (anything but an MBDefenseError fails these tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mbdefense.core.errors import DataError, MBDefenseError
from mbdefense.reporting import load_results, write_report

N = 100


def _row(**changes) -> dict:
    row = {"model": "m", "attack": "badnet", "behavior": "refusal", "defense": "mb-defense",
           "cacc": 0.5, "asr": 0.1, "aacc": 0.2, "n_clean": N, "n_triggered": N, "seed": 0}
    row.update(changes)
    return row


def _doc(**changes) -> dict:
    doc = {"rows": [_row(defense="clean"), _row(defense="none", asr=0.9), _row()],
           "samples": {"m|badnet|refusal|mb-defense|0": [
               {"kind": "clean", "prompt": "p", "reference": "r", "answer": "a"}]},
           "diagnostics": {"mb-defense": {"implant": {"word:mn": 0.9}}},
           "config": {"seed": 0}, "versions": {"mbdefense": "0.1.0"}, "wall_seconds": 3.0}
    doc.update(changes)
    return doc


def _write_text(tmp_path: Path, text: str | bytes) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    file = folder / "results.json"
    file.write_bytes(text if isinstance(text, bytes) else text.encode())
    return folder


def _expect_error(folder: Path, field: str | None) -> DataError:
    """write_report fails with one line naming the file (and the field); nothing written."""
    with pytest.raises(MBDefenseError) as err:
        write_report([folder])
    message = str(err.value)
    assert isinstance(err.value, DataError)
    assert "\n" not in message and len(message) < 400
    assert str(folder / "results.json") in message
    if field is not None:
        assert err.value.field == field and f"'{field}'" in message
    assert not (folder / "report.md").exists() and not (folder / "report.html").exists()
    return err.value


def _bad_row(**changes) -> dict:
    doc = _doc()
    doc["rows"][1] = _row(**changes)
    return doc


def _without(name: str) -> dict:
    doc = _doc()
    del doc["rows"][2][name]
    return doc


CASES = {
    "samples-value-not-a-list": (_doc(samples={"h": 5}), "samples"),
    "samples-a-list": (_doc(samples=[1]), "samples"),
    "sample-not-an-object": (_doc(samples={"h": [1]}), "samples"),
    "outcomes-a-list": (_doc(outcomes=[1]), "outcomes"),
    "outcomes-value-not-an-object": (_doc(outcomes={"h": "0101"}), "outcomes"),
    "outcome-flags-not-0-and-1": (_doc(outcomes={"h": {"asr": "01x"}}), "outcomes"),
    "outcome-flags-a-number": (_doc(outcomes={"h": {"asr": 5}}), "outcomes"),
    "seed-a-list": (_bad_row(seed=[1]), "seed"),
    "seed-a-string": (_bad_row(seed="x"), "seed"),
    "seed-a-bool": (_bad_row(seed=True), "seed"),
    "diagnostics-a-number": (_doc(diagnostics=5), "diagnostics"),
    "versions-a-number": (_doc(versions=3), "versions"),
    "metadata-a-list": (_doc(metadata=["a"]), "metadata"),
    "rows-an-object": (_doc(rows={}), "rows"),
    "row-a-number": (_doc(rows=[3]), "rows"),
    "row-missing-cacc": (_without("cacc"), "cacc"),
    "cacc-above-one": (_bad_row(cacc=1.5), "cacc"),
    "cacc-nan": (_bad_row(cacc=float("nan")), "cacc"),
    "asr-infinite": (_bad_row(asr=float("inf")), "asr"),
    "n-clean-negative": (_bad_row(n_clean=-1), "n_clean"),
    "defense-null": (_bad_row(defense=None), "defense"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_odd_field_is_one_line_naming_file_and_field(tmp_path, name):
    doc, field = CASES[name]
    folder = _write_text(tmp_path, json.dumps(doc))      # json writes NaN / Infinity as such
    error = _expect_error(folder, field)
    if name == "samples-value-not-a-list":
        assert "'h'" in str(error)
    if field in ("seed", "cacc", "n_clean"):
        assert "row 1" in str(error) or "row 2" in str(error)


def test_nan_written_by_json_is_read_and_refused(tmp_path):
    folder = _write_text(tmp_path, json.dumps(_bad_row(cacc=float("nan"))))
    assert "NaN" in (folder / "results.json").read_text()
    assert "nan" in str(_expect_error(folder, "cacc"))


def test_not_json(tmp_path):
    error = _expect_error(_write_text(tmp_path, "rows: [1, 2]"), None)
    assert "not valid JSON" in str(error)


def test_empty_file(tmp_path):
    assert "not valid JSON" in str(_expect_error(_write_text(tmp_path, ""), None))


def test_json_nested_100k_deep(tmp_path):
    error = _expect_error(_write_text(tmp_path, "[" * 100_000 + "]" * 100_000), None)
    assert "nested too deeply" in str(error)


def test_a_field_nested_deeper_than_the_renderer_goes(tmp_path):
    deep: object = "x"
    for _ in range(500):
        deep = {"a": deep}
    folder = _write_text(tmp_path, json.dumps(_doc(diagnostics={"d": deep})))
    assert "nested more than" in str(_expect_error(folder, "diagnostics"))


def test_huge_integer_literal(tmp_path):
    text = json.dumps(_doc()).replace('"wall_seconds": 3.0', '"wall_seconds": ' + "9" * 5000)
    assert "not valid JSON" in str(_expect_error(_write_text(tmp_path, text), None))


def test_not_utf8(tmp_path):
    data = json.dumps(_doc(name="café"), ensure_ascii=False).encode("latin-1")
    assert "not UTF-8" in str(_expect_error(_write_text(tmp_path, data), None))


def test_a_byte_order_mark_is_fine(tmp_path):
    folder = _write_text(tmp_path, b"\xef\xbb\xbf" + json.dumps(_doc()).encode())
    assert len(load_results([folder])[0]["rows"]) == 3


def test_top_level_not_an_object(tmp_path):
    assert "JSON object" in str(_expect_error(_write_text(tmp_path, "[1, 2]"), None))


def test_folder_without_results(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(DataError) as err:
        write_report([folder])
    assert str(folder / "results.json") in str(err.value) and "\n" not in str(err.value)


def test_results_json_that_is_a_folder(tmp_path):
    (tmp_path / "run" / "results.json").mkdir(parents=True)
    with pytest.raises(DataError, match="results.json"):
        write_report([tmp_path / "run"])


def test_odd_optional_values_are_rendered_sensibly(tmp_path):
    doc = _doc(name=5, description=None, wall_seconds="soon", config=7, groups="?",
               schema_version=2, runs="not a combined document",
               metadata={"commit": None, "date": "2025-01-02", "gpus": 2, "tags": ["a", "b"]},
               samples={"h": [{"kind": "clean", "prompt": 5, "answer": None, "extra": [1]}],
                        "empty": []},
               diagnostics={"scalar": 0.25, "empty": {}, "list": [1.23456, 2]},
               versions={"torch": None, "mbdefense": {"v": 1}})
    doc["rows"][2].update(judge_ci=[0.41234, 0.58766], note="=1+1", extra_count=-3)
    folder = _write_text(tmp_path, json.dumps(doc))
    paths = write_report([folder])
    markdown = paths["markdown"].read_text()
    html = paths["html"].read_text()
    csv_text = paths["csv"].read_text()
    assert "(5): wall time unknown" in markdown
    assert "- date: 2025-01-02" in markdown and "- gpus: 2" in markdown
    assert "commit" not in markdown                       # null metadata left out
    assert "[0.412, 0.588]" in markdown                   # an interval, compact
    assert "- scalar: 0.25" in markdown and "[1.235, 2]" in markdown
    assert "<td>2025-01-02</td>" in html
    assert "'=1+1" in csv_text and ",-3" in csv_text
    assert "h (1 samples)" in markdown and "empty (0 samples)" in markdown


def test_metadata_of_several_runs_is_merged_in_the_header(tmp_path):
    first = _write_text(tmp_path, json.dumps(_doc(metadata={"date": "d1", "host": "h"})))
    second = tmp_path / "second"
    second.mkdir()
    (second / "results.json").write_text(json.dumps(_doc(metadata={"date": "d2"})))
    markdown = write_report([first, second], tmp_path / "out")["markdown"].read_text()
    header = markdown[:markdown.index("## Runs")]
    assert "- date: d1 / d2" in header and "- host: h" in header


def test_empty_rows_give_a_report_saying_so(tmp_path):
    folder = _write_text(tmp_path, json.dumps({"rows": []}))
    paths = write_report([folder])
    assert "No result rows." in paths["markdown"].read_text()
    assert "No result rows." in paths["html"].read_text()
    assert paths["csv"].read_text() == "\n"
