"""The report's paired comparisons: the proposed method against every other row of a setting,
prompt by prompt.

Where the results keep per-prompt outcomes (schema 4, :mod:`mbdefense.results.paired`), each
setting (model, behaviour, attack) with an ``mb-defense`` row gets a table: one line per other
row (the clean reference, the attacked model, each baseline), with the difference in CACC, ASR
and AACC (MB-Defense minus the other), its 95% interval for paired data and the exact McNemar
p-value, pooled over the seeds both rows were scored on. A difference whose interval holds 0
is not evidence that either is ahead. With several settings, one more table pools each
comparison over every setting and seed (the headline "over all triggered prompts" figure).
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
    "disagree decide. An interval that holds 0 shows no difference either way. With several "
    "settings, the last table pools each comparison over every setting where both rows were "
    "scored: their prompts counted as one sample, which leaves out the variation between "
    "settings and seeds.")

Row = dict[str, Any]


def outcome_key(row: Mapping[str, Any]) -> str:
    """The key of a row's samples and outcomes."""
    return row_heading(row["model"], row["attack"], row["behavior"], row["defense"],
                       row["seed"])


def _flags(outcomes: Mapping[str, Any], row: Mapping[str, Any], metric: str
           ) -> list[bool] | None:
    found = (outcomes.get(outcome_key(row)) or {}).get(metric)
    return parse_flags(found) if isinstance(found, str) and found else None


Pair = tuple[list[bool], list[bool]]


def _row_pairs(mine: Sequence[Row], other: Sequence[Row], outcomes: Mapping[str, Any],
               metric: str) -> tuple[list[Pair], list[int]]:
    """Per-prompt outcomes of ``mine`` and ``other`` on ``metric``, seed by seed, where both
    have them with the same length; with those seeds."""
    by_seed = {r["seed"]: r for r in other}
    pairs, seeds = [], []
    for row in sorted(mine, key=lambda r: r["seed"]):
        theirs = by_seed.get(row["seed"])
        a = _flags(outcomes, row, metric)
        b = _flags(outcomes, theirs, metric) if theirs is not None else None
        if a is not None and b is not None and len(a) == len(b):
            pairs.append((a, b))
            seeds.append(row["seed"])
    return pairs, seeds


def difference_text(found: PairedDifference) -> str:
    """``+0.007 [+0.002, +0.014], p 0.016`` (``p < 1e-300`` where p is below a float)."""
    p = f"p {found.p_value:.3g}" if found.p_value > 0 else "p < 1e-300"
    return f"{found.difference:+.3f} [{found.low:+.3f}, {found.high:+.3f}], {p}"


Compared = dict[str, tuple[dict[str, list[Pair]], list[int]]]


def _setting_pairs(rows: Sequence[Row], outcomes: Mapping[str, Any]) -> Compared:
    """One setting: for every row label other than MB-Defense's (in order of appearance),
    the paired outcomes of each metric and the seeds where both rows were scored."""
    by_label: dict[str, list[Row]] = {}
    for row in rows:
        by_label.setdefault(row_label(row), []).append(row)
    mine = by_label.pop(HIGHLIGHT_LABEL, [])
    compared: Compared = {}
    for label, theirs in by_label.items():
        found = {metric: _row_pairs(mine, theirs, outcomes, metric)
                 for metric, _ in PAIRED_METRICS}
        seeds = next((s for _, s in found.values() if s), [])
        compared[label] = ({metric: pairs for metric, (pairs, _) in found.items()}, seeds)
    return compared


def _table(title: str, first: str, lines: Sequence[tuple[str, Cell, Mapping[str, list[Pair]]]],
           colours: Mapping[str, str] | None) -> Table | None:
    """One line per compared row: its label, a cell saying what was pooled, and the pooled
    pairs of each metric (an empty list where none had outcomes)."""
    columns = [Column(f"{HIGHLIGHT_LABEL} against"), Column(first),
               Column("prompts (clean / triggered)", kind="num")]
    columns += [Column(f"Δ {name} [95% CI], p", kind="num") for _, name in PAIRED_METRICS]
    body = []
    for label, pooled_over, pairs in lines:
        found = {metric: compare_flags(p) if p else None for metric, p in pairs.items()}
        if not any(found.values()):
            continue
        triggered = found["asr"] or found["aacc"]
        line = [Cell(label, label, colour=(colours or {}).get(label), **flags(label)),
                pooled_over,
                Cell(f"{found['cacc'].n if found['cacc'] else '?'} / "
                     f"{triggered.n if triggered else '?'}")]
        line += [Cell(difference_text(v), v.difference) if v else Cell("n/a")
                 for v in (found[m] for m, _ in PAIRED_METRICS)]
        body.append(line)
    return Table(columns, body, title=title, stub=1) if body else None


def paired_tables(rows: Sequence[Row], outcomes: Mapping[str, Any],
                  colours: Mapping[str, str] | None = None) -> list[Table]:
    """A table per (model, behaviour, attack) whose MB-Defense rows have outcomes, and with
    two or more of those, one more that pools each comparison over all of them (their
    prompts counted as one sample)."""
    if not outcomes:
        return []
    settings: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows:
        settings.setdefault((row["model"], row["behavior"], row["attack"]), []).append(row)
    tables = []
    pooled: dict[str, dict[str, list[Pair]]] = {}
    counted: dict[str, int] = {}
    for (model, behavior, attack), members in settings.items():
        compared = _setting_pairs(members, outcomes)
        lines = [(label, Cell(", ".join(map(str, seeds)), seeds), pairs)
                 for label, (pairs, seeds) in compared.items()]
        table = _table(f"{model} · {behavior} · {attack_title(attack)}", "seeds", lines,
                       colours)
        if table is None:
            continue
        tables.append(table)
        for label, (pairs, seeds) in compared.items():
            into = pooled.setdefault(label, {metric: [] for metric, _ in PAIRED_METRICS})
            for metric, found in pairs.items():
                into[metric] += found
            counted[label] = counted.get(label, 0) + bool(seeds)
    if len(tables) > 1:
        lines = [(label, Cell(f"{counted[label]} of {len(tables)}", counted[label]), pairs)
                 for label, pairs in pooled.items()]
        overall = _table("over every setting, pooled", "settings", lines, colours)
        if overall is not None:
            tables.append(overall)
    return tables


__all__ = ["PAIRED_NOTE", "difference_text", "outcome_key", "paired_tables"]
