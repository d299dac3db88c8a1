"""Choose stage 2's settings on the validation split: one `mbdefense run` per candidate.

Runs configs/tune-stage2.yaml (validation prompts only; no test prompt is ever scored) once
per candidate of a small grid, all sharing one stage cache, so the embedded base, the attacked
models and MB-Defense's stage-1 models are trained once and each candidate costs its stage 2
and its evaluation. Prints, per candidate and attack, MB-Defense's CACC, ASR and AACC with
their 95% intervals beside the clean and attacked references, and the candidate the rule
picks: the highest mean AACC among those whose every ASR interval ends at or below
--max-asr and whose CACC stays within --max-cacc-drop of the attacked model's, in every
column; when none does, the one within the rule in the most columns (then mean AACC).

    python benchmarks/tune_stage2.py
    python benchmarks/tune_stage2.py --grid stage2.margin=5,8 stage2.repair_epochs=0,2
    python benchmarks/tune_stage2.py --cache-dir runs/table1/cache --extra seeds=[0,1]

Candidates are the product of the --grid axes (KEY=V1,V2,...: any run setting).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path

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
    p.add_argument("--max-cacc-drop", type=float, default=0.05)
    return p.parse_args(argv)


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


def run(candidate: dict[str, str], args: argparse.Namespace) -> Path:
    out = Path(args.out) / label(candidate)
    overrides = [f"{k}={v}" for k, v in candidate.items()] + list(args.extra)
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


def main(argv=None) -> int:
    args = parse_args(argv)
    table, scores, fallback = [], {}, {}
    for candidate in candidates(args):
        doc = json.loads(run(candidate, args).read_text())
        by = {(s["attack"], s["behavior"], s["defense"]): s for s in doc["summary"]}
        passed, aaccs = [], []
        for attack, behavior in sorted({(a, b) for a, b, _ in by}):
            mb, none = by.get((attack, behavior, "mb-defense")), by.get((attack, behavior, "none"))
            clean = by.get((attack, behavior, "clean"))
            if mb is None:
                continue
            table.append([label(candidate), f"{attack} -> {behavior}", cell(mb, "cacc"),
                          cell(mb, "asr"),
                          cell(mb, "aacc"), cell(none or {}, "cacc"),
                          cell(clean or {}, "aacc")])
            asr_hi = (mb.get("asr_ci") or [1.0, 1.0])[1]
            drop = (none["cacc_mean"] - mb["cacc_mean"]) if none else 0.0
            passed.append(asr_hi <= args.max_asr and drop <= args.max_cacc_drop)
            aaccs.append(mb["aacc_mean"])
        if aaccs:
            mean_aacc = sum(aaccs) / len(aaccs)
            fallback[label(candidate)] = (sum(passed), len(passed), mean_aacc)
            if all(passed):
                scores[label(candidate)] = mean_aacc
    header = ["candidate", "attack", "MB CACC", "MB ASR", "MB AACC", "none CACC", "clean AACC"]
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header))]
    for line in [header, *table]:
        print("  ".join(str(v).ljust(w) for v, w in zip(line, widths)))
    if scores:
        best = max(scores, key=scores.get)
        print(f"\npicked on validation: {best} (mean AACC {scores[best]:.3f})")
    elif fallback:
        # the fallback: the most columns within the rule, then the higher mean AACC
        best = max(fallback, key=lambda k: (fallback[k][0], fallback[k][2]))
        n_ok, n, mean_aacc = fallback[best]
        print(f"\nno candidate meets the rule in every column on validation; the fallback "
              f"(most columns within it, then mean AACC) picks {best}: {n_ok} of {n} "
              f"columns, mean AACC {mean_aacc:.3f}")
    else:
        print("\nno candidate was measured")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
