"""Reports over one or more runs' ``results.json``: Markdown, self-contained HTML and CSV.

The page is assembled once (:func:`report_blocks`: header with the runs' metadata, runs, the
headline (:mod:`mbdefense.reporting.headline`: each defense against the attacked model, with
95% intervals), paired comparisons (:mod:`mbdefense.reporting.paired`: MB-Defense against
every other row, prompt by prompt, where the results keep per-prompt outcomes), results in
the paper layout with charts, all rows, diagnostics and configuration, samples, versions)
from the tables of :mod:`mbdefense.reporting.build`, then
rendered as Markdown (:func:`markdown_report`) and HTML (:func:`html_report`);
:func:`csv_rows` renders the table of all rows as CSV, :func:`summary_csv` the aggregates over
seeds. :func:`write_report` writes ``report.md``, ``report.html``, ``results.csv`` and
``summary.csv`` atomically.

Each defense keeps one colour across the report's tables and charts
(:mod:`mbdefense.reporting.colours`); the ``clean`` reference row comes first and is marked,
``mb-defense`` is highlighted.

Loading and checking live in :mod:`mbdefense.reporting.documents`, aggregation and the paper
layout in :mod:`mbdefense.reporting.summary`; their public names are re-exported here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from mbdefense.core.errors import ConfigError
from mbdefense.core.io import atomic_write_text
from mbdefense.reporting.build import (columns_of, diagnostics_tables, history_tables,
                                       long_table, pairs_table, paper_table, samples_tables,
                                       with_bounds)
from mbdefense.reporting.charts import bar_chart_svg, heatmap_svg
from mbdefense.reporting.colours import defense_colours
from mbdefense.reporting.documents import (RESULTS_FILE, Combined, as_combined, combine,
                                           is_number, load_results, validate_doc)
from mbdefense.reporting.headline import HEADLINE_NOTE, headline_tables, run_pairs
from mbdefense.reporting.page import (Block, Code, Figure, Figures, Heading, Items, Paragraph,
                                      Preformatted, TableBlock, page_html, page_markdown)
from mbdefense.reporting.paired import PAIRED_NOTE, paired_tables
from mbdefense.reporting.render import table_csv
from mbdefense.reporting.summary import (METRICS, ModelTable, attack_title, format_cell,
                                         interval_of, is_reference, mean_of, paper_tables,
                                         row_label, summary_rows)
from mbdefense.reporting.table import values_table

METRIC_NOTE = ("CACC: clean instructions answered correctly. ASR: triggered instructions showing "
               "the attacker's behaviour. Each cell: the mean over seeds and its 95% confidence "
               "interval [lo, hi]: one seed, the Wilson interval of the counts; several seeds "
               "(their number in brackets), a Student t interval over the per-seed values, or, "
               "where every seed gives the same count, the Wilson interval of the counts "
               "pooled over the seeds. The charts draw the same intervals as whiskers.")
DEFAULT_TITLE = "mbdefense results"
SUMMARY_COLUMNS = ("model", "attack", "behavior", "defense", "n_seeds", "seeds", "interval",
                   "pooled_wilson", "confidence", "n_clean", "n_triggered")
SUMMARY_SUFFIXES = ("_mean", "_ci_lo", "_ci_hi", "_std", "_hits", "_n")

Doc = dict[str, Any]
Row = dict[str, Any]


def report_colours(rows: Sequence[Row]) -> dict[str, str]:
    """The colour of each row label (defense, or ``clean``) for the whole report."""
    return defense_colours(row_label(r) for r in rows)


# ----------------------------------------------------------------------------- charts


def _bar_charts(table: ModelTable, behavior: str, colours: Mapping[str, str]) -> list[Figure]:
    """ASR and CACC bars for one behaviour: one group per attack, one bar per defense."""
    attacks = table.attacks(behavior)
    labels = [lb for lb in table.labels
              if any(table.cell(lb, behavior, a) is not None for a in attacks)]
    groups = [attack_title(a) for a in attacks]
    return [Figure(bar_chart_svg(groups, labels,
                                 [[mean_of(table.cell(lb, behavior, a), metric) for a in attacks]
                                  for lb in labels],
                                 f"{name} · {table.model} · {behavior}", name,
                                 colours=[colours[lb] for lb in labels],
                                 errors=[[interval_of(table.cell(lb, behavior, a), metric)
                                          for a in attacks] for lb in labels]))
            for metric, name in reversed(METRICS)]


def _heatmap(table: ModelTable, colours: Mapping[str, str]) -> Figure:
    values = [[mean_of(table.cell(lb, b, a), "asr") for b, a in table.columns]
              for lb in table.labels]
    cols = [f"{b} · {attack_title(a)}" for b, a in table.columns]
    return Figure(heatmap_svg(values, table.labels, cols,
                              f"ASR (mean over seeds) · {table.model}",
                              row_colours=[colours[lb] for lb in table.labels]))


def _chart_blocks(table: ModelTable, colours: Mapping[str, str]) -> list[Block]:
    blocks: list[Block] = [Figures(_bar_charts(table, b, colours)) for b in table.behaviors()]
    return blocks + [Figures([_heatmap(table, colours)])]


# ----------------------------------------------------------------------------- sections


def results_blocks(rows: Sequence[Row], colours: Mapping[str, str] | None = None, *,
                   charts: bool = True, long: bool = True) -> list[Block]:
    """The paper layout (a table per model, with ``charts``), then (``long``) all rows."""
    rows = list(rows)
    if not rows:
        return [Paragraph(["No result rows."], note=True)]
    colours = dict(colours) if colours is not None else report_colours(rows)
    blocks: list[Block] = [Paragraph([METRIC_NOTE], note=True)]
    for table in paper_tables(rows):
        blocks.append(TableBlock(paper_table(table, colours)))
        blocks += _chart_blocks(table, colours) if charts else []
    if long:
        blocks.append(TableBlock(long_table(rows, colours)))
    return blocks


def paper_table_markdown(rows: Sequence[Row], long_table: bool = True) -> str:
    """The paper's Table 1 layout, one table per model, then (``long_table``) all rows."""
    return page_markdown(results_blocks(rows, charts=False, long=long_table))


