"""Choose stage 2's settings on the validation split: one `mbdefense run` per candidate.

Runs configs/tune-stage2.yaml (validation prompts only; no test prompt is ever scored) once
per candidate of a small grid, all sharing one stage cache, so the embedded base, the attacked
models and MB-Defense's stage-1 models are trained once and each candidate costs its stage 2
and its evaluation. Prints, per candidate and attack, MB-Defense's CACC, ASR and AACC with
their 95% intervals beside the clean and attacked references, and the candidate the rule
picks: the highest mean AACC among those whose every ASR interval ends at or below
--max-asr and whose CACC stays within --max-cacc-drop of the attacked model's, in every
column; when none does, the one within the rule in the most columns, then the lowest mean ASR
(to two decimals), then the highest mean AACC. With --max-nll-rise (for real models, where the
reference NLL says more than a ROUGE-judged CACC on a few prompts) a column is within the rule
only when MB-Defense's reference NLL is at most that much above the attacked model's, and a
candidate that breaks this bound in any column ranks after every one that does not, fallback
included. --max-cacc-drop 1 turns the CACC check off.

    python benchmarks/tune_stage2.py
    python benchmarks/tune_stage2.py --grid stage2.margin=5,8 stage2.repair_epochs=0,2
    python benchmarks/tune_stage2.py --cache-dir runs/table1/cache --extra seeds=[0,1]
    python benchmarks/tune_stage2.py --config configs/tune-stage2-smollm2.yaml \
        --grid stage2.train.learning_rate=1e-4,1.5e-4 --columns ctba:refusal vpi:negsentiment \
        --max-asr 0.10 --max-cacc-drop 1 --max-nll-rise 0.05 --cache-dir runs/smollm2-cache

Candidates are the product of the --grid axes (KEY=V1,V2,...: any run setting). The columns
are the config's attacks x behaviours, or with --columns ATTACK:BEHAVIOUR ... exactly those
(one run per candidate and column).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "tune-stage2.yaml"))
    p.add_argument("--out", default="runs/tune-stage2", help="one folder per candidate here")
    p.add_argument("--grid", nargs="+", default=["stage2.margin=0,2,5", "stage2.triggered_ce=0,1"],
                   metavar="KEY=V1,V2", help="one axis per argument; candidates: their product")
    p.add_argument("--cache-dir", help="the stage cache (default: OUT/cache); share one with a "
                   "run of the same settings, e.g. Table 1's, to reuse its models")
    p.add_argument("--extra", nargs="*", default=[], help="more KEY=VALUE overrides for all")
    p.add_argument("--max-asr", type=float, default=0.05)
    p.add_argument("--max-cacc-drop", type=float, default=0.05, help="1 turns the check off")
    p.add_argument("--max-nll-rise", type=float, default=None, help="bound on MB-Defense's "
                   "reference NLL above the attacked model's (needs evaluation.reference_nll)")
    p.add_argument("--columns", nargs="+", metavar="ATTACK:BEHAVIOUR",
                   help="tune on these columns only, not the config's attacks x behaviours")
    args = p.parse_args(argv)
    columns = []
    for column in args.columns or []:
        attack, sep, behaviour = column.partition(":")
        if not sep or not attack or not behaviour:
            p.error(f"--columns {column}: expected ATTACK:BEHAVIOUR, e.g. ctba:refusal")
        columns.append((attack, behaviour))
    args.columns = columns or None
    return args


def top_level_split(values: str) -> list[str]:
    """Split on the commas outside brackets and braces: ``{r: 16, alpha: 32},{r: 8}`` is two."""
    parts, depth, current = [], 0, ""
    for char in values:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return parts + [current.strip()]


def candidates(args: argparse.Namespace) -> list[dict[str, str]]:
    axes = []
    for axis in args.grid:
        key, sep, values = axis.partition("=")
        if not sep or not key or not values:
            raise SystemExit(f"--grid {axis}: expected KEY=V1,V2,...")
        axes.append([(key, v) for v in top_level_split(values)])
    return [dict(choice) for choice in itertools.product(*axes)]


def label(candidate: dict[str, str]) -> str:
    """A folder name for the candidate: its last key parts and values, e.g. margin8 or
    lora-r-16-alpha-32 (anything but letters, digits, '.' and '_' becomes '-')."""
    text = "-".join(f"{k.split('.')[-1]}{v}" for k, v in candidate.items())
    safe = "".join(c if c.isalnum() or c in "._" else "-" for c in text)
    return "-".join(part for part in safe.split("-") if part)


def run(candidate: dict[str, str], args: argparse.Namespace,
        column: tuple[str, str] | None = None) -> Path:
    out = Path(args.out) / label(candidate)
    overrides = [f"{k}={v}" for k, v in candidate.items()] + list(args.extra)
    if column is not None:
        attack, behaviour = column
        out = out / f"{attack}-{behaviour}"
        overrides += [f"attacks=[{attack}]", f"behaviors=[{behaviour}]"]
    command = [sys.executable, "-m", "mbdefense", "run", args.config, *overrides,
               "--out", str(out), "--cache-dir", args.cache_dir or str(Path(args.out) / "cache"),
               "--force"]
    print("$ " + " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)
    return out / "results.json"


def cell(summary: dict, metric: str) -> str:
    ci, mean = summary.get(f"{metric}_ci"), summary.get(f"{metric}_mean")
    if mean is None:
        return "–"
    return f"{mean:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


class Standing(NamedTuple):
    """A candidate over its columns: within the NLL bound in all, how many within the rule,
    of how many, mean ASR (to two decimals) and mean AACC."""

    nll_ok: bool
    within: int
    n: int
    asr: float
    aacc: float


def pick(columns: dict[str, list[dict]], max_asr: float, max_cacc_drop: float,
         max_nll_rise: float | None = None) -> str:
    """The candidate the rule picks, and why, from each candidate's columns (dicts with
    ``asr_hi``, ``asr``, ``cacc_drop``, ``aacc`` and, for --max-nll-rise, ``nll_rise``): the
    highest mean AACC among those within the rule in every column; else the most columns
    within it, then the lowest mean ASR (to two decimals: one prompt's difference does not
    outweigh the answers), then mean AACC. A candidate over --max-nll-rise in any column
    ranks after every one that is not."""
    def nll_ok(r):
        return max_nll_rise is None or r["nll_rise"] <= max_nll_rise

    summary = {
        name: Standing(nll_ok=all(nll_ok(r) for r in rows),
                       within=sum(r["asr_hi"] <= max_asr and r["cacc_drop"] <= max_cacc_drop
                                  and nll_ok(r) for r in rows),
                       n=len(rows), asr=round(sum(r["asr"] for r in rows) / len(rows), 2),
                       aacc=sum(r["aacc"] for r in rows) / len(rows))
        for name, rows in columns.items() if rows}
    if not summary:
        return "no candidate was measured"
    everywhere = [k for k, st in summary.items() if st.within == st.n]
    if everywhere:
        best = max(everywhere, key=lambda k: summary[k].aacc)
        return f"picked on validation: {best} (mean AACC {summary[best].aacc:.3f})"
    best = max(summary, key=lambda k: (summary[k].nll_ok, summary[k].within, -summary[k].asr,
                                       summary[k].aacc))
    st = summary[best]
    bound = "" if max_nll_rise is None else (
        ", within the NLL bound everywhere" if st.nll_ok else ", over the NLL bound somewhere")
    return (f"no candidate meets the rule in every column on validation; the fallback ("
            f"{'the NLL bound, then ' if max_nll_rise is not None else ''}most columns within "
            f"it, then mean ASR, then mean AACC) picks {best}: {st.within} of {st.n} columns, "
            f"mean ASR {st.asr:.2f}, mean AACC {st.aacc:.3f}{bound}")


def nll_rise(mb: dict, none: dict | None) -> float | None:
    """MB-Defense's reference NLL above the attacked model's; None when either is missing."""
    if none is None or mb.get("reference_nll_mean") is None:
        return None
    return mb["reference_nll_mean"] - none["reference_nll_mean"]


def main(argv=None) -> int:
    args = parse_args(argv)
    table, columns = [], {}
    for candidate in candidates(args):
        by = {}
        for column in args.columns or [None]:
            doc = json.loads(run(candidate, args, column).read_text())
            by.update({(s["attack"], s["behavior"], s["defense"]): s for s in doc["summary"]})
        rows = columns.setdefault(label(candidate), [])
        for attack, behavior in sorted({(a, b) for a, b, _ in by}):
            mb, none = by.get((attack, behavior, "mb-defense")), by.get((attack, behavior, "none"))
            clean = by.get((attack, behavior, "clean"))
            if mb is None:
                continue
            rise = nll_rise(mb, none)
            table.append([label(candidate), f"{attack} -> {behavior}", cell(mb, "cacc"),
                          cell(mb, "asr"), cell(mb, "aacc"), cell(none or {}, "cacc"),
                          cell(clean or {}, "aacc"), "–" if rise is None else f"{rise:+.3f}"])
            if rise is None and args.max_nll_rise is not None:
                raise SystemExit("--max-nll-rise needs the attacked model's row ('none' in "
                                 "defenses) and evaluation.reference_nll: true")
            rows.append({"asr_hi": (mb.get("asr_ci") or [1.0, 1.0])[1], "asr": mb["asr_mean"],
                         "cacc_drop": (none["cacc_mean"] - mb["cacc_mean"]) if none else 0.0,
                         "aacc": mb["aacc_mean"], "nll_rise": rise})
    header = ["candidate", "attack", "MB CACC", "MB ASR", "MB AACC", "none CACC", "clean AACC",
              "ref-NLL rise"]
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header))]
    for line in [header, *table]:
        print("  ".join(str(v).ljust(w) for v, w in zip(line, widths)))
    print("\n" + pick(columns, args.max_asr, args.max_cacc_drop, args.max_nll_rise))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
