"""Results tables and reports."""

from mbdefense.reporting.tables import markdown_report, markdown_table, text_table

__all__ = ["markdown_report", "markdown_table", "text_table"]
