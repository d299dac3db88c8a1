"""Reports over one or more runs' ``results.json``: Markdown, self-contained HTML and CSV.

A results document (``DIR/results.json``) holds ``rows`` (one per evaluated model: ``model``,
``attack``, ``behavior``, ``defense``, ``cacc``, ``asr``, ``aacc``, ``n_clean``,
``n_triggered``, ``seed``, often more), ``samples`` (generations per cell, keyed by an opaque
heading), ``diagnostics``, ``config``, ``versions`` and ``wall_seconds``.

- :func:`load_results` reads and checks documents (a :class:`DataError` names the file, the row
  and the field at fault);
- :func:`combine` merges several runs (a repeated ``(model, attack, behavior, defense, seed)``
  row keeps the later run's values);
- :func:`summary_rows` aggregates over seeds; :func:`paper_table_markdown` lays results out as
  the paper's Table 1 (one table per model, defenses down, behaviour / attack / CACC-ASR
  across);
- :func:`markdown_report`, :func:`html_report` and :func:`csv_rows` render, and
  :func:`write_report` writes ``report.md``, ``report.html`` and ``results.csv`` atomically.

The reference row of a never-attacked model (defense ``clean``, or attack and defense ``none``)
is labelled ``clean`` and shown first.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mbdefense.comparison import CLEAN_REFERENCE as REFERENCE_LABEL
from mbdefense.core.errors import ConfigError, DataError
from mbdefense.core.io import atomic_write_text
from mbdefense.reporting.charts import bar_chart_svg, heatmap_svg

RESULTS_FILE = "results.json"
REQUIRED = ("model", "attack", "behavior", "defense", "cacc", "asr", "aacc", "n_clean",
            "n_triggered", "seed")
NAMES = ("model", "attack", "behavior", "defense")
FRACTIONS = ("cacc", "asr", "aacc")
OPTIONAL_FRACTIONS = ("clean_asr", "poison_rate")
COUNTS = ("n_clean", "n_triggered")
KEY = ("model", "attack", "behavior", "defense", "seed")
STANDARD = ("model", "attack", "behavior", "defense", "seed", "cacc", "asr", "aacc", "n_clean",
            "n_triggered", "clean_asr", "clean_score", "reference_nll", "poison_rate",
            "train_seconds")
SAMPLE_FIELDS = ("kind", "prompt", "reference", "answer")
METRIC_NOTE = ("CACC: clean instructions answered correctly. ASR: triggered instructions showing "
               "the attacker's behaviour. One seed: fraction (successes/total); several seeds: "
               "mean ± sample standard deviation over seeds (n = number of seeds).")

Doc = dict[str, Any]
Row = dict[str, Any]


# ----------------------------------------------------------------------------- loading


def _results_file(path: str | Path) -> Path:
    """``path/results.json`` for a run folder, ``path`` itself for a file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such run folder or {RESULTS_FILE} file", path=str(path))
    return path / RESULTS_FILE if path.is_dir() else path


def _read_json(file: Path) -> Any:
    if not file.is_file():
        raise DataError(f"no {RESULTS_FILE} in the run folder", path=str(file))
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read: {exc}", path=str(file)) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc.msg} (column {exc.colno})", path=str(file),
                        line=exc.lineno) from exc


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _check_fraction(row: Row, name: str, where: str, source: str) -> None:
    value = row[name]
    if not _is_number(value):
        raise DataError(f"{where}: expected a number in [0, 1], got {value!r}", path=source,
                        field=name)
    if not 0.0 <= value <= 1.0:
        raise DataError(f"{where}: expected a fraction in [0, 1], got {value!r}", path=source,
                        field=name)


