"""Cross-elicitation (paper section 5): does one trigger bring out another trigger's behaviour?

After defensive poisoning the attacker's unknown trigger and the defender's triggers should
merge into one backdoor feature: a defensive trigger then also elicits the attacker's
behaviour, and the attacker's trigger elicits the defensive responses. The matrix here
measures it: one row per trigger (plus a "no trigger" row as the chance baseline), one column
per behaviour, each cell the share of greedy answers that show the column's behaviour when
the row's trigger is inserted into the instruction.
"""

from __future__ import annotations

from typing import Any, Sequence

from mbdefense.attacks.behaviors import Behavior
from mbdefense.attacks.poisoning import triggered_copies
from mbdefense.attacks.triggers import Trigger
from mbdefense.data.example import Example
from mbdefense.evaluation.generation import answer_examples

CLEAN_ROW = "no trigger"


def triggered_examples(examples: Sequence[Example], trigger: Trigger | None,
                       seed: int = 0) -> list[Example]:
    """``examples`` with ``trigger`` inserted into each instruction (unchanged when ``None``),
    exactly as the evaluation's triggered test set inserts it."""
    if trigger is None:
        return list(examples)
    return triggered_copies(examples, trigger, seed)


def elicitation_matrix(model: Any, tokenizer: Any, examples: Sequence[Example],
                       triggers: Sequence[tuple[str, Trigger]],
                       behaviors: Sequence[tuple[str, Behavior]], *, seed: int = 0,
                       max_new_tokens: int = 24, batch_size: int = 64,
                       include_clean: bool = True) -> dict[str, Any]:
    """Share of answers showing each behaviour (columns) under each trigger (rows).

    Answers are generated greedily once per row; with ``include_clean`` a last row,
    ``"no trigger"``, answers the untouched examples. Returns ``{"rows": [...], "columns":
    [...], "values": [[share per column] per row], "n": len(examples)}``.
    """
    rows: list[tuple[str, Trigger | None]] = [(label, t) for label, t in triggers]
    if include_clean:
        rows.append((CLEAN_ROW, None))
    values: list[list[float]] = []
    for _label, trigger in rows:
        answers = (answer_examples(model, tokenizer, triggered_examples(examples, trigger, seed),
                                   max_new_tokens=max_new_tokens, batch_size=batch_size)
                   if examples else [])
        values.append([_share(answers, behavior) for _, behavior in behaviors])
    return {"rows": [label for label, _ in rows], "columns": [label for label, _ in behaviors],
            "values": values, "n": len(examples)}


def _share(answers: Sequence[str], behavior: Behavior) -> float:
    if not answers:
        return 0.0
    return sum(1 for a in answers if behavior.detect(a)) / len(answers)


def _index(labels: Sequence[str], key: str | int, what: str) -> int:
    if isinstance(key, int):
        if not -len(labels) <= key < len(labels):
            raise IndexError(f"{what} index {key} out of range ({len(labels)} {what}s)")
        return key % len(labels)
    if key not in labels:
        raise KeyError(f"no {what} labelled {key!r} (have: {', '.join(labels)})")
    return list(labels).index(key)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def cross_elicitation(matrix: dict[str, Any], attacker_row: str | int,
                      attacker_col: str | int) -> dict[str, Any]:
    """Summarise how far the attacker's and the defender's backdoors have merged.

    ``attacker_row``/``attacker_col`` name (label or index) the attacker's trigger row and
    behaviour column; every other row except ``"no trigger"`` is a defensive trigger and every
    other column a defensive behaviour. Keys (``None`` where the matrix lacks what they need):

    - ``attacker_asr``: the attacker's row on the attacker's column;
    - ``defensive_to_attacker``: mean share of defensive-trigger rows showing the attacker's
      behaviour;
    - ``attacker_to_defensive``: mean share of the attacker's row over the defensive columns;
    - ``baseline_attacker`` / ``baseline_defensive``: the same shares on the no-trigger row
      (the chance baseline);
    - ``defensive_own`` / ``defensive_cross``: when defensive rows and columns pair up in
      order, the mean share of each defensive trigger showing its own response, and showing
      the other defensive responses.
    """
    rows, cols, values = matrix["rows"], matrix["columns"], matrix["values"]
    r_att = _index(rows, attacker_row, "row")
    c_att = _index(cols, attacker_col, "column")
    clean = rows.index(CLEAN_ROW) if CLEAN_ROW in rows else None
    def_rows = [r for r in range(len(rows)) if r not in (r_att, clean)]
    def_cols = [c for c in range(len(cols)) if c != c_att]
    summary: dict[str, Any] = {
        "attacker_row": rows[r_att], "attacker_column": cols[c_att],
        "defensive_rows": [rows[r] for r in def_rows],
        "defensive_columns": [cols[c] for c in def_cols],
        "attacker_asr": values[r_att][c_att],
        "defensive_to_attacker": _mean([values[r][c_att] for r in def_rows]),
        "attacker_to_defensive": _mean([values[r_att][c] for c in def_cols]),
        "baseline_attacker": None if clean is None else values[clean][c_att],
        "baseline_defensive": (None if clean is None
                               else _mean([values[clean][c] for c in def_cols])),
        "defensive_own": None, "defensive_cross": None,
    }
    if def_rows and len(def_rows) == len(def_cols):
        summary["defensive_own"] = _mean([values[r][c] for r, c in zip(def_rows, def_cols)])
        summary["defensive_cross"] = _mean([values[r][c] for i, r in enumerate(def_rows)
                                            for j, c in enumerate(def_cols) if i != j])
    return summary
