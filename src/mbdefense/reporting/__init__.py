"""Results tables and reports."""

from mbdefense.reporting.charts import bar_chart_svg, heatmap_svg
from mbdefense.reporting.report import (
    combine,
    csv_rows,
    html_report,
    load_results,
    markdown_report,
    paper_table_markdown,
    summary_rows,
    write_report,
)
from mbdefense.reporting.tables import markdown_table, text_table

__all__ = ["markdown_report", "markdown_table", "text_table", "bar_chart_svg", "heatmap_svg",
           "combine", "csv_rows", "html_report", "load_results", "paper_table_markdown",
           "summary_rows", "write_report"]