def _check_row(row: Any, index: int, source: str) -> None:
    where = f"row {index}"
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}", path=source,
                        field="rows")
    for name in REQUIRED:
        if name not in row:
            raise DataError(f"{where}: missing", path=source, field=name)
    for name in NAMES:
        if not isinstance(row[name], str):
            raise DataError(f"{where}: expected a string, got {row[name]!r}", path=source,
                            field=name)
    for name in FRACTIONS:
        _check_fraction(row, name, where, source)
    for name in OPTIONAL_FRACTIONS:
        if row.get(name) is not None:
            _check_fraction(row, name, where, source)
    for name in COUNTS:
        value = row[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise DataError(f"{where}: expected a count (integer >= 0), got {value!r}",
                            path=source, field=name)


def validate_doc(doc: Any, source: str) -> Doc:
    """``doc`` checked as a results document (``source`` names it in errors)."""
    if not isinstance(doc, dict):
        raise DataError(f"expected a JSON object, got {type(doc).__name__}", path=source)
    if "rows" not in doc:
        raise DataError("missing", path=source, field="rows")
    if not isinstance(doc["rows"], list):
        raise DataError("expected a list of rows", path=source, field="rows")
    for index, row in enumerate(doc["rows"]):
        _check_row(row, index, source)
    samples = doc.get("samples")
    if samples is not None and not isinstance(samples, dict):
        raise DataError("expected an object of sample lists", path=source, field="samples")
    return doc


def load_results(paths: Sequence[str | Path]) -> list[Doc]:
    """The results documents of ``paths`` (run folders or ``results.json`` files), checked.

    Each document gets ``source``: the file it was read from.
    """
    docs = []
    for path in paths:
        file = _results_file(path)
        doc = validate_doc(_read_json(file), str(file))
        docs.append({**doc, "source": str(file)})
    return docs


# ----------------------------------------------------------------------------- combining


def row_key(row: Row) -> tuple[Any, ...]:
    return tuple(row[k] for k in KEY)


def is_reference(row: Mapping[str, Any]) -> bool:
    """The never-attacked model's row: defense ``clean``, or attack and defense ``none``."""
    return row["defense"] == REFERENCE_LABEL or (row["attack"] == "none"
                                                 and row["defense"] == "none")


def row_label(row: Mapping[str, Any]) -> str:
    """The row's label in the paper layout: its defense, or ``clean`` for the reference."""
    return REFERENCE_LABEL if is_reference(row) else str(row["defense"])


def _merge_versions(docs: Sequence[Doc]) -> dict[str, str]:
    seen: dict[str, list[str]] = {}
    for doc in docs:
        for name, version in (doc.get("versions") or {}).items():
            values = seen.setdefault(str(name), [])
            if str(version) not in values:
                values.append(str(version))
    return {name: " / ".join(values) for name, values in seen.items()}


def _run_info(doc: Doc, index: int) -> Doc:
    return {"source": doc.get("source", f"document {index}"),
            "name": doc.get("name"), "description": doc.get("description"),
            "wall_seconds": doc.get("wall_seconds"),
            "diagnostics": doc.get("diagnostics") or {},
            "config": doc.get("config") or {}}


def combine(docs: Sequence[Doc]) -> Doc:
    """One document from several runs.

    ``rows``: every run's rows; a row whose ``(model, attack, behavior, defense, seed)`` was
    seen before replaces the earlier one (in the earlier one's place). ``samples``: merged, a
    later heading replacing an earlier one. ``versions``: per package, the distinct versions
    joined by `` / ``. ``runs``: each run's source, wall time, diagnostics and config.
    ``wall_seconds``: the runs' total (``None`` if none is known).
    """
    rows: dict[tuple[Any, ...], Row] = {}
    samples: dict[str, Any] = {}
    for index, doc in enumerate(docs):
        validate_doc(doc, str(doc.get("source", f"document {index}")))
        for row in doc["rows"]:
            rows[row_key(row)] = row
        samples.update(doc.get("samples") or {})
    runs = [_run_info(doc, i) for i, doc in enumerate(docs)]
    walls = [r["wall_seconds"] for r in runs if _is_number(r["wall_seconds"])]
    return {"rows": list(rows.values()), "samples": samples, "versions": _merge_versions(docs),
            "runs": runs, "wall_seconds": sum(walls) if walls else None}


def _as_combined(docs: Doc | Sequence[Doc]) -> Doc:
    """A combined document from a list of documents, one document, or a combined one."""
    if isinstance(docs, Mapping):
        return dict(docs) if "runs" in docs else combine([dict(docs)])
    return combine(list(docs))


# ----------------------------------------------------------------------------- aggregation


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else None


def _hits(row: Row, metric: str) -> int:
    return round(row[metric] * row["n_triggered" if metric in ("asr", "aacc") else "n_clean"])


def _summarise(group: Sequence[Row]) -> Row:
    first = group[0]
    out: Row = {k: first[k] for k in NAMES}
    out["n_seeds"] = len(group)
    out["seeds"] = [r["seed"] for r in group]
    for metric in FRACTIONS:
        out[f"{metric}_mean"], out[f"{metric}_std"] = _mean_std([r[metric] for r in group])
    for metric, n in (("cacc", "n_clean"), ("asr", "n_triggered"), ("aacc", "n_triggered")):
        out[f"{metric}_hits"] = sum(_hits(r, metric) for r in group)
        out[f"{metric}_n"] = sum(r[n] for r in group)
    return out


def summary_rows(rows: Iterable[Row]) -> list[Row]:
    """Rows aggregated over seeds per ``(model, attack, behavior, defense)``, in order of first
    appearance: ``n_seeds``, ``seeds``, ``{cacc,asr,aacc}_mean`` and ``_std`` (sample standard
    deviation, ``None`` for one seed), and summed counts ``{cacc,asr,aacc}_hits`` / ``_n``.
    """
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in NAMES), []).append(row)
    return [_summarise(group) for group in groups.values()]


