"""The report's tables, built once from checked results as :class:`Table` objects.

- :func:`paper_table`: one model's Table 1 (defenses down; behaviour and attack header groups
  over CACC / ASR columns; the ``clean`` row flagged ``reference``, ``mb-defense``
  ``highlight``, each defense with its colour);
- :func:`long_table`: every row and every field (standard columns first), each binomial metric
  with its interval (for CSV: the bounds as two columns);
- :func:`samples_tables`, :func:`diagnostics_tables`, :func:`pairs_table`: the samples, the
  diagnostics (dotted keys) and key/value lists such as versions and metadata.

The page assembly (:mod:`mbdefense.reporting.report`) renders these same objects as Markdown
and as HTML, and :func:`long_table` as CSV.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Sequence

from mbdefense.reporting.documents import COUNTS, FRACTIONS, OPTIONAL_FRACTIONS
from mbdefense.reporting.summary import (HIGHLIGHT_LABEL, METRICS, REFERENCE_LABEL, ModelTable,
                                         attack_title, format_cell, is_reference, mean_of,
                                         row_label)
from mbdefense.reporting.table import Cell, Column, Table
from mbdefense.results.intervals import with_intervals

STANDARD = ("model", "attack", "behavior", "defense", "seed", "cacc", "asr", "aacc", "n_clean",
            "n_triggered", "clean_asr", "clean_score", "rouge_l", "echo_cacc", "echo_rouge_l",
            "judge_unparsed", "judge_unparsed_share", "reference_nll", "poison_rate",
            "train_seconds")
NUMERIC = FRACTIONS + OPTIONAL_FRACTIONS + COUNTS + (
    "seed", "clean_score", "rouge_l", "echo_cacc", "echo_rouge_l", "judge_unparsed",
    "judge_unparsed_share", "reference_nll", "train_seconds")
BOUND_SUFFIXES = ("_ci", "_ci_lo", "_ci_hi")
SAMPLE_FIELDS = ("kind", "prompt", "reference", "answer")
LIST_TEXT_LIMIT = 600   # longer lists show only their length

Row = dict[str, Any]


def flags(label: str) -> dict[str, bool]:
    """A row's flags by its label: ``reference`` for ``clean``, ``highlight`` for MB-Defense."""
    return {"reference": label == REFERENCE_LABEL, "highlight": label == HIGHLIGHT_LABEL}


# ----------------------------------------------------------------------------- paper layout


def paper_table(table: ModelTable, colours: Mapping[str, str] | None = None) -> Table:
    """One model's Table 1: ``defense`` down; behaviour, attack and CACC / ASR across."""
    colours = colours or {}
    columns = [Column("defense")] + [
        Column(f"{b} · {attack_title(a)} {name}", short=name, kind="num")
        for b, a in table.columns for _, name in METRICS]
    groups = [[Cell(b, colspan=2 * len(table.attacks(b))) for b in table.behaviors()],
              [Cell(attack_title(a), colspan=2) for _, a in table.columns]]
    rows = []
    for label in table.labels:
        marks = flags(label)
        line = [Cell(label, label, colour=colours.get(label), **marks)]
        for b, a in table.columns:
            summary = table.cell(label, b, a)
            line += [Cell(format_cell(summary, metric),
                          mean_of(summary, metric), **marks)
                     for metric, _ in METRICS]
        rows.append(line)
    return Table(columns, rows, title=table.model, groups=groups if table.columns else [],
                 stub=1)


# ----------------------------------------------------------------------------- all rows


def columns_of(rows: Sequence[Row]) -> list[str]:
    """The union of the rows' keys: the standard columns first, then others as they appear;
    a metric's interval (``m_ci``, or ``m_ci_lo`` and ``m_ci_hi``) right after the metric."""
    present = dict.fromkeys(k for row in rows for k in row)
    bounds = {k for k in present for suffix in BOUND_SUFFIXES
              if k.endswith(suffix) and k[:-len(suffix)] in present}
    order = [k for k in STANDARD if k in present]
    order += [k for k in present if k not in STANDARD and k not in bounds]
    return [name for k in order
            for name in (k, *(k + suffix for suffix in BOUND_SUFFIXES if k + suffix in bounds))]


