"""Results tables and reports.

- ``documents``: reading, checking and combining ``results.json`` documents;
- ``summary``: aggregates over seeds (means and 95% intervals, see
  :mod:`mbdefense.results.intervals`) and the paper layout;
- ``headline``: the run's metadata and each defense against the attacked model;
- ``table``: the table model (:class:`Table`, :class:`Cell`, :class:`Column`);
- ``build``: the report's tables, built once from results;
- ``render``: Markdown, HTML, CSV and text renderers of a table;
- ``page``: pages as blocks, rendered as Markdown and as self-contained HTML;
- ``report``: the results report's page assembly and :func:`write_report`;
- ``colours``: one colour per defense; ``charts``: inline SVG charts;
- ``tables``: quick tables of row mappings for the commands' output.
"""

from mbdefense.reporting.charts import bar_chart_svg, heatmap_svg
from mbdefense.reporting.colours import defense_colours
from mbdefense.reporting.documents import combine, load_results, validate_doc
from mbdefense.reporting.render import (csv_field, table_csv, table_html, table_markdown,
                                        table_text)
from mbdefense.reporting.report import (csv_rows, html_report, markdown_report,
                                        paper_table_markdown, summary_csv, write_report)
from mbdefense.reporting.summary import format_cell, paper_tables, summary_rows
from mbdefense.reporting.table import Cell, Column, Table
from mbdefense.reporting.tables import markdown_table, text_table

__all__ = ["Cell", "Column", "Table", "bar_chart_svg", "combine", "csv_field", "csv_rows",
           "defense_colours", "format_cell", "heatmap_svg", "html_report", "load_results",
           "markdown_report", "markdown_table", "paper_table_markdown", "paper_tables",
           "summary_csv", "summary_rows", "table_csv", "table_html", "table_markdown", "table_text",
           "text_table", "validate_doc", "write_report"]
