"""Summaries of checked result rows: per-cell aggregates over seeds and the paper layout.

- :func:`summary_rows` aggregates over seeds (mean, sample standard deviation, summed counts);
- :func:`paper_tables` arranges the summaries as the paper's Table 1, one
  :class:`ModelTable` per model (defenses down, behaviour / attack across);
- :func:`format_cell` is a summary's display text.

The reference row of a never-attacked model (defense ``clean``, or attack and defense ``none``)
is labelled ``clean`` and comes first.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from mbdefense.reporting.documents import FRACTIONS, NAMES

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


def mean_of(summary: Mapping[str, Any] | None, metric: str) -> float | None:
    return None if summary is None else summary[f"{metric}_mean"]


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
           "format_cell", "is_reference", "mean_of", "paper_tables", "row_label",
           "summary_rows"]
