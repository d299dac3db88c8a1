"""Section-5 analysis across defence stages: cross-elicitation and attention to triggers.

:func:`analyze_models` takes models labelled by stage (``{"attacked": m0, "after stage 1": m1,
"after stage 2": m2}``) and, for each, measures the elicitation matrix (attacker's trigger and
the defensive triggers against the attacker's behaviour and the defensive responses), its
cross-elicitation summary, and the attention statistics for every trigger. The result is a
JSON-able document, rendered by :func:`analysis_markdown` and :func:`analysis_html`.

Document keys: ``kind``, ``alpha``, ``n``, ``seed``, ``max_new_tokens``, ``attacker``
(``{"trigger", "behavior"}`` specs), ``defensive`` (a list of the same), ``rows`` and
``columns`` (``{"label", "spec"}`` for the matrix labels), and ``stages``: a list of
``{"stage", "elicitation", "cross_elicitation", "attention"}``, where ``attention`` is a list
of ``{"trigger", "spec", "role", "n_inputs", "skipped", "layers", "heads", "poisoned_heads",
"n_poisoned", "mean_mass", "max_share", "mass"}``.
"""

from __future__ import annotations

from html import escape
from typing import Any, Mapping, Sequence

from mbdefense.analysis.attention import attention_to_trigger, poisoned_heads
from mbdefense.analysis.elicitation import cross_elicitation, elicitation_matrix
from mbdefense.attacks.behaviors import Behavior
from mbdefense.attacks.triggers import Trigger
from mbdefense.data.example import Example
from mbdefense.defenses.defensive_triggers import DefensivePair

KIND = "mbdefense-analysis"


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
             f"{_fmt(r['defensive_to_attacker'])} ({_fmt(r['baseline_attacker'])})",
             r["attacker_to_defensive"], r["defensive_cross"],
             f"{r['attacker_poisoned_heads']} / {r['heads']}",
             f"{r['defensive_poisoned_heads']} ({r['shared_heads']})", r["attacker_attention"]]
            for r in stage_summary(doc)]


# --- rendering ------------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _md_cell(value: Any) -> str:
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


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


def analysis_markdown(doc: dict[str, Any]) -> str:
    """The analysis as Markdown: per stage, attention and elicitation tables."""
    parts = ["# Backdoor merge analysis", "",
             f"Attacker: trigger `{doc['attacker']['trigger']}`, behaviour "
             f"`{doc['attacker']['behavior']}`. Defensive triggers: "
             + (", ".join(f"`{d['trigger']}`" for d in doc["defensive"]) or "none") + ".",
             "",
             f"{doc['n']} examples, seed {doc['seed']}; a head is poisoned when more than "
             f"{doc['alpha']:g} of the triggered inputs put their maximum attention (from the "
             "last prompt token) on the trigger.", "",
             "Behaviour columns: " + "; ".join(f"{c['label']} = `{c['spec']}`"
                                               for c in doc["columns"]) + ".", "",
             "## Summary", "",
             _md_table(_STAGE_SUMMARY_HEADER, _stage_summary_rows(doc)), "",
             "The merge shows as defensive triggers eliciting the attacker's behaviour (or the "
             "reverse) above the no-trigger rate, and as poisoned heads shared between the "
             "attacker's and the defensive triggers; the break as fewer poisoned heads and less "
             "attention on the attacker's trigger after stage 2.", ""]
    for stage in doc["stages"]:
        parts += [f"## {stage['stage']}", "", "### Attention to the triggers", "",
                  _md_table(_ATTENTION_HEADER, _attention_rows(stage)), ""]
        matrix = stage["elicitation"]
        parts += ["### Elicitation (share of answers showing each behaviour)", "",
                  _md_table(["trigger \\ behaviour"] + list(matrix["columns"]),
                            [[r] + list(v) for r, v in zip(matrix["rows"], matrix["values"])]),
                  ""]
        summary = stage["cross_elicitation"]
        parts += ["### Cross-elicitation", "",
                  _md_table(["measure", "share"],
                            [[text, summary.get(key)] for key, text in _SUMMARY_KEYS]), ""]
    return "\n".join(parts)


_STYLE = """
body { font-family: Helvetica, Arial, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-size: 13px; }
th { background: #f3f3f3; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.charts figure { margin: 0; overflow-x: auto; max-width: 100%; }
"""


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def analysis_html(doc: dict[str, Any]) -> str:
    """The analysis as one self-contained HTML page with inline SVG heatmaps."""
    from mbdefense.reporting.charts import heatmap_svg

    attacker = doc["attacker"]
    body = ["<h1>Backdoor merge analysis</h1>",
            f"<p>Attacker: trigger <code>{escape(attacker['trigger'])}</code>, behaviour "
            f"<code>{escape(attacker['behavior'])}</code>. Defensive triggers: "
            + (", ".join(f"<code>{escape(d['trigger'])}</code>" for d in doc["defensive"])
               or "none")
            + f". {doc['n']} examples, seed {doc['seed']}; poisoned head: share above "
            f"{doc['alpha']:g}.</p>", "<h2>Summary</h2>",
            _html_table(_STAGE_SUMMARY_HEADER, _stage_summary_rows(doc))]
    for stage in doc["stages"]:
        name = stage["stage"]
        matrix = stage["elicitation"]
        summary = stage["cross_elicitation"]
        body += [f"<h2>{escape(name)}</h2>", "<h3>Attention to the triggers</h3>",
                 _html_table(_ATTENTION_HEADER, _attention_rows(stage)),
                 "<h3>Elicitation and cross-elicitation</h3>", '<div class="charts"><figure>',
                 heatmap_svg(matrix["values"], list(matrix["rows"]), list(matrix["columns"]),
                             f"{name}: elicitation"),
                 "</figure><figure>",
                 _html_table(["measure", "share"],
                             [[text, summary.get(key)] for key, text in _SUMMARY_KEYS]),
                 "</figure></div>",
                 "<h3>Share of inputs with maximum attention on the trigger "
                 "(layer × head)</h3>", '<div class="charts">']
        for item in stage["attention"]:
            grid = item["max_share"]
            body += ["<figure>",
                     heatmap_svg(grid, [f"layer {i}" for i in range(len(grid))],
                                 [f"head {j}" for j in range(len(grid[0]) if grid else 0)],
                                 f"{name}: {item['trigger']}"),
                     "</figure>"]
        body.append("</div>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<title>Backdoor merge analysis</title>\n"
            f"<style>{_STYLE}</style>\n</head>\n<body>\n" + "\n".join(body)
            + "\n</body>\n</html>\n")
