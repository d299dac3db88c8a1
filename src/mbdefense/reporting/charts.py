"""Hand-written inline SVG charts for the HTML report (no plotting library).

Both functions return a self-contained ``<svg>`` string (``xmlns``, ``width``, ``height`` and
``viewBox`` set, no external references, every text escaped) that can be written into an HTML
page as it is or saved as a ``.svg`` file.

- :func:`bar_chart_svg`: grouped bars, e.g. one group per attack and one bar per defense.
- :func:`heatmap_svg`: a grid of cells on a sequential colour scale, each showing its value.

Both take optional per-series (per-row) colours, so that a report can give each defense the
same colour in every chart (see :mod:`mbdefense.reporting.colours`).
"""

from __future__ import annotations

import math
from html import escape
from typing import Sequence

# Tableau 10: distinguishable, colour-blind friendly enough for a handful of series.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac")

# Sequential scale (light to dark blue), interpolated linearly between the stops.
SCALE = ((0.0, (247, 251, 255)), (0.5, (107, 174, 214)), (1.0, (8, 48, 107)))

FONT = "font-family=\"Helvetica, Arial, sans-serif\""

BAR_WIDTH = 18
BAR_GAP = 2
GROUP_GAP = 18
PLOT_HEIGHT = 200
CELL_WIDTH = 64
CELL_HEIGHT = 28
LABEL_SLANT = 35  # degrees, for long group names under a bar chart


def _text_width(text: str, size: float) -> float:
    """A rough width of ``text`` in pixels (no font metrics available)."""
    return len(text) * size * 0.6


def _num(value: float) -> str:
    """A coordinate, short: ``12.5`` rather than ``12.500000001``."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _svg_open(width: float, height: float, label: str) -> str:
    w, h = _num(width), _num(height)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
            f'viewBox="0 0 {w} {h}" role="img" aria-label="{escape(label)}" {FONT}>')


def _text(x: float, y: float, text: str, *, size: float = 11, anchor: str = "middle",
          extra: str = "") -> str:
    return (f'<text x="{_num(x)}" y="{_num(y)}" font-size="{_num(size)}" '
            f'text-anchor="{anchor}"{extra}>{escape(text)}</text>')


def _check_shape(values: Sequence[Sequence[object]], n_rows: int, n_cols: int,
                 what: str) -> None:
    if len(values) != n_rows or any(len(row) != n_cols for row in values):
        raise ValueError(f"{what}: values must be {n_rows} lists of {n_cols} values")


# ----------------------------------------------------------------------------- bar chart


def _y_axis(left: float, top: float, width: float, y_max: float, y_label: str) -> list[str]:
    """Gridlines, tick labels and the rotated axis label."""
    parts = []
    for i in range(5):
        value = y_max * i / 4
        y = top + PLOT_HEIGHT - PLOT_HEIGHT * i / 4
        parts.append(f'<line x1="{_num(left)}" y1="{_num(y)}" x2="{_num(left + width)}" '
                     f'y2="{_num(y)}" stroke="#ddd" stroke-width="1"/>')
        parts.append(_text(left - 6, y + 4, f"{value:g}", size=10, anchor="end"))
    mid = top + PLOT_HEIGHT / 2
    parts.append(_text(14, mid, y_label, size=11,
                       extra=f' transform="rotate(-90 14 {_num(mid)})"'))
    return parts


def _level(top: float, value: float, y_max: float) -> float:
    """The y coordinate of ``value`` on the axis (clipped to the plot)."""
    share = min(max(value / y_max, 0.0), 1.0) if y_max > 0 else 0.0
    return top + PLOT_HEIGHT - PLOT_HEIGHT * share


def _whisker(x: float, top: float, interval: tuple[float, float], y_max: float) -> list[str]:
    """An interval drawn as a vertical line with short caps, centred on the bar at ``x``."""
    lo, hi = _level(top, interval[0], y_max), _level(top, interval[1], y_max)
    mid, cap = x + BAR_WIDTH / 2, BAR_WIDTH / 4
    lines = [(mid, lo, mid, hi), (mid - cap, lo, mid + cap, lo), (mid - cap, hi, mid + cap, hi)]
    return [f'<line class="whisker" x1="{_num(a)}" y1="{_num(b)}" x2="{_num(c)}" '
            f'y2="{_num(d)}" stroke="#333" stroke-width="1"/>' for a, b, c, d in lines]


def _bar(x: float, top: float, value: float, y_max: float, colour: str, tip: str,
         interval: tuple[float, float] | None = None) -> list[str]:
    """One bar with its tooltip, its interval (a whisker) and its value printed above."""
    y = _level(top, value, y_max)
    if interval is not None:
        tip += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    rect = (f'<rect class="bar" x="{_num(x)}" y="{_num(y)}" width="{BAR_WIDTH}" '
            f'height="{_num(top + PLOT_HEIGHT - y)}" fill="{colour}"><title>{escape(tip)}'
            f'</title></rect>')
    above = min(y, _level(top, interval[1], y_max)) if interval is not None else y
    label = _text(x + BAR_WIDTH / 2, above - 3, f"{value:.2f}", size=8)
    return [rect, *(_whisker(x, top, interval, y_max) if interval is not None else []), label]


def _series_colours(n: int, colours: Sequence[str] | None) -> list[str]:
    """``colours`` as given (checked), or the palette in turn."""
    if colours is None:
        return [PALETTE[i % len(PALETTE)] for i in range(n)]
    if len(colours) != n:
        raise ValueError(f"colours: expected {n} colours, got {len(colours)}")
    return [escape(str(c)) for c in colours]


def _legend(x: float, top: float, series: Sequence[str], colours: Sequence[str]) -> list[str]:
    parts = []
    for i, name in enumerate(series):
        y = top + i * 18
        parts.append(f'<rect class="legend-swatch" x="{_num(x)}" y="{_num(y)}" width="12" '
                     f'height="12" fill="{colours[i]}"/>')
        parts.append(_text(x + 18, y + 10, name, size=11, anchor="start"))
    return parts


def _group_label(x: float, y: float, text: str, slanted: bool) -> str:
    """A group's name under the axis: centred, or slanted (ending at ``x``) when long."""
    if not slanted:
        return _text(x, y, text, size=10)
    return _text(x, y, text, size=10, anchor="end",
                 extra=f' transform="rotate(-{LABEL_SLANT} {_num(x)} {_num(y)})"')


