"""The report's headline: what was run, and each defense against the attacked model.

- :func:`run_pairs`: the run's metadata for the page header (date, commit, command, hardware,
  description, seeds, wall time, scorers and their backends when recorded, package versions);
- :func:`headline_tables`: one table per (model, behaviour, attack): every defense with CACC,
  ASR and AACC, each as mean and 95% interval, and its change against ``none`` (the attacked
  model, undefended); the ``clean`` reference first, ``mb-defense`` highlighted and marked;
- :data:`HEADLINE_NOTE`: the words a reader needs for the table.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Sequence

from mbdefense.reporting.build import flags, flatten
from mbdefense.reporting.documents import SCORER_FIELDS, Combined, is_number
from mbdefense.reporting.page import Code, Inline
from mbdefense.reporting.summary import (HIGHLIGHT_LABEL, REFERENCE_LABEL, attack_title,
                                         format_value, mean_of, row_label, summary_rows)
from mbdefense.reporting.table import Cell, Column, Table

ATTACKED_LABEL = "none"
HEADLINE_METRICS = (("cacc", "CACC"), ("asr", "ASR"), ("aacc", "AACC"))
#: Shown after the headline metrics when the rows record them (value and interval only).
EXTRA_METRICS = (("rouge_l", "ROUGE-L"), ("echo_cacc", "echo CACC (floor)"),
                 ("judge_unparsed_share", "judge unparsed"))
ROLES = {REFERENCE_LABEL: "reference: never attacked",
         ATTACKED_LABEL: "attacked, no defense (Δ against this row)",
         HIGHLIGHT_LABEL: "★ proposed method"}
OTHER_ROLE = "baseline defense"
#: Rows that are not defenses of their own: an ablation and a method's intermediate model.
ROLES.update({"stage2-only": "ablation: MB-Defense's stage 2 without stage 1",
              f"{HIGHLIGHT_LABEL}:stage1": "intermediate: after stage 1 only (not a result)"})


def role_of(label: str) -> str:
    """What a headline row is, in words."""
    if label.endswith(":stage1") and label not in ROLES:
        return "intermediate: after stage 1 only (not a result)"
    return ROLES.get(label, OTHER_ROLE)
HEADLINE_NOTE: tuple[Inline, ...] = (
    Code(REFERENCE_LABEL), " is the reference: the same base model fine-tuned on the training "
    "data without the attack (never attacked). ", Code(ATTACKED_LABEL), " is the attacked model "
    "(fine-tuned on the poisoned data) with no defense. Every other row is a defense applied "
    "to the attacked model; ★ marks the proposed method (", Code(HIGHLIGHT_LABEL), "). CACC: clean "
    "instructions answered correctly (higher is better). ASR: triggered instructions showing "
    "the attacker's behaviour (lower is better). AACC: triggered instructions still answered "
    "correctly (higher is better). Each value is the mean over seeds with its 95% confidence "
    "interval in brackets: a Student t interval over the per-seed values when there are "
    "several seeds (the Wilson interval of the counts pooled over them where every seed gives "
    "the same count), the Wilson interval of the counts (n prompts per seed) when there is one; "
    "n/a where none can be computed. Δ is the difference of means against ",
    Code(ATTACKED_LABEL), " in the same setting (no interval of its own). Where the results "
    "record them: ROUGE-L of the clean answers, the CACC of echoing each clean prompt back (the "
    "floor a real answer must clear) and the share of answers the judge gave no verdict.")

Row = dict[str, Any]


# ----------------------------------------------------------------------------- metadata


def _text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _distinct(pairs: Iterable[tuple[str, Any]]) -> list[tuple[str, str]]:
    """Per key, the distinct non-empty values joined by `` / `` (first-appearance order)."""
    seen: dict[str, list[str]] = {}
    for key, value in pairs:
        if value is None or value == "":
            continue
        values = seen.setdefault(key, [])
        if _text(value) not in values:
            values.append(_text(value))
    return [(k, " / ".join(v)) for k, v in seen.items()]


def _scorer_leaves(name: str, value: Any) -> list[tuple[str, Any]]:
    return flatten(value, name) if isinstance(value, dict) else [(name, value)]


def scorer_pairs(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Whatever the runs recorded about their scorers (document fields such as ``scorers``,
    each group's and each row's ``scorer``), as ``(name, value)`` pairs."""
    leaves: list[tuple[str, Any]] = []
    for run in doc.get("runs") or []:
        for name, value in (run.get("scorers") or {}).items():
            leaves += _scorer_leaves(name, value)
        for group in run.get("groups") or []:
            if isinstance(group, dict) and "scorer" in group:
                leaves += _scorer_leaves("scorer", group["scorer"])
    for row in doc.get("rows") or []:
        for name in SCORER_FIELDS:
            if name in row:
                leaves += _scorer_leaves(name, row[name])
    return _distinct(leaves)


def _seeds_text(rows: Sequence[Row]) -> str:
    seeds = sorted({r["seed"] for r in rows if isinstance(r.get("seed"), int)})
    return ", ".join(map(str, seeds)) + f" ({len(seeds)} seed{'s' if len(seeds) != 1 else ''})"


