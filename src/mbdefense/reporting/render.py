"""Thin renderers of a :class:`~mbdefense.reporting.table.Table`: Markdown, HTML, CSV and text.

Each renderer only escapes and lays out what the table holds; what is shown is decided once,
when the table is built.

- :func:`table_markdown`: a pipe table (text HTML-escaped, pipes escaped, one line per cell);
  row-header cells of the highlighted or reference rows in bold; a ``pairs`` table as a list.
- :func:`table_html`: ``<table>`` with header groups (``colspan``), row headers as ``<th>``,
  ``reference`` / ``highlight`` / ``num`` / ``text`` classes and colour swatches.
- :func:`table_csv`: the raw values (numbers as numbers, objects as JSON); strings that a
  spreadsheet would read as a formula are escaped (see :func:`csv_field`).
- :func:`table_text`: aligned plain text for a terminal.
"""

from __future__ import annotations

import json
import re
from html import escape
from typing import Any, Sequence

from mbdefense.reporting.table import Cell, Column, Table

# A spreadsheet reads a cell starting with one of these as a formula (or a formula's start).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")


# ----------------------------------------------------------------------------- Markdown


def md_text(value: Any) -> str:
    """Text safe in Markdown (and in a table cell): HTML escaped, pipes escaped, one line."""
    text = escape(str(value), quote=False).replace("|", "\\|")
    return " ".join(text.splitlines())


def _md_cell(cell: Cell, row_header: bool) -> str:
    text = md_text(cell.text)
    if row_header and text and (cell.reference or cell.highlight):
        return f"**{text}**"
    return text


def table_markdown(table: Table) -> str:
    """The table as Markdown; a ``pairs`` table as ``- key: value`` lines."""
    if table.layout == "pairs":
        return "\n".join(f"- {md_text(key.text)}: {md_text(value.text)}"
                         for key, value in table.rows)
    if not table.columns:
        return ""
    lines = ["| " + " | ".join(md_text(c.label) for c in table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    for row in table.rows:
        cells = [_md_cell(cell, i < table.stub) for i, cell in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- HTML


def _swatch(colour: str | None) -> str:
    if colour is None or not _COLOUR.fullmatch(colour):
        return ""
    return f'<span class="swatch" style="background:{colour}"></span>'


def _classes(cell: Cell, column: Column) -> str:
    names = [column.kind] if column.kind else []
    names += [name for name in ("reference", "highlight") if getattr(cell, name)]
    return f' class="{" ".join(names)}"' if names else ""


def _body_cell(cell: Cell, column: Column, row_header: bool) -> str:
    tag = "th" if row_header else "td"
    return f"<{tag}{_classes(cell, column)}>{_swatch(cell.colour)}{escape(cell.text)}</{tag}>"


def _span(cell: Cell) -> str:
    return f' colspan="{cell.colspan}"' if cell.colspan > 1 else ""


def _thead(table: Table) -> str:
    if not table.groups:
        return "<tr>" + "".join(f"<th>{escape(c.label)}</th>" for c in table.columns) + "</tr>"
    depth = len(table.groups) + 1
    stub = "".join(f'<th rowspan="{depth}">{escape(c.label)}</th>'
                   for c in table.columns[:table.stub])
    rows = []
    for n, group in enumerate(table.groups):
        cells = "".join(f"<th{_span(c)}>{escape(c.text)}</th>" for c in group)
        rows.append(f"<tr>{stub if n == 0 else ''}{cells}</tr>")
    leaves = "".join(f"<th>{escape(c.short or c.label)}</th>"
                     for c in table.columns[table.stub:])
    return "".join(rows) + f"<tr>{leaves}</tr>"


def table_html(table: Table) -> str:
    """The table as HTML (everything escaped; colours only as ``#rrggbb``)."""
    lines = [f"<table><thead>{_thead(table)}</thead><tbody>"]
    for row in table.rows:
        cells = "".join(_body_cell(cell, column, i < table.stub)
                        for i, (cell, column) in enumerate(zip(row, table.columns)))
        lines.append(f"<tr>{cells}</tr>")
    return "\n".join(lines + ["</tbody></table>"])


# ----------------------------------------------------------------------------- CSV


def csv_field(value: Any) -> str:
    """A CSV field: numbers as they are (``-0.5`` stays a number), objects as JSON, nothing as
    empty; a string starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a
    leading ``'`` so that a spreadsheet shows it as text instead of running it as a formula."""
    if value is None:
        return ""
    if isinstance(value, (bool, int, float)):
        return str(value)
    if isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, ensure_ascii=False, default=str)
    else:
        text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def _quoted(field: str) -> str:
    """A field quoted when it holds a comma, a quote or a line break (``\r`` included)."""
    if any(char in field for char in ',"\r\n'):
        return '"' + field.replace('"', '""') + '"'
    return field


def _csv_line(fields: Sequence[str]) -> str:
    return ",".join(_quoted(f) for f in fields) + "\n"


def table_csv(table: Table) -> str:
    """The table as CSV: the column labels, then each cell's raw value (its text if none)."""
    lines = [_csv_line([csv_field(c.label) for c in table.columns])]
    lines += [_csv_line([csv_field(c.value if c.value is not None else c.text) for c in row])
              for row in table.rows]
    return "".join(lines)


# ----------------------------------------------------------------------------- text


def table_text(table: Table) -> str:
    """The table as aligned plain text, a dashed line under the header."""
    lines = [table.labels] + [[" ".join(c.text.splitlines()) for c in row] for row in table.rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(table.columns))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


__all__ = ["FORMULA_START", "csv_field", "md_text", "table_csv", "table_html", "table_markdown",
           "table_text"]