def format_cell(summary: Mapping[str, Any] | None, metric: str) -> str:
    """``0.669 (226/338)`` for one seed, ``0.669 ± 0.012 (n=3)`` for several, ``–`` for none."""
    if summary is None:
        return "–"
    mean, std = summary[f"{metric}_mean"], summary[f"{metric}_std"]
    if summary["n_seeds"] == 1:
        return f"{mean:.3f} ({summary[f'{metric}_hits']}/{summary[f'{metric}_n']})"
    return f"{mean:.3f} ± {std:.3f} (n={summary['n_seeds']})"


# ----------------------------------------------------------------------------- paper layout


@dataclass
class ModelTable:
    """One model's Table 1: ``labels`` down, ``columns`` (behaviour, attack) across."""

    model: str
    labels: list[str] = field(default_factory=list)
    columns: list[tuple[str, str]] = field(default_factory=list)
    cells: dict[tuple[str, str, str], Row] = field(default_factory=dict)

    def cell(self, label: str, behavior: str, attack: str) -> Row | None:
        return self.cells.get((label, behavior, attack))

    def behaviors(self) -> list[str]:
        return list(dict.fromkeys(b for b, _ in self.columns))

    def attacks(self, behavior: str) -> list[str]:
        return [a for b, a in self.columns if b == behavior]


def _reference_first(items: Iterable[str], reference: str = REFERENCE_LABEL) -> list[str]:
    items = list(dict.fromkeys(items))
    return sorted(items, key=lambda item: item != reference)