def rounded(value: Any) -> Any:
    """Floats (also inside objects and lists) to 4 significant digits."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def _is_interval(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def format_value(value: Any, column: str = "") -> str:
    """A cell of the long table: fractions with 3 decimals, other numbers with up to 4, an
    interval (``*_ci``) as ``[lo, hi]`` with 3 decimals (``n/a`` when there is none), other
    objects and lists as compact JSON."""
    if column.endswith("_ci") and (value is None or _is_interval(value)):
        return "n/a" if value is None else f"[{value[0]:.3f}, {value[1]:.3f}]"
    if value is None:
        return ""
    if isinstance(value, float) and column.endswith(("_ci_lo", "_ci_hi")):
        return f"{value:.3f}"
    if isinstance(value, float) and column in FRACTIONS + OPTIONAL_FRACTIONS + ("clean_score",):
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, (dict, list)):
        return json.dumps(rounded(value), ensure_ascii=False, default=str)
    return str(value)


def _interval_columns(rows: Sequence[Row]) -> list[str]:
    """The ``*_ci`` fields whose every value is an interval or ``None``."""
    names = dict.fromkeys(k for row in rows for k in row if k.endswith("_ci"))
    return [k for k in names if all(row.get(k) is None or _is_interval(row.get(k))
                                    for row in rows)]


def with_bounds(rows: Sequence[Row]) -> list[Row]:
    """The rows with each interval ``m_ci: [lo, hi]`` as two fields ``m_ci_lo``, ``m_ci_hi``
    (empty when there is no interval), in its place."""
    names = set(_interval_columns(rows))
    out = []
    for row in rows:
        line: Row = {}
        for key, value in row.items():
            if key in names:
                line[f"{key}_lo"], line[f"{key}_hi"] = value if value is not None else (None,
                                                                                      None)
            else:
                line[key] = value
        out.append(line)
    return out


def long_table(rows: Sequence[Row], colours: Mapping[str, str] | None = None, *,
               reference_first: bool = True, title: str = "All rows",
               bounds: bool = False) -> Table:
    """Every row (reference rows first unless told otherwise), every column, raw values kept;
    each binomial metric with its 95% Wilson interval (from the row's counts) as ``m_ci``
    (``bounds``: as two columns ``m_ci_lo``, ``m_ci_hi``, for CSV)."""
    colours = colours or {}
    rows = [with_intervals(r) for r in rows]
    if bounds:
        rows = with_bounds(rows)
    if reference_first:
        rows.sort(key=lambda r: not is_reference(r))
    names = columns_of(rows)
    columns = [Column(n, kind="num" if n in NUMERIC or n.endswith(BOUND_SUFFIXES) else "")
               for n in names]
    body = []
    for row in rows:
        label = row_label(row)
        marks = flags(label)
        body.append([Cell(format_value(row.get(n), n), row.get(n), **marks,
                          colour=colours.get(label) if n == "defense" else None)
                     for n in names])
    return Table(columns, body, title=title)


# ----------------------------------------------------------------------------- other tables


def pairs_table(pairs: Iterable[tuple[Any, Any]], title: str = "",
                header: tuple[str, str] = ("key", "value")) -> Table:
    """A key/value table (a list in Markdown)."""
    rows = [[Cell(str(k), k), Cell(_scalar_text(v), v)] for k, v in pairs]
    return Table([Column(header[0]), Column(header[1])], rows, title=title, layout="pairs")


def _scalar_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(rounded(value), ensure_ascii=False, default=str)
    return str(value)


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Scalar leaves of nested objects as ``(dotted.path, value)``; a list shows as compact
    JSON (e.g. a stage-2 eval-loss history), or its length when that is long."""
    if isinstance(value, dict):
        out: list[tuple[str, Any]] = []
        for key, item in value.items():
            out += flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(value, list):
        text = json.dumps(rounded(value), ensure_ascii=False, default=str)
        return [(prefix, text if len(text) <= LIST_TEXT_LIMIT else f"[{len(value)} entries]")]
    return [(prefix, value)]


def diagnostics_tables(runs: Sequence[Mapping[str, Any]]) -> list[Table]:
    """Per run and diagnostics key, its leaves as a key/value table (empty ones left out)."""
    tables = []
    for run in runs:
        for key, value in run["diagnostics"].items():
            leaves = flatten(value, "" if isinstance(value, dict) else str(key))
            if leaves:
                tables.append(pairs_table(leaves, f"{key} ({run['source']})"))
    return tables


def _histories(value: Any, path: str) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """Every ``{history: [{epoch, ...}], best_epoch}`` mapping inside ``value``, with its path."""
    if not isinstance(value, Mapping):
        return
    history = value.get("history")
    if isinstance(history, list) and history and all(
            isinstance(h, Mapping) and "epoch" in h for h in history):
        yield path, value
    for key, item in value.items():
        if key != "history":
            yield from _histories(item, f"{path}.{key}" if path else str(key))


def _epoch_mark(found: Mapping[str, Any], epoch: Any) -> str:
    """What an epoch of a training record was: the one whose weights were kept, and under
    ``kept: last`` the one with the lowest eval loss too. Records written before
    ``kept_epoch`` existed hold the kept epoch in ``best_epoch``."""
    last = found.get("kept") == "last"
    kept = found.get("kept_epoch", found.get("best_epoch"))
    if epoch == kept:
        return "kept (last epoch)" if last else "kept (lowest eval loss)"
    if last and "kept_epoch" in found and epoch == found.get("best_epoch"):
        return "lowest eval loss (not kept)"
    return ""


def history_tables(runs: Sequence[Mapping[str, Any]]) -> list[Table]:
    """Each eval-loss history (stage 2, Clean-FFT and the like) as a table of epochs, the
    epoch whose weights were kept marked: epoch 0 is before any training."""
    tables = []
    for run in runs:
        for path, found in _histories(run.get("diagnostics") or {}, ""):
            fields = [k for k in found["history"][0] if k != "epoch"]
            rows = [[Cell(str(h.get("epoch")), h.get("epoch"))]
                    + [Cell(_scalar_text(h.get(k)), h.get(k)) for k in fields]
                    + [Cell(_epoch_mark(found, h.get("epoch")))]
                    for h in found["history"]]
            columns = [Column("epoch", kind="num"), *(Column(f"eval {k}", kind="num")
                                                      for k in fields), Column("")]
            tables.append(Table(columns, rows, title=f"{path}: loss on the held-out part of the "
                                                     f"trusted set, per epoch ({run['source']})"))
    return tables


def samples_tables(samples: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[Table]:
    """One table per sample heading: kind, prompt, reference and answer of each generation."""
    tables = []
    for heading, items in samples.items():
        columns = [Column(k, kind="text") for k in SAMPLE_FIELDS]
        rows = [[Cell(_sample_text(item.get(k)), item.get(k)) for k in SAMPLE_FIELDS]
                for item in items]
        tables.append(Table(columns, rows, title=f"{heading} ({len(rows)} samples)"))
    return tables


def _sample_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else _scalar_text(value)


__all__ = ["SAMPLE_FIELDS", "STANDARD", "columns_of", "diagnostics_tables", "flags", "flatten",
           "history_tables",
           "format_value", "long_table", "pairs_table", "paper_table", "rounded",
           "samples_tables", "with_bounds"]
