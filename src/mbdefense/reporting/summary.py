"""Summaries of checked result rows: per-cell aggregates over seeds and the paper layout.

- :func:`summary_rows` aggregates over seeds (mean, sample standard deviation, 95% interval,
  summed counts);
- :func:`paper_tables` arranges the summaries as the paper's Table 1, one
  :class:`ModelTable` per model (defenses down, behaviour / attack across);
- :func:`format_cell` is a summary's display text (mean and interval).

The reference row of a never-attacked model (defense ``clean``, or attack and defense ``none``)
is labelled ``clean`` and comes first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from mbdefense.results.intervals import summarise

# The results document's label of the never-attacked model's row (a reference, not a defense);
# kept here so that reading reports needs nothing beyond this package.
REFERENCE_LABEL = "clean"
HIGHLIGHT_LABEL = "mb-defense"   # the proposed method, highlighted in tables and charts
METRICS = (("cacc", "CACC"), ("asr", "ASR"))

Row = dict[str, Any]


def is_reference(row: Mapping[str, Any]) -> bool:
    """The never-attacked model's row: defense ``clean``, or attack and defense ``none``."""
    return row["defense"] == REFERENCE_LABEL or (row["attack"] == "none"
                                                 and row["defense"] == "none")


def row_label(row: Mapping[str, Any]) -> str:
    """The row's label in the paper layout: its defense, or ``clean`` for the reference."""
    return REFERENCE_LABEL if is_reference(row) else str(row["defense"])


def attack_title(attack: str) -> str:
    return "no attack" if attack == "none" else attack


# ----------------------------------------------------------------------------- aggregation


def summary_rows(rows: Iterable[Row]) -> list[Row]:
    """Rows aggregated over seeds per ``(model, attack, behavior, defense)``, in order of first
    appearance: ``n_seeds``, ``seeds``, ``interval`` (how the intervals were made), and per
    metric ``{m}_mean``, ``_std`` (sample standard deviation, ``None`` for one seed), ``_ci``
    (the 95% interval: t over seeds, Wilson of the pooled counts where every seed agrees on a
    binomial metric, or Wilson for one seed; ``None`` when there is none) and,
    for the binomial metrics, summed counts ``{m}_hits`` / ``_n``
    (see :func:`mbdefense.results.intervals.summarise`).
    """
    return summarise(rows)


def format_interval(interval: Sequence[float] | None) -> str:
    """``[0.366, 0.634]``, or ``[n/a]`` when there is no interval."""
    if not interval or len(interval) != 2:
        return "[n/a]"
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def format_value(summary: Mapping[str, Any] | None, metric: str) -> str:
    """``0.669 [0.617, 0.717]``: the mean and its interval (``–`` when the metric is missing)."""
    if summary is None or summary.get(f"{metric}_mean") is None:
        return "–"
    return f"{summary[f'{metric}_mean']:.3f} {format_interval(summary.get(f'{metric}_ci'))}"


def format_cell(summary: Mapping[str, Any] | None, metric: str) -> str:
    """A paper-table cell: ``0.669 [0.617, 0.717]`` for one seed (Wilson interval),
    ``0.669 [0.601, 0.737] (3 seeds)`` for several (t interval over seeds), ``–`` for none."""
    text = format_value(summary, metric)
    if summary is None or text == "–" or summary["n_seeds"] == 1:
        return text
    return f"{text} ({summary['n_seeds']} seeds)"


def mean_of(summary: Mapping[str, Any] | None, metric: str) -> float | None:
    return None if summary is None else summary.get(f"{metric}_mean")


def interval_of(summary: Mapping[str, Any] | None, metric: str) -> tuple[float, float] | None:
    ci = None if summary is None else summary.get(f"{metric}_ci")
    return (ci[0], ci[1]) if ci else None


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
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        tables[model] = ModelTable(model, _reference_first(row_label(r) for r in mine),
                                   _columns(mine))
    for s in summary_rows(rows):
        tables[s["model"]].cells[(row_label(s), s["behavior"], s["attack"])] = s
    return list(tables.values())


__all__ = ["HIGHLIGHT_LABEL", "METRICS", "ModelTable", "REFERENCE_LABEL", "attack_title",
           "format_cell", "format_interval", "format_value", "interval_of", "is_reference",
           "mean_of", "paper_tables", "row_label", "summary_rows"]