def _wall_text(seconds: Any) -> str:
    return f"{seconds:.0f} s" if is_number(seconds) else "unknown"


def _run_title(run: Mapping[str, Any]) -> str:
    """`` (name: description)`` of a grid run, empty when it has neither."""
    text = ": ".join(str(run[k]) for k in ("name", "description") if run.get(k))
    return f" ({text})" if text else ""


def _header_blocks(doc: Combined) -> list[Block]:
    """The runs' metadata, seeds, wall time, scorers and versions, when there is any."""
    pairs = run_pairs(doc)
    return [TableBlock(pairs_table(pairs, header=("run", "value")))] if pairs else []


def headline_blocks(rows: Sequence[Row], colours: Mapping[str, str] | None = None
                    ) -> list[Block]:
    """Each setting's defenses against the attacked model, with intervals and changes."""
    tables = headline_tables(rows, colours)
    if not tables:
        return []
    return [Heading("Headline"), Paragraph(HEADLINE_NOTE, note=True),
            *(TableBlock(t) for t in tables)]


def paired_blocks(doc: Combined, colours: Mapping[str, str] | None = None) -> list[Block]:
    """MB-Defense against every other row of its setting, prompt by prompt (where the results
    keep per-prompt outcomes)."""
    tables = paired_tables(doc["rows"], doc.get("outcomes") or {}, colours)
    if not tables:
        return []
    return [Heading("Paired comparisons"), Paragraph(PAIRED_NOTE, note=True),
            *(TableBlock(t) for t in tables)]


def _runs_blocks(doc: Combined) -> list[Block]:
    items: list[list[Any]] = [[Code(r["source"]), f"{_run_title(r)}: wall time "
                               f"{_wall_text(r['wall_seconds'])}"] for r in doc["runs"]]
    if doc.get("wall_seconds") is not None:
        items.append([f"total wall time: {_wall_text(doc['wall_seconds'])}"])
    return [Heading("Runs"), Items(items)]


def _diagnostics_blocks(doc: Combined) -> list[Block]:
    blocks: list[Block] = [TableBlock(t, collapsed=True) for t in history_tables(doc["runs"])]
    blocks += [TableBlock(t, collapsed=True) for t in diagnostics_tables(doc["runs"])]
    for run in doc["runs"]:
        if run.get("config") not in (None, {}, []):
            text = json.dumps(run["config"], indent=1, ensure_ascii=False, default=str)
            blocks.append(Preformatted(f"config ({run['source']})", text, collapsed=True))
    return [Heading("Diagnostics and configuration"), *blocks] if blocks else []


