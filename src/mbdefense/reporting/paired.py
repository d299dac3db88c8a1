"""The report's paired comparisons: the proposed method against every other row of a setting,
prompt by prompt.

Where the results keep per-prompt outcomes (schema 4, :mod:`mbdefense.results.paired`), each
setting (model, behaviour, attack) with an ``mb-defense`` row gets a table: one line per other
row (the clean reference, the attacked model, each baseline), with the difference in CACC, ASR
and AACC (MB-Defense minus the other), its 95% interval for paired data and the exact McNemar
p-value, pooled over the seeds both rows were scored on. A difference whose interval holds 0
is not evidence that either is ahead.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from mbdefense.reporting.build import flags
from mbdefense.reporting.page import Code, Inline
from mbdefense.reporting.summary import HIGHLIGHT_LABEL, attack_title, row_label
from mbdefense.reporting.table import Cell, Column, Table
from mbdefense.results.document import row_heading
from mbdefense.results.paired import PairedDifference, compare_flags, parse_flags

PAIRED_METRICS = (("cacc", "CACC"), ("asr", "ASR"), ("aacc", "AACC"))
PAIRED_NOTE: tuple[Inline, ...] = (
    "Each line compares ", Code(HIGHLIGHT_LABEL), " with another row of the same setting on "
    "the same prompts, pooled over the seeds both were scored on. Δ is ", Code(HIGHLIGHT_LABEL),
    "'s rate minus the other's (for ASR, below 0 means fewer triggered prompts show the "
    "attacker's behaviour), with its 95% interval for paired proportions (Newcombe's method "
    "10) and the two-sided exact McNemar p-value, which only the prompts where the two "
    "disagree decide. An interval that holds 0 shows no difference either way.")

Row = dict[str, Any]


def outcome_key(row: Mapping[str, Any]) -> str:
    """The key of a row's samples and outcomes."""
    return row_heading(row["model"], row["attack"], row["behavior"], row["defense"],
                       row["seed"])


def _flags(outcomes: Mapping[str, Any], row: Mapping[str, Any], metric: str
           ) -> list[bool] | None:
    found = (outcomes.get(outcome_key(row)) or {}).get(metric)
    return parse_flags(found) if isinstance(found, str) and found else None


def compare_rows(mine: Sequence[Row], other: Sequence[Row], outcomes: Mapping[str, Any],
                 metric: str) -> tuple[PairedDifference, list[int]] | None:
    """``mine`` against ``other`` (rows of one setting) on ``metric``, pooled over the seeds
    where both have per-prompt outcomes of the same length; with those seeds. None when no
    seed has both."""
    by_seed = {r["seed"]: r for r in other}
    pairs, seeds = [], []
    for row in sorted(mine, key=lambda r: r["seed"]):
        theirs = by_seed.get(row["seed"])
        a = _flags(outcomes, row, metric)
        b = _flags(outcomes, theirs, metric) if theirs is not None else None
        if a is not None and b is not None and len(a) == len(b):
            pairs.append((a, b))
            seeds.append(row["seed"])
    return (compare_flags(pairs), seeds) if pairs else None


def difference_text(found: PairedDifference) -> str:
    """``+0.007 [+0.002, +0.014], p 0.016``."""
    return (f"{found.difference:+.3f} [{found.low:+.3f}, {found.high:+.3f}], "
            f"p {found.p_value:.3g}")


def paired_table(title: str, rows: Sequence[Row], outcomes: Mapping[str, Any],
                 colours: Mapping[str, str] | None = None) -> Table | None:
    """One setting's comparisons, or None when MB-Defense has no outcomes to compare."""
    by_label: dict[str, list[Row]] = {}
    for row in rows:
        by_label.setdefault(row_label(row), []).append(row)
    mine = by_label.pop(HIGHLIGHT_LABEL, [])
    columns = [Column(f"{HIGHLIGHT_LABEL} against"), Column("seeds"),
               Column("prompts (clean / triggered)", kind="num")]
    columns += [Column(f"Δ {name} [95% CI], p", kind="num") for _, name in PAIRED_METRICS]
    lines = []
    for label, theirs in by_label.items():
        found = {metric: compare_rows(mine, theirs, outcomes, metric)
                 for metric, _ in PAIRED_METRICS}
        if not any(found.values()):
            continue
        seeds = next(v[1] for v in found.values() if v)
        clean_n = found["cacc"][0].n if found["cacc"] else "?"
        triggered = found["asr"] or found["aacc"]
        line = [Cell(label, label, colour=(colours or {}).get(label), **flags(label)),
                Cell(", ".join(map(str, seeds)), seeds),
                Cell(f"{clean_n} / {triggered[0].n if triggered else '?'}")]
        line += [Cell(difference_text(v[0]), v[0].difference) if v else Cell("n/a")
                 for v in (found[m] for m, _ in PAIRED_METRICS)]
        lines.append(line)
    return Table(columns, lines, title=title, stub=1) if lines else None


def paired_tables(rows: Sequence[Row], outcomes: Mapping[str, Any],
                  colours: Mapping[str, str] | None = None) -> list[Table]:
    """A table per (model, behaviour, attack) whose MB-Defense rows have outcomes."""
    if not outcomes:
        return []
    settings: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows:
        settings.setdefault((row["model"], row["behavior"], row["attack"]), []).append(row)
    tables = []
    for (model, behavior, attack), members in settings.items():
        table = paired_table(f"{model} · {behavior} · {attack_title(attack)}", members,
                             outcomes, colours)
        if table is not None:
            tables.append(table)
    return tables


__all__ = ["PAIRED_NOTE", "compare_rows", "outcome_key", "paired_table", "paired_tables"]
