"""MB-Defense's own knobs, one at a time, on the validation split: one `mbdefense run` per
variant of configs/ablations.yaml, all on one stage cache (the base and the attacked models are
trained once; share Table 1's cache and they are not trained again).

Knobs (the paper's Table 2 and its data-efficiency claim, and this implementation's own):

- ``triggers``: the number of defensive triggers (1, 2, 4, 6);
- ``trusted``: the size of the trusted set stage 2 trains on (16 to 256);
- ``margin``: the margin in stage 2's R term (nats per token);
- ``top-up``: the implant top-up after stage 1, at the fine-tune's learning rate and lower;
- ``stage2-params``: which parameters stage 2 trains (all, or LoRA adapters);
- ``stage2-terms``: stage 2's repair terms: the random-insertion copies and the anchor (KL to
  the stage-1 model on the clean answers), off and on;
- ``repair``: stage 2's repair phase (epochs of the clean answer's CE under the triggers).

Prints, per knob, variant and attack, MB-Defense's CACC, ASR and AACC with their 95% intervals
beside the attacked model's CACC, and writes the same as Markdown (--markdown).

    python benchmarks/ablations.py --knobs triggers trusted --cache-dir runs/table1/cache
    python benchmarks/ablations.py --knobs margin --extra "seeds=[0,1,2]"
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ALL_MODULES = "[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]"

#: knob -> [(variant label, overrides)]; an empty override list is the preset's setting.
KNOBS: dict[str, list[tuple[str, list[str]]]] = {
    "triggers": [("1", ["stage1.triggers=[mn]"]), ("2", ["stage1.triggers=[mn, bb]"]),
                 ("4 (preset)", []), ("6", ["stage1.triggers=[mn, bb, zx, qv, jk, wy]"])],
    "trusted": [(str(n), [f"data.n_trusted={n}"]) for n in (16, 32, 64, 128, 256)],
    "margin": [(str(m), [f"stage2.margin={m}"]) for m in (0, 5, 8)]
              + [("12 (preset)", []), ("16", ["stage2.margin=16"])],
    "top-up": [("off (preset)", []),
               ("at the fine-tune's lr", ["stage1.on_weak_implant=top-up"]),
               ("at 1/10 of it", ["stage1.on_weak_implant=top-up",
                                  "stage1.top_up_learning_rate=3e-5"])],
    "stage2-params": [("all weights, lr 1e-4", ["stage2.train.lora=null",
                                                "stage2.train.learning_rate=1e-4"]),
                      ("LoRA r16, attention (preset)", []),
                      ("LoRA r16, attention + MLP",
                       [f"stage2.train.lora={{r: 16, alpha: 32, target_modules: {ALL_MODULES}}}"])],
    "stage2-terms": [("R only, lam 1", ["stage2.lam=1", "stage2.anchor=0",
                                        "stage2.insertion_copies=0"]),
                     ("+ insertion copy, lam 1", ["stage2.lam=1", "stage2.anchor=0"]),
                     ("+ anchor, lam 2", ["stage2.insertion_copies=0"]),
                     ("+ insertion copy + anchor, lam 2 (preset)", [])],
    "repair": [("off (preset)", []), ("1 epoch", ["stage2.repair_epochs=1"]),
               ("2 epochs", ["stage2.repair_epochs=2"])],
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "ablations.yaml"))
    p.add_argument("--out", default="runs/ablations", help="one folder per variant here")
    p.add_argument("--knobs", nargs="+", default=list(KNOBS), choices=list(KNOBS))
    p.add_argument("--cache-dir", help="the stage cache (default: OUT/cache)")
    p.add_argument("--extra", nargs="*", default=[], help="more KEY=VALUE overrides for all")
    p.add_argument("--markdown", help="also write the tables here")
    return p.parse_args(argv)


def folder_name(knob: str, label: str) -> str:
    safe = "".join(c if c.isalnum() else "-" for c in label.split(" (")[0]).strip("-")
    return f"{knob}-{safe}"


def run_variant(knob: str, label: str, overrides: list[str], args: argparse.Namespace) -> dict:
    out = Path(args.out) / folder_name(knob, label)
    command = [sys.executable, "-m", "mbdefense", "run", args.config, *overrides, *args.extra,
               "--out", str(out), "--cache-dir", args.cache_dir or str(Path(args.out) / "cache"),
               "--force"]
    print("$ " + " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)
    return json.loads((out / "results.json").read_text())


def cell(summary: dict | None, metric: str) -> str:
    if not summary or summary.get(f"{metric}_mean") is None:
        return "–"
    ci = summary.get(f"{metric}_ci")
    text = f"{summary[f'{metric}_mean']:.3f}"
    return text + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def rows_of(knob: str, label: str, doc: dict) -> list[list[str]]:
    by = {(s["attack"], s["behavior"], s["defense"]): s for s in doc["summary"]}
    seeds = sorted({r["seed"] for r in doc["rows"]})
    rows = []
    for attack, behavior in sorted({(a, b) for a, b, _ in by}):
        mb = by.get((attack, behavior, "mb-defense"))
        none = by.get((attack, behavior, "none"))
        rows.append([knob, label, f"{attack} -> {behavior}", ",".join(map(str, seeds)),
                     cell(mb, "cacc"), cell(mb, "asr"), cell(mb, "aacc"), cell(none, "cacc")])
    return rows


HEADER = ["knob", "variant", "attack", "seeds", "MB CACC", "MB ASR", "MB AACC", "none CACC"]


def main(argv=None) -> int:
    args = parse_args(argv)
    table: list[list[str]] = []
    for knob in args.knobs:
        for label, overrides in KNOBS[knob]:
            table += rows_of(knob, label, run_variant(knob, label, overrides, args))
    widths = [max(len(r[i]) for r in [HEADER, *table]) for i in range(len(HEADER))]
    for line in [HEADER, *table]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)))
    if args.markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(row) + " |" for row in table]
        Path(args.markdown).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