def bar_chart_svg(groups: list[str], series: list[str], values: list[list[float | None]],
                  title: str, y_label: str, y_max: float = 1.0,
                  colours: Sequence[str] | None = None,
                  errors: Sequence[Sequence[tuple[float, float] | None]] | None = None) -> str:
    """Grouped bars: ``values[s][g]`` is series ``s`` in group ``g`` (``None``: no bar).

    Each bar is a ``<rect class="bar">`` with a ``<title>`` tooltip and its value printed above;
    the legend's swatches are ``<rect class="legend-swatch">``. Series ``s`` is drawn in
    ``colours[s]`` (default: the palette in turn); ``errors[s][g]``, when given, is the bar's
    interval ``(lo, hi)`` (``None``: none), drawn as a whisker (``<line class="whisker">``) and
    added to the tooltip. Values above ``y_max`` are drawn at the top of the axis (their
    printed value stays exact). Group names too long to fit under their
    group are written slanted.
    """
    _check_shape(values, len(series), len(groups), "bar_chart_svg")
    if errors is not None:
        _check_shape(errors, len(series), len(groups), "bar_chart_svg errors")
    fills = _series_colours(len(series), colours)
    if y_max <= 0:
        raise ValueError("bar_chart_svg: y_max must be positive")
    group_width = max(len(series), 1) * (BAR_WIDTH + BAR_GAP) - BAR_GAP
    label_widths = [_text_width(g, 10) for g in groups]
    slanted = max(label_widths, default=0) > group_width + GROUP_GAP - 4
    cos, sin = math.cos(math.radians(LABEL_SLANT)), math.sin(math.radians(LABEL_SLANT))
    first_centre = GROUP_GAP + group_width / 2
    left = max(60.0, label_widths[0] * cos - first_centre + 8) if slanted and groups else 60.0
    top = 40.0
    plot_width = max(len(groups) * (group_width + GROUP_GAP) + GROUP_GAP, 120)
    legend_width = 30 + max((_text_width(s, 11) for s in series), default=0)
    below = 14 + (max(label_widths, default=0) * sin if slanted else 12)
    width = left + plot_width + 20 + legend_width
    height = max(top + PLOT_HEIGHT + below + 10, top + 18 * len(series) + 10)
    parts = [_svg_open(width, height, title),
             _text(width / 2, 22, title, size=14, extra=' font-weight="bold"')]
    parts += _y_axis(left, top, plot_width, y_max, y_label)
    base = top + PLOT_HEIGHT
    parts.append(f'<line x1="{_num(left)}" y1="{_num(base)}" x2="{_num(left + plot_width)}" '
                 f'y2="{_num(base)}" stroke="#333" stroke-width="1"/>')
    for g, group in enumerate(groups):
        x0 = left + GROUP_GAP + g * (group_width + GROUP_GAP)
        parts.append(_group_label(x0 + group_width / 2, base + 16, group, slanted))
        for s, name in enumerate(series):
            value = values[s][g]
            if _missing(value):
                continue
            x = x0 + s * (BAR_WIDTH + BAR_GAP)
            tip = f"{name} / {group}: {value:.3f}"
            interval = errors[s][g] if errors is not None else None
            parts += _bar(x, top, float(value), y_max, fills[s], tip,
                          None if interval is None else (float(interval[0]), float(interval[1])))
    if not groups or not series:
        parts.append(_text(left + plot_width / 2, top + PLOT_HEIGHT / 2, "no data"))
    parts += _legend(left + plot_width + 20, top, series, fills)
    parts.append("</svg>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- heatmap


def scale_colour(share: float) -> str:
    """The sequential scale's colour at ``share`` in [0, 1] (clipped), as ``#rrggbb``."""
    share = min(max(share, 0.0), 1.0)
    for (lo, c_lo), (hi, c_hi) in zip(SCALE, SCALE[1:]):
        if share <= hi:
            t = (share - lo) / (hi - lo)
            rgb = (round(a + (b - a) * t) for a, b in zip(c_lo, c_hi))
            return "#" + "".join(f"{c:02x}" for c in rgb)
    return "#" + "".join(f"{c:02x}" for c in SCALE[-1][1])


def _share(value: float, vmin: float, vmax: float) -> float:
    return (value - vmin) / (vmax - vmin) if vmax > vmin else 0.0


def _cell(x: float, y: float, value: float | None, vmin: float, vmax: float,
          tip: str) -> list[str]:
    """One heatmap cell: coloured rectangle, tooltip, and the value printed (``–``: missing)."""
    if _missing(value):
        fill, ink, text = "#eeeeee", "#666", "–"
    else:
        share = _share(float(value), vmin, vmax)
        fill, ink, text = scale_colour(share), "#fff" if share > 0.6 else "#111", f"{value:.3f}"
    rect = (f'<rect class="cell" x="{_num(x)}" y="{_num(y)}" width="{CELL_WIDTH}" '
            f'height="{CELL_HEIGHT}" fill="{fill}" stroke="#fff"><title>{escape(tip)}: '
            f'{escape(text)}</title></rect>')
    label = _text(x + CELL_WIDTH / 2, y + CELL_HEIGHT / 2 + 4, text, size=11,
                  extra=f' fill="{ink}"')
    return [rect, label]


def _scale_legend(x: float, y: float, vmin: float, vmax: float) -> list[str]:
    """Ten steps of the colour scale with ``vmin`` and ``vmax`` written at the ends."""
    parts = []
    for i in range(10):
        parts.append(f'<rect class="scale" x="{_num(x + i * 12)}" y="{_num(y)}" width="12" '
                     f'height="10" fill="{scale_colour((i + 0.5) / 10)}"/>')
    parts.append(_text(x - 4, y + 9, f"{vmin:g}", size=10, anchor="end"))
    parts.append(_text(x + 124, y + 9, f"{vmax:g}", size=10, anchor="start"))
    return parts


def heatmap_svg(values: list[list[float | None]], row_labels: list[str],
                col_labels: list[str], title: str, vmin: float = 0.0,
                vmax: float = 1.0, row_colours: Sequence[str] | None = None) -> str:
    """Cells coloured from ``vmin`` (light) to ``vmax`` (dark), each with its value printed.

    ``values[r][c]`` belongs to ``row_labels[r]`` and ``col_labels[c]``; ``None`` is drawn as a
    grey cell with ``–``. Column labels are written slanted above the grid. ``row_colours``
    adds a swatch (``<rect class="row-swatch">``) before each row label.
    """
    _check_shape(values, len(row_labels), len(col_labels), "heatmap_svg")
    swatches = _series_colours(len(row_labels), row_colours) if row_colours is not None else None
    left = 16 + max((_text_width(r, 11) for r in row_labels), default=0)
    left += 16 if swatches else 0
    # slanted at 40 degrees, a label needs sin(40) of its width above and cos(40) to the right
    longest = max((_text_width(c, 11) for c in col_labels), default=0)
    top = 36 + longest * 0.65 + 10
    grid_w, grid_h = CELL_WIDTH * len(col_labels), CELL_HEIGHT * len(row_labels)
    right = max(longest * 0.77 - CELL_WIDTH / 2, 0) + 16
    width = max(left + grid_w + right, left + 180, _text_width(title, 14) + 20)
    height = top + grid_h + 40
    parts = [_svg_open(width, height, title),
             _text(width / 2, 20, title, size=14, extra=' font-weight="bold"')]
    for c, label in enumerate(col_labels):
        x, y = left + c * CELL_WIDTH + CELL_WIDTH / 2, top - 6
        parts.append(_text(x, y, label, size=11, anchor="start",
                           extra=f' transform="rotate(-40 {_num(x)} {_num(y)})"'))
    for r, row_label in enumerate(row_labels):
        y = top + r * CELL_HEIGHT
        if swatches:
            parts.append(f'<rect class="row-swatch" x="6" y="{_num(y + CELL_HEIGHT / 2 - 5)}" '
                         f'width="10" height="10" fill="{swatches[r]}"/>')
        parts.append(_text(left - 8, y + CELL_HEIGHT / 2 + 4, row_label, size=11, anchor="end"))
        for c, col_label in enumerate(col_labels):
            parts += _cell(left + c * CELL_WIDTH, y, values[r][c], vmin, vmax,
                           f"{row_label} / {col_label}")
    parts += _scale_legend(left + 20, top + grid_h + 16, vmin, vmax)
    parts.append("</svg>")
    return "\n".join(parts)


__all__ = ["bar_chart_svg", "heatmap_svg", "scale_colour"]
