"""Plain result tables (terminal and Markdown) for the commands' output, built on the table
model (:mod:`mbdefense.reporting.table`)."""

from __future__ import annotations

from typing import Any, Sequence

from mbdefense.reporting.render import table_markdown, table_text
from mbdefense.results.intervals import BINOMIAL, row_interval
from mbdefense.reporting.table import Table, values_table

COLUMNS = ("model", "attack", "behavior", "defense", "cacc", "asr", "aacc", "n_clean",
           "n_triggered")


def _text(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _cell(row: dict[str, Any], column: str) -> Any:
    """A row's value; a metric with counts also shows its 95% interval (Wilson)."""
    value = row.get(column, "")
    if column in BINOMIAL and isinstance(value, (int, float)) and not isinstance(value, bool):
        interval = row_interval(row, column)
        if interval is not None:
            return f"{value:.3f} [{interval[0]:.2f}, {interval[1]:.2f}]"
    return value


def rows_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> Table:
    """``rows`` (mappings) as a table of ``columns`` (a missing key shows as empty; a metric
    with its prompt counts in the row shows its 95% interval)."""
    return values_table(columns, ([_cell(row, c) for c in columns] for row in rows),
                        text=_text)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    return table_markdown(rows_table(rows, columns))


def text_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    return table_text(rows_table(rows, columns))


__all__ = ["COLUMNS", "markdown_table", "rows_table", "text_table"]