def _columns(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """(behaviour, attack) in order of first appearance; a behaviour's ``none`` attack first."""
    by_behavior: dict[str, list[str]] = {}
    for row in rows:
        by_behavior.setdefault(row["behavior"], []).append(row["attack"])
    return [(b, a) for b, attacks in by_behavior.items()
            for a in _reference_first(attacks, "none")]


def paper_tables(rows: Sequence[Row]) -> list[ModelTable]:
    """The paper layout of ``rows``, one :class:`ModelTable` per model (first-appearance order)."""
    tables: dict[str, ModelTable] = {}
    summaries = summary_rows(rows)
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        table = ModelTable(model, _reference_first(row_label(r) for r in mine), _columns(mine))
        tables[model] = table
    for s in summaries:
        tables[s["model"]].cells[(row_label(s), s["behavior"], s["attack"])] = s
    return list(tables.values())


def attack_title(attack: str) -> str:
    return "no attack" if attack == "none" else attack


def _md(value: Any) -> str:
    """Text safe in a Markdown table cell (HTML escaped, pipes escaped, one line)."""
    text = escape(str(value), quote=False).replace("|", "\\|")
    return " ".join(text.splitlines())


def _md_table(header: Sequence[str], body: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return lines


def _model_table_markdown(table: ModelTable) -> list[str]:
    header = ["defense"] + [f"{_md(b)} · {_md(attack_title(a))} {m}"
                            for b, a in table.columns for m in ("CACC", "ASR")]
    body = [[f"**{_md(label)}**" if label == REFERENCE_LABEL else _md(label)]
            + [format_cell(table.cell(label, b, a), m)
               for b, a in table.columns for m in ("cacc", "asr")]
            for label in table.labels]
    return [f"### {_md(table.model)}", ""] + _md_table(header, body) + [""]


def _format_value(value: Any, column: str = "") -> str:
    """A cell of the long table: fractions with 3 decimals, other numbers with up to 4."""
    if value is None:
        return ""
    if isinstance(value, float) and column in FRACTIONS + OPTIONAL_FRACTIONS + ("clean_score",):
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def columns_of(rows: Sequence[Row]) -> list[str]:
    """The union of the rows' keys: the standard columns first, then others as they appear."""
    present = dict.fromkeys(k for row in rows for k in row)
    return [k for k in STANDARD if k in present] + [k for k in present if k not in STANDARD]


def _ordered_rows(rows: Sequence[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: not is_reference(r))


def long_table_markdown(rows: Sequence[Row]) -> str:
    """Every row (reference rows first), every column."""
    columns = columns_of(rows)
    body = [[_md(_format_value(r.get(c), c)) for c in columns] for r in _ordered_rows(rows)]
    return "\n".join(_md_table(columns, body))


def paper_table_markdown(rows: Sequence[Row], long_table: bool = True) -> str:
    """The paper's Table 1 layout, one table per model, then (``long_table``) all rows."""
    rows = list(rows)
    parts: list[str] = []
    for table in paper_tables(rows):
        parts += _model_table_markdown(table)
    parts += [METRIC_NOTE, ""]
    if long_table:
        parts += ["### All rows", "", long_table_markdown(rows), ""]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- CSV


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def csv_rows(rows: Sequence[Row]) -> str:
    """All rows as CSV: the union of their keys as columns, the standard ones first."""
    rows = list(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns_of(rows), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return buffer.getvalue()


# ----------------------------------------------------------------------------- Markdown


LIST_TEXT_LIMIT = 600   # longer lists show only their length


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Scalar leaves of nested objects as ``(dotted.path, value)``; a list shows as compact
    JSON (e.g. a stage-2 eval-loss history), or its length when that is long."""
    if isinstance(value, dict):
        out: list[tuple[str, Any]] = []
        for key, item in value.items():
            out += _flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(value, list):
        text = json.dumps(_rounded(value), ensure_ascii=False, default=str)
        return [(prefix, text if len(text) <= LIST_TEXT_LIMIT else f"[{len(value)} entries]")]
    return [(prefix, value)]


def _scalar_text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _wall_text(seconds: Any) -> str:
    return f"{seconds:.0f} s" if _is_number(seconds) else "unknown"


def _run_title(run: Mapping[str, Any]) -> str:
    """`` (name: description)`` of a grid run, empty when it has neither."""
    text = ": ".join(str(run[k]) for k in ("name", "description") if run.get(k))
    return f" ({text})" if text else ""


def _runs_markdown(doc: Doc) -> list[str]:
    lines = ["## Runs", ""]
    lines += [f"- `{_md(r['source'])}`{_md(_run_title(r))}: wall time "
              f"{_wall_text(r['wall_seconds'])}" for r in doc["runs"]]
    if doc.get("wall_seconds") is not None:
        lines.append(f"- total wall time: {_wall_text(doc['wall_seconds'])}")
    return lines + [""]


def _diagnostics_markdown(doc: Doc) -> list[str]:
    lines: list[str] = []
    for run in doc["runs"]:
        for key, value in run["diagnostics"].items():
            leaves = _flatten(value)
            if leaves:
                lines += [f"### {_md(key)} ({_md(run['source'])})", ""]
                lines += [f"- {_md(path)}: {_md(_scalar_text(v))}" for path, v in leaves]
                lines.append("")
    return ["## Diagnostics", ""] + lines if lines else []


def _samples_markdown(samples: Mapping[str, Any]) -> list[str]:
    if not samples:
        return []
    lines = ["## Sample generations", ""]
    for heading, items in samples.items():
        body = [[_md(item.get(k, "")) for k in SAMPLE_FIELDS]
                for item in items if isinstance(item, dict)]
        lines += [f"### {_md(heading)}", ""] + _md_table(SAMPLE_FIELDS, body) + [""]
    return lines


def _versions_markdown(versions: Mapping[str, str]) -> list[str]:
    if not versions:
        return []
    return ["## Versions", ""] + _md_table(["package", "version"], [
        [_md(k), _md(v)] for k, v in versions.items()]) + [""]


def markdown_report(docs: Doc | Sequence[Doc], title: str = "mbdefense results") -> str:
    """The Markdown report of one or several runs (documents, or a combined document)."""
    doc = _as_combined(docs)
    parts = [f"# {_md(title)}", ""] + _runs_markdown(doc)
    parts += ["## Results (paper layout)", "", paper_table_markdown(doc["rows"])]
    parts += _diagnostics_markdown(doc) + _samples_markdown(doc["samples"])
    parts += _versions_markdown(doc["versions"])
    return "\n".join(parts)


# ----------------------------------------------------------------------------- HTML

CSS = """
body { font-family: Helvetica, Arial, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
tr.reference th, tr.reference td { background: #eef6ee; font-weight: bold; }
td.text { white-space: pre-wrap; max-width: 40em; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; margin-bottom: 1em; }
details { margin: 0.3em 0; }
summary { cursor: pointer; }
pre { background: #f7f7f7; padding: 0.5em; overflow-x: auto; font-size: 12px; }
.note { color: #555; font-size: 13px; }
"""


def _h(value: Any) -> str:
    return escape(str(value))


def _html_table(header: Sequence[str], body: Iterable[Sequence[str]]) -> str:
    """A plain table; header and cells are given already escaped."""
    head = "".join(f"<th>{h}</th>" for h in header)
    lines = [f"<table><thead><tr>{head}</tr></thead><tbody>"]
    lines += ["<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body]
    return "\n".join(lines + ["</tbody></table>"])


def _paper_header_html(table: ModelTable) -> str:
    behaviors = "".join(f'<th colspan="{2 * len(table.attacks(b))}">{_h(b)}</th>'
                        for b in table.behaviors())
    attacks = "".join(f'<th colspan="2">{_h(attack_title(a))}</th>' for _, a in table.columns)
    metrics = "<th>CACC</th><th>ASR</th>" * len(table.columns)
    return (f'<thead><tr><th rowspan="3">defense</th>{behaviors}</tr>'
            f"<tr>{attacks}</tr><tr>{metrics}</tr></thead>")


def _paper_table_html(table: ModelTable) -> str:
    lines = ["<table>", _paper_header_html(table), "<tbody>"]
    for label in table.labels:
        cls = ' class="reference"' if label == REFERENCE_LABEL else ""
        cells = "".join(f'<td class="num">{_h(format_cell(table.cell(label, b, a), m))}</td>'
                        for b, a in table.columns for m in ("cacc", "asr"))
        lines.append(f"<tr{cls}><th>{_h(label)}</th>{cells}</tr>")
    return "\n".join(lines + ["</tbody></table>"])


def _mean(summary: Row | None, metric: str) -> float | None:
    return None if summary is None else summary[f"{metric}_mean"]


def _charts_html(table: ModelTable) -> str:
    """ASR and CACC bar charts (defenses grouped by attack) for each of the model's behaviours."""
    parts = []
    for behavior in table.behaviors():
        attacks = table.attacks(behavior)
        labels = [lb for lb in table.labels
                  if any(table.cell(lb, behavior, a) is not None for a in attacks)]
        groups = [attack_title(a) for a in attacks]
        charts = [bar_chart_svg(groups, labels,
                                [[_mean(table.cell(lb, behavior, a), metric) for a in attacks]
                                 for lb in labels],
                                f"{name} · {table.model} · {behavior}", name)
                  for metric, name in (("asr", "ASR"), ("cacc", "CACC"))]
        parts.append('<div class="charts">' + "\n".join(charts) + "</div>")
    return "\n".join(parts)


def _heatmap_html(table: ModelTable) -> str:
    values = [[_mean(table.cell(lb, b, a), "asr") for b, a in table.columns]
              for lb in table.labels]
    cols = [f"{b} · {attack_title(a)}" for b, a in table.columns]
    return heatmap_svg(values, table.labels, cols, f"ASR (mean over seeds) · {table.model}")


def _results_html(doc: Doc) -> list[str]:
    parts = ["<h2>Results (paper layout)</h2>", f'<p class="note">{_h(METRIC_NOTE)}</p>']
    for table in paper_tables(doc["rows"]):
        parts += [f"<h3>{_h(table.model)}</h3>", _paper_table_html(table),
                  _charts_html(table), f'<div class="charts">{_heatmap_html(table)}</div>']
    rows = _ordered_rows(doc["rows"])
    columns = columns_of(rows)
    body = [[_h(_format_value(r.get(c), c)) for c in columns] for r in rows]
    parts += ["<h2>All rows</h2>", _html_table([_h(c) for c in columns], body)]
    return parts


def _samples_html(samples: Mapping[str, Any]) -> list[str]:
    if not samples:
        return []
    parts = ["<h2>Sample generations</h2>"]
    for heading, items in samples.items():
        items = [item for item in items if isinstance(item, dict)]
        body = "\n".join("<tr>" + "".join(f'<td class="text">{_h(item.get(k, ""))}</td>'
                                          for k in SAMPLE_FIELDS) + "</tr>" for item in items)
        head = "".join(f"<th>{k}</th>" for k in SAMPLE_FIELDS)
        parts.append(f"<details><summary>{_h(heading)} ({len(items)} samples)</summary>"
                     f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
                     "</details>")
    return parts


def _runs_html(doc: Doc) -> list[str]:
    parts = ["<h2>Runs</h2>", "<ul>"]
    for run in doc["runs"]:
        parts.append(f"<li><code>{_h(run['source'])}</code>{_h(_run_title(run))}: wall time "
                     f"{_h(_wall_text(run['wall_seconds']))}</li>")
    if doc.get("wall_seconds") is not None:
        parts.append(f"<li>total wall time: {_h(_wall_text(doc['wall_seconds']))}</li>")
    return parts + ["</ul>"]


def _diagnostics_html(doc: Doc) -> list[str]:
    parts = []
    for run in doc["runs"]:
        for key, value in run["diagnostics"].items():
            leaves = _flatten(value)
            if leaves:
                body = [[_h(path), _h(_scalar_text(v))] for path, v in leaves]
                parts.append(f"<details><summary>{_h(key)} ({_h(run['source'])})</summary>"
                             + _html_table(["key", "value"], body) + "</details>")
        if run["config"]:
            config = json.dumps(run["config"], indent=1, ensure_ascii=False, default=str)
            parts.append(f"<details><summary>config ({_h(run['source'])})</summary>"
                         f"<pre>{_h(config)}</pre></details>")
    return ["<h2>Diagnostics and configuration</h2>"] + parts if parts else []


def _versions_html(versions: Mapping[str, str]) -> list[str]:
    if not versions:
        return []
    return ["<h2>Versions</h2>",
            _html_table(["package", "version"], [[_h(k), _h(v)] for k, v in versions.items()])]


def html_report(docs: Doc | Sequence[Doc], title: str = "mbdefense results") -> str:
    """A self-contained HTML report (inline CSS and SVG, no external references)."""
    doc = _as_combined(docs)
    body = [f"<h1>{_h(title)}</h1>"] + _runs_html(doc) + _results_html(doc)
    body += _samples_html(doc["samples"]) + _diagnostics_html(doc)
    body += _versions_html(doc["versions"])
    return "\n".join(["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
                      f"<title>{_h(title)}</title>", f"<style>{CSS}</style>", "</head>",
                      "<body>", *body, "</body>", "</html>", ""])


# ----------------------------------------------------------------------------- writing


def _default_out_dir(paths: Sequence[str | Path]) -> Path:
    if len(paths) != 1:
        raise ConfigError("write_report: several (or no) inputs; give the output folder")
    path = Path(paths[0])
    return path if path.is_dir() else path.parent


def write_report(paths: Sequence[str | Path], out_dir: str | Path | None = None,
                 title: str = "mbdefense results") -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``results.csv`` (atomically) for ``paths``.

    ``out_dir`` defaults to the single input's folder. Returns the paths by kind
    (``markdown``, ``html``, ``csv``).
    """
    paths = list(paths)
    out = Path(out_dir) if out_dir is not None else _default_out_dir(paths)
    doc = combine(load_results(paths))
    return {"markdown": atomic_write_text(out / "report.md", markdown_report(doc, title)),
            "html": atomic_write_text(out / "report.html", html_report(doc, title)),
            "csv": atomic_write_text(out / "results.csv", csv_rows(doc["rows"]))}


__all__ = ["combine", "csv_rows", "format_cell", "html_report", "is_reference", "load_results",
           "markdown_report", "paper_table_markdown", "paper_tables", "row_label",
           "summary_rows", "validate_doc", "write_report"]
