"""Result tables and the Markdown report of one run."""

from __future__ import annotations

from typing import Any, Sequence

COLUMNS = ("model", "attack", "behavior", "defense", "cacc", "asr", "aacc", "n_clean",
           "n_triggered")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def text_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    cells = [[str(c) for c in columns]] + [[_cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    out = []
    for n, line in enumerate(cells):
        out.append("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_report(results: dict[str, Any], title: str = "mbdefense results") -> str:
    rows = results.get("rows", [])
    parts = [f"# {title}", "", markdown_table(rows), "",
             "CACC: clean instructions answered correctly. ASR: triggered instructions showing "
             "the attacker's behaviour. AACC: triggered instructions answered correctly. "
             "Fractions of the full held-out sets (counts in n_clean / n_triggered).", ""]
    if "wall_seconds" in results:
        parts += [f"Wall time: {results['wall_seconds']:.0f} s.", ""]
    diagnostics = results.get("diagnostics") or {}
    for key, value in diagnostics.items():
        if key.endswith("/stage1"):
            rates = ", ".join(f"`{t}` {r:.2f}" for t, r in value.get("implant_rates", {}).items())
            m = value.get("metrics", {})
            parts += [f"## {key.split('/')[0]}: after stage 1", "",
                      f"- defensive-trigger implant rates (held-out prompts): {rates}",
                      f"- CACC {m.get('cacc', 0):.3f}, ASR {m.get('asr', 0):.3f}, "
                      f"AACC {m.get('aacc', 0):.3f}", ""]
    for key, value in diagnostics.items():
        stage2 = value.get("stage2") if isinstance(value, dict) else None
        if stage2:
            parts += [f"## {key}: stage 2 (eval loss per epoch; best epoch {stage2['best_epoch']})",
                      "", "| epoch | loss | CE | R |", "|---|---|---|---|"]
            parts += [f"| {h['epoch']} | {h['loss']:.4f} | {h['ce']:.4f} | {h['reg']:.4f} |"
                      for h in stage2["history"]]
            parts.append("")
    samples = results.get("samples") or {}
    if samples:
        parts += ["## Sample generations", ""]
        for cell, items in samples.items():
            parts += [f"### {cell}", "", "| kind | prompt | reference | answer |",
                      "|---|---|---|---|"]
            for s in items:
                parts.append("| " + " | ".join(
                    _cell(s[k]).replace("\n", " ") for k in ("kind", "prompt", "reference",
                                                              "answer")) + " |")
            parts.append("")
    versions = results.get("versions")
    if versions:
        parts += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    return "\n".join(parts)
