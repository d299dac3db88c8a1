"""One colour per defense: fixed for known names, distinct and stable for others, and the
same in every table and chart of a report."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from mbdefense.reporting import html_report
from mbdefense.reporting.colours import FIXED, HIGHLIGHT, REFERENCE, defense_colours

SVG = "{http://www.w3.org/2000/svg}"
N = 50


def test_known_defenses_keep_their_colour_whatever_the_order():
    first = defense_colours(["clean", "none", "mb-defense"])
    second = defense_colours(["mb-defense", "onion", "none", "clean"])
    assert first["mb-defense"] == second["mb-defense"] == HIGHLIGHT
    assert first["clean"] == second["clean"] == REFERENCE
    assert first["none"] == second["none"] == FIXED["none"]
    assert len(set(FIXED.values())) == len(FIXED)


def test_other_names_are_stable_and_distinct():
    names = [f"custom-{i}" for i in range(40)] + ["mb-defense", "none"]
    colours = defense_colours(names)
    assert len(set(colours.values())) == len(names)
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colours.values())
    assert colours["mb-defense"] == HIGHLIGHT
    assert defense_colours(["custom-3"]) == defense_colours(["custom-3"])
    assert list(colours) == list(dict.fromkeys(names))


def _row(defense: str, behavior: str, attack: str, asr: float) -> dict:
    return {"model": "m", "attack": attack, "behavior": behavior, "defense": defense,
            "cacc": 0.5, "asr": asr, "aacc": 0.1, "n_clean": N, "n_triggered": N, "seed": 0}


def _svg_parts(html: str) -> list[ET.Element]:
    return [ET.fromstring(svg) for svg in re.findall(r"<svg.*?</svg>", html, re.S)]


def test_each_defense_has_one_colour_across_tables_and_charts():
    # "zeta" first in one behaviour only: the bar charts' series differ between behaviours
    rows = [_row(d, b, a, 0.1 * i) for i, d in enumerate(["clean", "none", "mb-defense"])
            for b in ("refusal", "toxic") for a in ("badnet", "vpi")]
    rows.insert(0, _row("zeta", "toxic", "vpi", 0.3))
    html = html_report([{"rows": rows}])
    expected = defense_colours(["clean", "none", "mb-defense", "zeta"])
    swatches = re.findall(r'<th class="?[a-z ]*"?><span class="swatch" '
                          r'style="background:(#[0-9a-f]{6})"></span>([^<]+)</th>', html)
    swatches += re.findall(r'<th><span class="swatch" style="background:(#[0-9a-f]{6})">'
                           r"</span>([^<]+)</th>", html)
    seen: dict[str, set[str]] = {}
    kinds: dict[str, int] = {"table": len(swatches)}
    for colour, name in swatches:
        seen.setdefault(name, set()).add(colour)
    for svg in _svg_parts(html):
        texts = [e for e in svg.iter() if e.tag in (f"{SVG}rect", f"{SVG}text")]
        for rect, text in zip(texts, texts[1:]):
            if rect.get("class") in ("legend-swatch", "row-swatch") and text.tag == f"{SVG}text":
                seen.setdefault(text.text, set()).add(rect.get("fill"))
                kinds[rect.get("class")] = kinds.get(rect.get("class"), 0) + 1
        for bar in svg.iter(f"{SVG}rect"):
            if bar.get("class") == "bar":
                name = bar.find(f"{SVG}title").text.split(" / ")[0]
                seen.setdefault(name, set()).add(bar.get("fill"))
                kinds["bar"] = kinds.get("bar", 0) + 1
    assert all(kinds.get(k) for k in ("table", "legend-swatch", "row-swatch", "bar")), kinds
    assert set(seen) == set(expected)
    assert {name: colours.pop() for name, colours in seen.items() if len(colours) == 1} \
        == expected
    assert expected["mb-defense"] == HIGHLIGHT