def run_pairs(doc: Combined) -> list[tuple[str, str]]:
    """The header's key/value lines: the runs' metadata (date, commit, command, hardware,
    description, ...), then seeds, wall time, scorers and package versions."""
    pairs = [(str(k), v) for k, v in (doc.get("metadata") or {}).items()
             if v is not None and v != ""]
    if doc.get("rows"):
        pairs.append(("seeds", _seeds_text(doc["rows"])))
    if is_number(doc.get("wall_seconds")):
        pairs.append(("wall time", f"{doc['wall_seconds']:.0f} s"))
    pairs += scorer_pairs(doc)
    versions = doc.get("versions") or {}
    if versions:
        pairs.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    return pairs


# ----------------------------------------------------------------------------- headline


def _order(labels: Iterable[str]) -> list[str]:
    """``clean`` first, ``none`` second, the others as they came."""
    labels = list(dict.fromkeys(labels))
    return sorted(labels, key=lambda lb: (lb != REFERENCE_LABEL, lb != ATTACKED_LABEL))


def _groups(summaries: Sequence[Row]) -> dict[tuple[str, str, str], dict[str, Row]]:
    """Summaries by (model, behaviour, attack), then by label. A setting without its own
    ``clean`` row borrows the never-attacked model of its (model, behaviour) when the results
    have one as attack ``none``; that reference-only setting is then not shown alone."""
    groups: dict[tuple[str, str, str], dict[str, Row]] = {}
    for s in summaries:
        groups.setdefault((s["model"], s["behavior"], s["attack"]), {})[row_label(s)] = s
    borrowed = set()
    for (model, behavior, attack), cells in groups.items():
        spare = groups.get((model, behavior, "none"))
        if attack != "none" and REFERENCE_LABEL not in cells and spare and set(spare) == {
                REFERENCE_LABEL}:
            cells[REFERENCE_LABEL] = spare[REFERENCE_LABEL]
            borrowed.add((model, behavior, "none"))
    return {key: cells for key, cells in groups.items() if key not in borrowed}


def _seeds_cell(summary: Row) -> str:
    return ", ".join(str(s) for s in summary.get("seeds") or [])


def _n_cell(summary: Row) -> str:
    def counts(name: str) -> str:
        values = list(dict.fromkeys(summary.get(name) or []))
        return str(values[0]) if len(values) == 1 else "/".join(map(str, values)) or "?"

    return f"{counts('n_clean')} / {counts('n_triggered')}"


def _delta(summary: Row, attacked: Row | None, metric: str, label: str) -> tuple[str, Any]:
    if label == ATTACKED_LABEL:
        return "–", None
    mine, base = mean_of(summary, metric), mean_of(attacked, metric)
    if mine is None or base is None:
        return "n/a", None
    return f"{mine - base:+.3f}", mine - base


def headline_table(title: str, cells: Mapping[str, Row],
                   colours: Mapping[str, str] | None = None) -> Table:
    """One setting's headline: defense, role, seeds, n, then per metric value [CI] and Δ, then
    the :data:`EXTRA_METRICS` the rows record."""
    colours = colours or {}
    columns = [Column("defense"), Column("role"), Column("seeds"),
               Column("n (clean / triggered)", kind="num")]
    for _, name in HEADLINE_METRICS:
        columns += [Column(f"{name} [95% CI]", kind="num"), Column(f"Δ {name}", kind="num")]
    extras = [(m, name) for m, name in EXTRA_METRICS
              if any(mean_of(s, m) is not None for s in cells.values())]
    columns += [Column(f"{name} [95% CI]", kind="num") for _, name in extras]
    attacked = cells.get(ATTACKED_LABEL)
    rows = []
    for label in _order(cells):
        summary, marks = cells[label], flags(label)
        line = [Cell(label, label, colour=colours.get(label), **marks),
                Cell(role_of(label), **marks),
                Cell(_seeds_cell(summary), summary.get("seeds"), **marks),
                Cell(_n_cell(summary), **marks)]
        for metric, _ in HEADLINE_METRICS:
            line.append(Cell(format_value(summary, metric), mean_of(summary, metric), **marks))
            text, value = _delta(summary, attacked, metric, label)
            line.append(Cell(text, value, **marks))
        line += [Cell(format_value(summary, metric), mean_of(summary, metric), **marks)
                 for metric, _ in extras]
        rows.append(line)
    return Table(columns, rows, title=title, stub=1)


def headline_tables(rows: Sequence[Row], colours: Mapping[str, str] | None = None) -> list[Table]:
    """A headline table per (model, behaviour, attack), in order of first appearance."""
    return [headline_table(f"{model} · {behavior} · {attack_title(attack)}", cells, colours)
            for (model, behavior, attack), cells in _groups(summary_rows(rows)).items()]


__all__ = ["ATTACKED_LABEL", "EXTRA_METRICS", "HEADLINE_METRICS", "HEADLINE_NOTE", "headline_table",
           "headline_tables", "run_pairs", "scorer_pairs"]
