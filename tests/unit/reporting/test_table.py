"""The table model and its renderers: Markdown, HTML, CSV (formula-safe) and text."""

from __future__ import annotations

import csv
import io
import re

import pytest

from mbdefense.reporting import markdown_table, text_table
from mbdefense.reporting.render import (csv_field, md_text, table_csv, table_html,
                                        table_markdown, table_text)
from mbdefense.reporting.table import Cell, Column, Table, values_table


def _grouped() -> Table:
    """Two header groups over four numeric columns, one stub column, two flagged rows."""
    columns = [Column("defense")] + [Column(f"b · {a} {m}", short=m, kind="num")
                                     for a in ("x", "y") for m in ("CACC", "ASR")]
    groups = [[Cell("b", colspan=4)], [Cell("x", colspan=2), Cell("y", colspan=2)]]
    rows = [[Cell("clean", "clean", reference=True, colour="#59a14f")]
            + [Cell(f"0.{i}", i / 10, reference=True) for i in range(4)],
            [Cell("mb-defense", "mb-defense", highlight=True, colour="#e15759")]
            + [Cell("–") for _ in range(4)]]
    return Table(columns, rows, title="m", groups=groups, stub=1)


def test_table_checks_its_shape():
    with pytest.raises(ValueError):
        Table([Column("a"), Column("b")], [[Cell("1")]])
    with pytest.raises(ValueError):
        Table([Column("a"), Column("b")], groups=[[Cell("g", colspan=3)]])
    with pytest.raises(ValueError):
        Table([Column("a")], layout="pairs")
    with pytest.raises(ValueError):
        Column("a", kind="bold")
    with pytest.raises(ValueError):
        Cell("x", colspan=0)


def test_markdown_flattens_header_groups_and_bolds_flagged_row_headers():
    lines = table_markdown(_grouped()).splitlines()
    assert lines[0] == "| defense | b · x CACC | b · x ASR | b · y CACC | b · y ASR |"
    assert lines[1] == "|---|---|---|---|---|"
    assert lines[2] == "| **clean** | 0.0 | 0.1 | 0.2 | 0.3 |"
    assert lines[3] == "| **mb-defense** | – | – | – | – |"


def test_markdown_escapes_html_pipes_and_newlines():
    table = values_table(["a|b"], [["<b>x</b> | y\nz"]])
    text = table_markdown(table)
    assert "a\\|b" in text and "&lt;b&gt;x&lt;/b&gt; \\| y z" in text
    assert "<b>" not in text
    assert md_text("1\n2") == "1 2"


def test_pairs_render_as_a_list_in_markdown_and_a_table_in_html():
    table = values_table(["key", "value"], [["a.b", 0.5], ["c", "<d>"]], layout="pairs")
    assert table_markdown(table) == "- a.b: 0.500\n- c: &lt;d&gt;"
    assert "<th>key</th><th>value</th>" in table_html(table)


def test_html_has_group_rows_row_headers_classes_and_swatches():
    html = table_html(_grouped())
    assert '<th rowspan="3">defense</th><th colspan="4">b</th>' in html
    assert '<th colspan="2">x</th><th colspan="2">y</th>' in html
    assert "<th>CACC</th><th>ASR</th><th>CACC</th><th>ASR</th>" in html
    assert ('<th class="reference"><span class="swatch" style="background:#59a14f"></span>'
            "clean</th>") in html
    assert '<td class="num reference">0.1</td>' in html
    assert '<th class="highlight"><span class="swatch"' in html
    assert html.count("<tr>") == 3 + 2


def test_html_escapes_and_refuses_odd_colours():
    table = Table([Column("<a>")], [[Cell("<script>x</script>", colour='red" onclick="x')]])
    html = table_html(table)
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;a&gt;" in html
    assert "onclick" not in html and "swatch" not in html


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx",
                                  "=HYPERLINK(\"http://x\")"])
def test_csv_escapes_strings_that_start_a_formula(text):
    assert csv_field(text) == "'" + text


@pytest.mark.parametrize("value,expected", [(-1, "-1"), (-0.5, "-0.5"), (0.25, "0.25"),
                                            (3, "3"), (None, ""), (True, "True"),
                                            ("a=b", "a=b"), ("", ""),
                                            ([-1, 2], "[-1, 2]"),
                                            ({"a": "=x"}, '{"a": "=x"}')])
def test_csv_keeps_numbers_as_numbers(value, expected):
    assert csv_field(value) == expected


def test_csv_writes_raw_values_and_escaped_text():
    table = Table([Column("=label"), Column("value")],
                  [[Cell("=cmd()", "=cmd()"), Cell("-0.500", -0.5)],
                   [Cell("–"), Cell("-2", "-2")]])
    read = list(csv.reader(io.StringIO(table_csv(table))))
    assert read == [["'=label", "value"], ["'=cmd()", "-0.5"], ["–", "'-2"]]


def test_text_renderer_aligns_columns():
    table = values_table(["name", "v"], [["long name", 0.5], ["x", None]])
    assert table_text(table).splitlines() == ["name       v", "---------  -----",
                                              "long name  0.500", "x          –"]


def test_quick_row_tables_for_the_commands():
    rows = [{"model": "m", "cacc": 0.5, "asr": 1}, {"model": "a|b"}]
    text = text_table(rows, ["model", "cacc", "asr"])
    assert text.splitlines()[2].split() == ["m", "0.500", "1"]
    markdown = markdown_table(rows, ["model", "cacc"])
    assert "| a\\|b |  |" in markdown
    assert re.search(r"\| m \| 0\.500 \|", markdown)


def test_the_commands_tables_show_each_metrics_interval():
    rows = [{"defense": "none", "cacc": 0.5, "asr": 0.0, "n_clean": 50, "n_triggered": 50}]
    line = text_table(rows, ["defense", "cacc", "asr"]).splitlines()[2]
    assert "0.500 [0.37, 0.63]" in line and "0.000 [0.00, 0.07]" in line