def _samples_blocks(samples: Mapping[str, Any]) -> list[Block]:
    tables = samples_tables(samples)
    if not tables:
        return []
    return [Heading("Sample generations"), *(TableBlock(t, collapsed=True) for t in tables)]


def _versions_blocks(versions: Mapping[str, str]) -> list[Block]:
    if not versions:
        return []
    return [Heading("Versions"),
            TableBlock(values_table(["package", "version"], versions.items(), text=str))]


def report_blocks(docs: Doc | Sequence[Doc], title: str = DEFAULT_TITLE) -> list[Block]:
    """The report's page, built once for both Markdown and HTML."""
    doc = as_combined(docs)
    colours = report_colours(doc["rows"])
    blocks: list[Block] = [Heading(title, 1), *_header_blocks(doc), *_runs_blocks(doc),
                           *headline_blocks(doc["rows"], colours),
                           *paired_blocks(doc, colours), Heading("Results (paper layout)")]
    blocks += results_blocks(doc["rows"], colours)
    blocks += _diagnostics_blocks(doc) + _samples_blocks(doc["samples"])
    return blocks + _versions_blocks(doc["versions"])


# ----------------------------------------------------------------------------- rendering


def markdown_report(docs: Doc | Sequence[Doc], title: str = DEFAULT_TITLE) -> str:
    """The Markdown report of one or several runs (documents, or a combined document)."""
    return page_markdown(report_blocks(docs, title))


def html_report(docs: Doc | Sequence[Doc], title: str = DEFAULT_TITLE) -> str:
    """A self-contained HTML report (inline CSS and SVG, no external references)."""
    return page_html(title, report_blocks(docs, title))


def csv_rows(rows: Sequence[Row]) -> str:
    """All rows as CSV, in their order: the union of their keys as columns, the standard ones
    first, each binomial metric's 95% Wilson interval as ``m_ci_lo`` and ``m_ci_hi``; strings
    that a spreadsheet would run as formulas are escaped."""
    return table_csv(long_table(list(rows), reference_first=False, bounds=True))


def summary_csv(rows: Sequence[Row]) -> str:
    """The rows aggregated over seeds per (model, attack, behavior, defense) as CSV: seeds,
    interval method, and per metric mean, standard deviation, ``_ci_lo`` / ``_ci_hi`` and the
    summed counts."""
    summaries = with_bounds(summary_rows(rows))
    metrics = [k[:-5] for k in columns_of(summaries) if k.endswith("_mean")]
    names = [n for n in SUMMARY_COLUMNS if any(n in s for s in summaries)]
    names += [f"{m}{suffix}" for m in metrics for suffix in SUMMARY_SUFFIXES
              if any(f"{m}{suffix}" in s for s in summaries)]
    return table_csv(values_table(names, [[s.get(n) for n in names] for s in summaries],
                                  text=lambda v: "" if v is None else str(v)))


def _default_out_dir(paths: Sequence[str | Path]) -> Path:
    if len(paths) != 1:
        raise ConfigError("write_report: several (or no) inputs; give the output folder")
    path = Path(paths[0])
    return path if path.is_dir() else path.parent


def write_report(paths: Sequence[str | Path], out_dir: str | Path | None = None,
                 title: str = DEFAULT_TITLE) -> dict[str, Path]:
    """Write ``report.md``, ``report.html``, ``results.csv`` and ``summary.csv`` (atomically)
    for ``paths``.

    ``out_dir`` defaults to the single input's folder. Returns the paths by kind
    (``markdown``, ``html``, ``csv``, ``summary_csv``). Nothing is written when an input is
    bad.
    """
    paths = list(paths)
    out = Path(out_dir) if out_dir is not None else _default_out_dir(paths)
    doc = combine(load_results(paths))
    blocks = report_blocks(doc, title)
    texts = {"markdown": ("report.md", page_markdown(blocks)),
             "html": ("report.html", page_html(title, blocks)),
             "csv": ("results.csv", csv_rows(doc["rows"])),
             "summary_csv": ("summary.csv", summary_csv(doc["rows"]))}
    return {kind: atomic_write_text(out / name, text) for kind, (name, text) in texts.items()}


__all__ = ["METRIC_NOTE", "RESULTS_FILE", "combine", "csv_rows", "format_cell", "html_report",
           "is_reference", "load_results", "markdown_report", "paper_table_markdown",
           "paper_tables", "report_blocks", "report_colours", "results_blocks", "row_label",
           "summary_csv", "summary_rows", "validate_doc", "write_report"]
