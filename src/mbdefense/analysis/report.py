"""Section-5 analysis across defence stages: cross-elicitation and attention to triggers.

:func:`analyze_models` takes models labelled by stage (``{"attacked": m0, "after stage 1": m1,
"after stage 2": m2}``) and, for each, measures the elicitation matrix (attacker's trigger and
the defensive triggers against the attacker's behaviour and the defensive responses), its
cross-elicitation summary, and the attention statistics for every trigger. The result is a
JSON-able document, rendered by :func:`analysis_markdown` and :func:`analysis_html` from one
page (:func:`analysis_blocks`) whose tables use the reports' table model
(:mod:`mbdefense.reporting.table`).

Document keys: ``kind``, ``alpha``, ``n``, ``seed``, ``max_new_tokens``, ``attacker``
(``{"trigger", "behavior"}`` specs), ``defensive`` (a list of the same), ``rows`` and
``columns`` (``{"label", "spec"}`` for the matrix labels), and ``stages``: a list of
``{"stage", "elicitation", "cross_elicitation", "attention"}``, where ``attention`` is a list
of ``{"trigger", "spec", "role", "n_inputs", "skipped", "layers", "heads", "poisoned_heads",
"n_poisoned", "mean_mass", "max_share", "mass"}``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from mbdefense.analysis.attention import attention_to_trigger, poisoned_heads
from mbdefense.analysis.elicitation import cross_elicitation, elicitation_matrix
from mbdefense.attacks.behaviors import Behavior
from mbdefense.attacks.triggers import Trigger
from mbdefense.data.example import Example
from mbdefense.defenses.defensive_triggers import DefensivePair
from mbdefense.reporting.page import (Block, Code, Figure, Figures, Heading, Inline, Paragraph,
                                      TableBlock, page_html, page_markdown)
from mbdefense.reporting.table import Column, Table, plain, values_table

KIND = "mbdefense-analysis"
TITLE = "Backdoor merge analysis"


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out


def _short(trigger: Trigger) -> str:
    return trigger.text if trigger.kind == "word" and trigger.text else trigger.spec


def analyze_models(models: Mapping[str, Any], tokenizer: Any, examples: Sequence[Example],
                   attacker: tuple[Trigger, Behavior], defensive_pairs: Sequence[DefensivePair],
                   *, alpha: float = 0.5, n: int = 64, seed: int = 0, max_new_tokens: int = 24,
                   batch_size: int = 64, attention_batch_size: int = 16) -> dict[str, Any]:
    """Elicitation and attention analysis of each stage's model on the first ``n`` examples.

    ``alpha`` is the poisoned-head threshold (see
    :func:`~mbdefense.analysis.attention.poisoned_heads`); ``batch_size`` batches generation
    and ``attention_batch_size`` the attention passes (which keep every layer's weights).
    """
    attack_trigger, attack_behavior = attacker
    pairs = list(defensive_pairs)
    examples = list(examples)[:n]
    row_labels = _unique([f"{attack_trigger.spec} (attacker)"]
                         + [p.trigger.spec for p in pairs])
    col_labels = _unique([f"{attack_behavior.kind} (attacker)"]
                         + [f"{_short(p.trigger)} response" for p in pairs])
    row_triggers = [attack_trigger] + [p.trigger for p in pairs]
    col_behaviors = [attack_behavior] + [p.behavior for p in pairs]
    roles = ["attacker"] + ["defensive"] * len(pairs)
    stages = []
    for stage, model in models.items():
        matrix = elicitation_matrix(model, tokenizer, examples,
                                    list(zip(row_labels, row_triggers)),
                                    list(zip(col_labels, col_behaviors)), seed=seed,
                                    max_new_tokens=max_new_tokens, batch_size=batch_size)
        attention = []
        for label, trigger, role in zip(row_labels, row_triggers, roles):
            stats = attention_to_trigger(model, tokenizer, examples, trigger, seed=seed,
                                         batch_size=attention_batch_size)
            heads = poisoned_heads(stats["max_share"], alpha)
            attention.append({"trigger": label, "spec": trigger.spec, "role": role,
                              "n_inputs": stats["n_inputs"], "skipped": stats["skipped"],
                              "layers": stats["layers"], "heads": stats["heads"],
                              "poisoned_heads": [[layer, head] for layer, head in heads],
                              "n_poisoned": len(heads), "mean_mass": stats["mean_mass"],
                              "max_share": stats["max_share"], "mass": stats["mass"]})
        attacker_heads = {tuple(h) for h in attention[0]["poisoned_heads"]}
        for entry in attention:
            entry["shared_with_attacker"] = len(
                attacker_heads & {tuple(h) for h in entry["poisoned_heads"]})
        stages.append({"stage": str(stage), "elicitation": matrix,
                       "cross_elicitation": cross_elicitation(matrix, 0, 0),
                       "attention": attention})
    return {
        "kind": KIND, "alpha": alpha, "n": len(examples), "seed": seed,
        "max_new_tokens": max_new_tokens,
        "attacker": {"trigger": attack_trigger.spec, "behavior": attack_behavior.spec},
        "defensive": [{"trigger": p.trigger.spec, "behavior": p.behavior.spec} for p in pairs],
        "rows": [{"label": label, "spec": t.spec} for label, t in zip(row_labels, row_triggers)],
        "columns": [{"label": label, "spec": b.spec}
                    for label, b in zip(col_labels, col_behaviors)],
        "stages": stages,
    }


def stage_summary(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per stage: the merge (cross-elicitation against the no-trigger baseline, poisoned
    heads shared by the attacker's and the defensive triggers) and the break (the attacker's
    poisoned heads and attention)."""
    rows = []
    for stage in doc["stages"]:
        merge = stage["cross_elicitation"]
        attacker, *defensive = stage["attention"]
        rows.append({
            "stage": stage["stage"],
            "attacker_asr": merge["attacker_asr"],
            "defensive_to_attacker": merge["defensive_to_attacker"],
            "attacker_to_defensive": merge["attacker_to_defensive"],
            "baseline_attacker": merge["baseline_attacker"],
            "defensive_cross": merge["defensive_cross"],
            "attacker_poisoned_heads": attacker["n_poisoned"],
            "defensive_poisoned_heads": sum(a["n_poisoned"] for a in defensive),
            "shared_heads": sum(a["shared_with_attacker"] for a in defensive),
            "attacker_attention": attacker["mean_mass"],
            "heads": attacker["layers"] * attacker["heads"],
        })
    return rows


_STAGE_SUMMARY_HEADER = [
    "stage", "attacker ASR", "defensive → attacker's behaviour (no trigger)",
    "attacker → defensive responses", "defensive → other defensive",
    "attacker's poisoned heads", "defensive triggers' poisoned heads (shared with attacker)",
    "mean attention on the attacker's trigger"]


def _stage_summary_rows(doc: dict[str, Any]) -> list[list[Any]]:
    return [[r["stage"], r["attacker_asr"],
             f"{plain(r['defensive_to_attacker'])} ({plain(r['baseline_attacker'])})",
             r["attacker_to_defensive"], r["defensive_cross"],
             f"{r['attacker_poisoned_heads']} / {r['heads']}",
             f"{r['defensive_poisoned_heads']} ({r['shared_heads']})", r["attacker_attention"]]
            for r in stage_summary(doc)]


# --- tables ----------------------------------------------------------------------------------

def _heads_text(heads: Sequence[Sequence[int]], limit: int = 12) -> str:
    shown = ", ".join(f"L{layer}H{head}" for layer, head in heads[:limit])
    if len(heads) > limit:
        shown += f", … (+{len(heads) - limit})"
    return shown or "none"


_SUMMARY_KEYS = (
    ("attacker_asr", "attacker's trigger → attacker's behaviour"),
    ("defensive_to_attacker", "defensive triggers → attacker's behaviour"),
    ("attacker_to_defensive", "attacker's trigger → defensive responses"),
    ("baseline_attacker", "no trigger → attacker's behaviour (baseline)"),
    ("baseline_defensive", "no trigger → defensive responses (baseline)"),
    ("defensive_own", "defensive triggers → own response"),
    ("defensive_cross", "defensive triggers → other defensive responses"),
)


def _attention_rows(stage: dict[str, Any]) -> list[list[Any]]:
    return [[a["trigger"], a["role"], a["n_inputs"], a["skipped"],
             f"{a['n_poisoned']} / {a['layers'] * a['heads']}", _heads_text(a["poisoned_heads"]),
             a.get("shared_with_attacker", "–"), a["mean_mass"]] for a in stage["attention"]]


_ATTENTION_HEADER = ("trigger", "role", "inputs", "skipped", "poisoned heads", "heads",
                     "shared with the attacker's", "mean attention on trigger")


def summary_table(doc: dict[str, Any]) -> Table:
    """One row per stage: the merge and the break at a glance."""
    return values_table(_STAGE_SUMMARY_HEADER, _stage_summary_rows(doc), stub=1)


def attention_table(stage: dict[str, Any]) -> Table:
    return values_table(_ATTENTION_HEADER, _attention_rows(stage), stub=1,
                        title="Attention to the triggers")


def elicitation_table(stage: dict[str, Any]) -> Table:
    matrix = stage["elicitation"]
    columns = [Column("trigger \\ behaviour")] + [Column(str(c), kind="num")
                                                  for c in matrix["columns"]]
    return values_table(columns, [[r, *v] for r, v in zip(matrix["rows"], matrix["values"])],
                        stub=1, title="Elicitation (share of answers showing each behaviour)")


def cross_elicitation_table(stage: dict[str, Any]) -> Table:
    summary = stage["cross_elicitation"]
    return values_table(["measure", Column("share", kind="num")],
                        [[text, summary.get(key)] for key, text in _SUMMARY_KEYS], stub=1,
                        title="Cross-elicitation")


# --- pages -----------------------------------------------------------------------------------

def _codes(values: Sequence[str], empty: str = "none") -> list[Inline]:
    parts: list[Inline] = []
    for n, value in enumerate(values):
        parts += ([", "] if n else []) + [Code(value)]
    return parts or [empty]


def _stage_blocks(stage: dict[str, Any]) -> list[Block]:
    from mbdefense.reporting.charts import heatmap_svg

    name = stage["stage"]
    matrix = stage["elicitation"]
    grids = [Figure(heatmap_svg(item["max_share"],
                                [f"layer {i}" for i in range(len(item["max_share"]))],
                                [f"head {j}" for j in range(len(item["max_share"][0])
                                                            if item["max_share"] else 0)],
                                f"{name}: {item['trigger']}"))
             for item in stage["attention"]]
    return [Heading(name), TableBlock(attention_table(stage)),
            Figures([Figure(heatmap_svg(matrix["values"], list(matrix["rows"]),
                                        list(matrix["columns"]), f"{name}: elicitation"),
                            fallback=elicitation_table(stage)),
                     cross_elicitation_table(stage)],
                    title="Elicitation and cross-elicitation"),
            Figures(grids, title="Share of inputs with maximum attention on the trigger "
                                 "(layer × head)")]


def analysis_blocks(doc: dict[str, Any]) -> list[Block]:
    """The analysis page, built once for Markdown and HTML: the setting, a summary per stage,
    then per stage the attention, elicitation and cross-elicitation tables (HTML: heatmaps)."""
    columns: list[Inline] = []
    for n, column in enumerate(doc["columns"]):
        columns += (["; "] if n else []) + [f"{column['label']} = ", Code(column["spec"])]
    blocks: list[Block] = [
        Heading(TITLE, 1),
        Paragraph(["Attacker: trigger ", Code(doc["attacker"]["trigger"]), ", behaviour ",
                   Code(doc["attacker"]["behavior"]), ". Defensive triggers: ",
                   *_codes([d["trigger"] for d in doc["defensive"]]), "."]),
        Paragraph([f"{doc['n']} examples, seed {doc['seed']}; a head is poisoned when more "
                   f"than {doc['alpha']:g} of the triggered inputs put their maximum attention "
                   "(from the last prompt token) on the trigger."]),
        Paragraph(["Behaviour columns: ", *columns, "."]),
        Heading("Summary"), TableBlock(summary_table(doc)),
        Paragraph(["The merge shows as defensive triggers eliciting the attacker's behaviour "
                   "(or the reverse) above the no-trigger rate, and as poisoned heads shared "
                   "between the attacker's and the defensive triggers; the break as fewer "
                   "poisoned heads and less attention on the attacker's trigger after stage 2."],
                  note=True)]
    for stage in doc["stages"]:
        blocks += _stage_blocks(stage)
    return blocks


def analysis_markdown(doc: dict[str, Any]) -> str:
    """The analysis as Markdown: per stage, attention and elicitation tables."""
    return page_markdown(analysis_blocks(doc))


def analysis_html(doc: dict[str, Any]) -> str:
    """The analysis as one self-contained HTML page with inline SVG heatmaps."""
    return page_html(TITLE, analysis_blocks(doc))
