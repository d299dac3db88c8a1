"""The table model behind every report: a :class:`Table` of :class:`Cell` objects.

Tables are built once from the results (see :mod:`mbdefense.reporting.build`) and rendered by
the thin renderers of :mod:`mbdefense.reporting.render` (Markdown, HTML, CSV, plain text), so
the Markdown and HTML pages always show the same rows and columns.

- :class:`Column`: a column's full label (the Markdown, CSV and text header), an optional short
  label (the HTML header under grouped header rows) and its kind (``num``: right-aligned
  numbers, ``text``: long wrapped text).
- :class:`Cell`: the display text, the raw value (what CSV writes), flags (``highlight``: the
  proposed method's row, ``reference``: the never-attacked model's row), an optional colour
  swatch and, for header-group cells, a column span.
- :class:`Table`: a title, the columns, optional header groups over the columns (the paper
  layout's behaviour and attack rows above CACC / ASR), ``stub`` leading row-header columns and
  the body rows. ``layout="pairs"`` marks a two-column key/value table (Markdown shows it as a
  list).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

KINDS = ("", "num", "text")
LAYOUTS = ("grid", "pairs")


@dataclass(frozen=True)
class Column:
    """A column: ``label`` in full, ``short`` under header groups (HTML), and its ``kind``."""

    label: str
    short: str | None = None
    kind: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Column: kind must be one of {KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class Cell:
    """A body or header-group cell: display ``text`` and the raw ``value`` behind it."""

    text: str
    value: Any = None
    highlight: bool = False
    reference: bool = False
    colour: str | None = None
    colspan: int = 1

    def __post_init__(self) -> None:
        if self.colspan < 1:
            raise ValueError(f"Cell: colspan must be >= 1, got {self.colspan}")


@dataclass
class Table:
    """Columns, optional header groups over the non-stub columns, and body rows of cells."""

    columns: list[Column]
    rows: list[list[Cell]] = field(default_factory=list)
    title: str = ""
    groups: list[list[Cell]] = field(default_factory=list)
    stub: int = 0
    layout: str = "grid"

    def __post_init__(self) -> None:
        width = len(self.columns)
        if not 0 <= self.stub <= width:
            raise ValueError(f"Table: stub must be in [0, {width}], got {self.stub}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"Table: layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.layout == "pairs" and width != 2:
            raise ValueError("Table: a 'pairs' table has exactly two columns")
        for n, row in enumerate(self.rows):
            if len(row) != width:
                raise ValueError(f"Table {self.title!r}: row {n} has {len(row)} cells, "
                                 f"expected {width}")
        for n, group in enumerate(self.groups):
            if sum(c.colspan for c in group) != width - self.stub:
                raise ValueError(f"Table {self.title!r}: header group {n} spans "
                                 f"{sum(c.colspan for c in group)} columns, expected "
                                 f"{width - self.stub}")

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.columns]


def plain(value: Any) -> str:
    """A value's default display text: ``–`` for none, floats with 3 decimals."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def values_table(columns: Sequence[str | Column], rows: Iterable[Sequence[Any]], *,
                 title: str = "", stub: int = 0, layout: str = "grid",
                 text: Callable[[Any], str] = plain) -> Table:
    """A table of raw values, each cell's display text given by ``text``."""
    cols = [c if isinstance(c, Column) else Column(str(c)) for c in columns]
    body = [[Cell(text(v), v) for v in row] for row in rows]
    return Table(cols, body, title=title, stub=stub, layout=layout)


__all__ = ["Cell", "Column", "Table", "plain", "values_table"]
