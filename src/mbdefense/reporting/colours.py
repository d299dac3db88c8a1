"""One colour per defense, the same in every table and chart of a report.

The defenses of the registry (and the ``clean`` reference) have fixed colours, ``mb-defense``
always the highlighted red; any other name gets a spare colour chosen from a hash of the name
(stable between runs), moved on to the next free one when two names of the same report would
otherwise share it. Those clashes are settled in the names' sorted order, so a defense's colour
depends on the set of names in a report, never on their order.
"""

from __future__ import annotations

import colorsys
import zlib
from typing import Iterable

HIGHLIGHT = "#e15759"     # the proposed method
REFERENCE = "#59a14f"     # the never-attacked model

FIXED = {
    "mb-defense": HIGHLIGHT,
    "clean": REFERENCE,
    "none": "#bab0ac",
    "clean-fft": "#4e79a7",
    "stage2-only": "#f28e2b",
    "aug-fft": "#76b7b2",
    "onion": "#edc948",
    "fine-mixing": "#b07aa1",
    "p2p": "#ff9da7",
}

SPARE = ("#9c755f", "#499894", "#8cd17d", "#d37295", "#a0cbe8", "#ffbe7d", "#79706e",
         "#d4a6c8", "#86bcb6", "#f1ce63", "#fabfd2", "#b6992d")


def _hashed(name: str, attempt: int) -> str:
    """A colour computed from the name, once the spare colours are all taken."""
    hue = (zlib.crc32(f"{name}#{attempt}".encode()) % 360) / 360
    r, g, b = colorsys.hls_to_rgb(hue, 0.5, 0.45)
    return "#" + "".join(f"{round(c * 255):02x}" for c in (r, g, b))


def defense_colours(names: Iterable[str]) -> dict[str, str]:
    """A ``#rrggbb`` colour for each distinct name, all different (names in given order; the
    colours do not depend on that order)."""
    names = list(dict.fromkeys(str(n) for n in names))
    colours = {n: FIXED[n] for n in names if n in FIXED}
    taken = set(colours.values())
    for name in sorted(names):
        if name in colours:
            continue
        start = zlib.crc32(name.encode()) % len(SPARE)
        free = [SPARE[(start + i) % len(SPARE)] for i in range(len(SPARE))]
        colour = next((c for c in free if c not in taken), None)
        for attempt in range(1000):       # (hundreds of defenses in one report: may repeat)
            if colour is not None and colour not in taken:
                break
            colour = _hashed(name, attempt)
        colours[name] = colour
        taken.add(colour)
    return {n: colours[n] for n in names}


__all__ = ["FIXED", "HIGHLIGHT", "REFERENCE", "SPARE", "defense_colours"]
