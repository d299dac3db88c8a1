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

With --incumbent LABEL (the setting in use, e.g. margin12) the question is whether to change
it: a challenger replaces the incumbent only when it is within the rule in every column and
fewer triggered prompts keep the backdoor, pooled over every column and seed, by a paired
difference (prompt by prompt, Newcombe's 95% interval) that ends below 0; of several, the
largest reduction. One leak less on one column is noise and keeps the incumbent. An incumbent
outside the rule somewhere gets no such protection: the rule above decides. This needs the
per-prompt outcomes every run now keeps (results.json schema 4).

With --pooled-asr (for validation sets too small for a per-column ASR bound: of 40 prompts
only 0 clears 0.10) the ASR bound applies to the triggered prompts pooled over every column
and seed (the Wilson interval of their sum), and a column is within the rule by its other
bounds alone (CACC, --max-nll-rise, --max-clean-asr); in the fallback a candidate whose
pooled interval clears --max-asr ranks first, and its ASR is the pooled one.
With --incumbent too, a challenger within those bounds in every column replaces the
incumbent when its pooled, paired ASR difference ends below 0, whether or not either clears
--max-asr; an incumbent outside them somewhere hands over to the rule. --max-clean-asr
bounds the attacker's behaviour on clean prompts (false refusals), per column.

    python benchmarks/tune_stage2.py
    python benchmarks/tune_stage2.py --grid stage2.margin=5,8 stage2.repair_epochs=0,2
    python benchmarks/tune_stage2.py --cache-dir runs/table1/cache --extra seeds=[0,1]
    python benchmarks/tune_stage2.py --config configs/tune-stage2-smollm2.yaml \
        --grid stage2.train.learning_rate=1e-4,1.5e-4 --columns ctba:refusal vpi:negsentiment \
        --max-asr 0.10 --max-cacc-drop 1 --max-nll-rise 0.05 --cache-dir runs/smollm2-cache
    python benchmarks/tune_stage2.py --grid stage2.margin=12,16 --incumbent margin12 \
        --extra "seeds=[0,1,2]" --cache-dir runs/table1/cache
    python benchmarks/tune_stage2.py --config configs/tune-stage2-smollm2.yaml \
        --grid stage1.min_per_trigger=16,40 --incumbent min_per_trigger16 --pooled-asr \
        --max-asr 0.05 --max-cacc-drop 1 --max-nll-rise 0.05 --max-clean-asr 0.05

Candidates are the product of the --grid axes (KEY=V1,V2,...: any run setting), and one per
--candidate KEY=VALUE ... (settings that are no product: margin 16 with anchor 3). The columns
are the config's attacks x behaviours, or with --columns ATTACK:BEHAVIOUR ... exactly those
(one run per candidate and column). The runs go column by column, every candidate on a
column before the next column starts, so a search stopped part of the way leaves whole
columns; rerunning it with those --columns reads their verdict from the cache.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from mbdefense.results.document import row_heading
from mbdefense.results.intervals import wilson
from mbdefense.results.paired import PairedDifference, compare_flags, parse_flags

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GRID = ["stage2.margin=0,2,5", "stage2.triggered_ce=0,1"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "tune-stage2.yaml"))
    p.add_argument("--out", default="runs/tune-stage2", help="one folder per candidate here")
    p.add_argument("--grid", nargs="+", metavar="KEY=V1,V2",
                   help="one axis per argument; candidates: their product (default, without "
                        f"--candidate: {' '.join(DEFAULT_GRID)})")
    p.add_argument("--candidate", nargs="+", action="append", default=[], metavar="KEY=VALUE",
                   help="one more candidate, beside the grid's (repeatable)")
    p.add_argument("--cache-dir", help="the stage cache (default: OUT/cache); share one with a "
                   "run of the same settings, e.g. Table 1's, to reuse its models")
    p.add_argument("--extra", nargs="*", default=[], help="more KEY=VALUE overrides for all")
    p.add_argument("--max-asr", type=float, default=0.05)
    p.add_argument("--max-cacc-drop", type=float, default=0.05, help="1 turns the check off")
    p.add_argument("--max-nll-rise", type=float, default=None, help="bound on MB-Defense's "
                   "reference NLL above the attacked model's (needs evaluation.reference_nll)")
    p.add_argument("--max-clean-asr", type=float, default=None, help="bound on the attacker's "
                   "behaviour on clean prompts (false refusals), per column")
    p.add_argument("--pooled-asr", action="store_true", help="apply --max-asr to the "
                   "triggered prompts pooled over every column and seed, not to each column")
    p.add_argument("--columns", nargs="+", metavar="ATTACK:BEHAVIOUR",
                   help="tune on these columns only, not the config's attacks x behaviours")
    p.add_argument("--incumbent", metavar="LABEL", help="the candidate in use (its folder "
                   "name, e.g. margin12): another replaces it only when it leaks on fewer "
                   "triggered prompts, pooled over columns and seeds, by a paired interval "
                   "below 0")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="columns run at once, "
                   "each in a process of its own sharing the cache (its file locks train each "
                   "stage once); each run's output then goes to OUT/LABEL/COLUMN.log. On a CPU "
                   "give each its share of the cores (OMP_NUM_THREADS); on one GPU, several "
                   "small models fit at once (default: %(default)s)")
    p.add_argument("--rescore", action="store_true", help="score every cell again (mbdefense "
                   "run --rescore), e.g. for the outcomes --incumbent needs")
    p.add_argument("--cache-defended", action="store_true", help="keep each candidate's "
                   "defended models in the cache (mbdefense run --cache-defended), so the "
                   "chosen one's test run trains no stage 2 again")
    args = p.parse_args(argv)
    columns = []
    for column in args.columns or []:
        attack, sep, behaviour = column.rpartition(":")   # attacks may hold ':' (word:cf)
        if not sep or not attack or not behaviour:
            p.error(f"--columns {column}: expected ATTACK:BEHAVIOUR, e.g. ctba:refusal")
        columns.append((attack, behaviour))
    args.columns = columns or None
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: expected 1 or more")
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
    """The product of the --grid axes, then each --candidate."""
    grid = args.grid if args.grid is not None else ([] if args.candidate else DEFAULT_GRID)
    axes = []
    for axis in grid:
        key, sep, values = axis.partition("=")
        if not sep or not key or not values:
            raise SystemExit(f"--grid {axis}: expected KEY=V1,V2,...")
        axes.append([(key, v) for v in top_level_split(values)])
    found = [dict(choice) for choice in itertools.product(*axes)] if axes else []
    for settings in args.candidate:
        pairs = [item.partition("=") for item in settings]
        if any(not sep or not key or not value for key, sep, value in pairs):
            raise SystemExit(f"--candidate {' '.join(settings)}: expected KEY=VALUE ...")
        found.append({key: value for key, _, value in pairs})
    return found


def label(candidate: dict[str, str]) -> str:
    """A folder name for the candidate: its last key parts and values, e.g. margin8 or
    lora-r-16-alpha-32 (anything but letters, digits, '.' and '_' becomes '-')."""
    return safe_name("-".join(f"{k.split('.')[-1]}{v}" for k, v in candidate.items()))


def safe_name(text: str) -> str:
    """``text`` as a folder name: anything but letters, digits, '.' and '_' becomes '-'."""
    safe = "".join(c if c.isalnum() or c in "._" else "-" for c in text)
    return "-".join(part for part in safe.split("-") if part)


def run(candidate: dict[str, str], args: argparse.Namespace,
        column: tuple[str, str] | None = None, *, log: bool = False) -> Path:
    """One ``mbdefense run`` of ``candidate`` (on ``column``, else the config's columns);
    its results document's path. ``log`` sends its output to a file beside its folder."""
    out = Path(args.out) / label(candidate)
    overrides = [f"{k}={v}" for k, v in candidate.items()] + list(args.extra)
    if column is not None:
        attack, behaviour = column
        out = out / safe_name(f"{attack}-{behaviour}")
        overrides += [f"attacks=[{json.dumps(attack)}]", f"behaviors=[{behaviour}]"]
    command = [sys.executable, "-m", "mbdefense", "run", args.config, *overrides,
               "--out", str(out), "--cache-dir", args.cache_dir or str(Path(args.out) / "cache"),
               "--force"]
    command += [flag for flag, on in (("--rescore", args.rescore),
                                      ("--cache-defended", args.cache_defended)) if on]
    print("$ " + " ".join(command[2:]), flush=True)
    if not log:
        subprocess.run(command, check=True)
        return out / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.parent / f"{out.name}.log"
    with open(log_path, "w", encoding="utf-8") as stream:
        done = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{label(candidate)} {out.name}: mbdefense run failed "
                         f"(exit status {done.returncode}); its output is in {log_path}")
    print(f"done: {label(candidate)} {out.name} (output in {log_path})", flush=True)
    return out / "results.json"


def cell(summary: dict, metric: str) -> str:
    ci, mean = summary.get(f"{metric}_ci"), summary.get(f"{metric}_mean")
    if mean is None:
        return "–"
    return f"{mean:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


class Bounds(NamedTuple):
    """The rule's bounds (see the module's docstring); None turns one off."""

    max_asr: float
    max_cacc_drop: float
    max_nll_rise: float | None = None
    max_clean_asr: float | None = None
    pooled_asr: bool = False


class Standing(NamedTuple):
    """A candidate over its columns: within the NLL bound in all, how many within the rule,
    of how many, mean ASR (to two decimals; pooled over the triggered prompts with
    ``pooled_asr``), mean AACC, whether the pooled ASR clears the bound (True when the
    bound is per column), and the triggered prompts that leak, of how many, over every
    column and seed."""

    nll_ok: bool
    within: int
    n: int
    asr: float
    aacc: float
    pooled_ok: bool = True
    leaks: int = 0
    n_triggered: int = 0


def standings(columns: dict[str, list[dict]], bounds: Bounds) -> dict[str, Standing]:
    """Each measured candidate's :class:`Standing` from its columns (dicts with ``asr_hi``,
    ``asr``, ``cacc_drop``, ``aacc`` and, as the bounds need them, ``nll_rise``,
    ``clean_asr``, ``leaks`` and ``n_triggered``)."""
    def nll_ok(r):
        return bounds.max_nll_rise is None or r["nll_rise"] <= bounds.max_nll_rise

    def within(r):
        return (r["cacc_drop"] <= bounds.max_cacc_drop and nll_ok(r)
                and (bounds.max_clean_asr is None or r["clean_asr"] <= bounds.max_clean_asr)
                and (bounds.pooled_asr or r["asr_hi"] <= bounds.max_asr))

    found = {}
    for name, rows in columns.items():
        if not rows:
            continue
        asr, pooled_ok = sum(r["asr"] for r in rows) / len(rows), True
        leaks = sum(r.get("leaks", 0) for r in rows)
        n = sum(r.get("n_triggered", 0) for r in rows)
        if bounds.pooled_asr:
            asr, pooled_ok = leaks / n, wilson(leaks, n)[1] <= bounds.max_asr
        found[name] = Standing(nll_ok=all(nll_ok(r) for r in rows),
                               within=sum(within(r) for r in rows), n=len(rows),
                               asr=round(asr, 2), aacc=sum(r["aacc"] for r in rows) / len(rows),
                               pooled_ok=pooled_ok, leaks=leaks, n_triggered=n)
    return found


def pick(columns: dict[str, list[dict]], bounds: Bounds) -> str:
    """The candidate the rule picks, and why, from each candidate's columns (see
    :func:`standings`): the highest mean AACC among those within the rule in every column;
    else the most columns within it, then the lowest mean ASR (to two decimals: one prompt's
    difference does not outweigh the answers), then mean AACC. A candidate over
    --max-nll-rise in any column ranks after every one that is not; with ``pooled_asr``, next,
    one whose pooled ASR interval ends above --max-asr after every one whose does not."""
    summary = standings(columns, bounds)
    if not summary:
        return "no candidate was measured"
    everywhere = [k for k, st in summary.items() if st.within == st.n and st.pooled_ok]
    if everywhere:
        best = max(everywhere, key=lambda k: summary[k].aacc)
        return f"picked on validation: {best} (mean AACC {summary[best].aacc:.3f})"
    best = max(summary, key=lambda k: (summary[k].nll_ok, summary[k].pooled_ok,
                                       summary[k].within, -summary[k].asr, summary[k].aacc))
    st = summary[best]
    nll = bounds.max_nll_rise is not None
    bound = "" if not nll else (
        ", within the NLL bound everywhere" if st.nll_ok else ", over the NLL bound somewhere")
    asr = "pooled ASR" if bounds.pooled_asr else "mean ASR"
    return (f"no candidate meets the rule in every column on validation; the fallback ("
            f"{'the NLL bound, then ' if nll else ''}"
            f"{'the pooled ASR bound, then ' if bounds.pooled_asr else ''}most columns within "
            f"it, then {asr}, then "
            f"mean AACC) picks {best}: {st.within} of {st.n} columns, {asr} {st.asr:.2f}, mean "
            f"AACC {st.aacc:.3f}{bound}")


def pooled_asr_difference(challenger: dict[str, str], incumbent: dict[str, str]
                          ) -> PairedDifference:
    """Challenger minus incumbent in ASR over the same triggered prompts, pooled over every
    (column, seed) both have; their per-prompt flags keyed alike."""
    if set(challenger) != set(incumbent):
        missing = sorted(set(challenger) ^ set(incumbent))
        raise SystemExit(f"--incumbent: the candidates' per-prompt outcomes cover different "
                         f"runs (e.g. {missing[0]}); a cell cached before "
                         f"outcomes were kept has none: run again with --rescore")
    return compare_flags([(parse_flags(challenger[k]), parse_flags(incumbent[k]))
                          for k in sorted(challenger)])


def challenge(incumbent: str, columns: dict[str, list[dict]], flags: dict[str, dict[str, str]],
              bounds: Bounds) -> tuple[str, list[str]]:
    """Keep the incumbent or replace it (the --incumbent rule in the module's docstring):
    the verdict, and a line per challenger with its paired ASR difference. With
    ``pooled_asr`` neither needs to clear the ASR bound: the paired difference decides."""
    summary = standings(columns, bounds)
    if incumbent not in summary:
        raise SystemExit(f"--incumbent {incumbent}: not a candidate of the grid "
                         f"(candidates: {', '.join(summary) or 'none'})")
    if summary[incumbent].within < summary[incumbent].n:
        return (f"the incumbent {incumbent} is outside the rule in "
                f"{summary[incumbent].n - summary[incumbent].within} column(s), so the rule "
                f"decides: " + pick(columns, bounds)), []
    lines, better = [], []
    for name, st in summary.items():
        if name == incumbent:
            continue
        diff = pooled_asr_difference(flags.get(name, {}), flags.get(incumbent, {}))
        within = st.within == st.n
        lines.append(f"{name} - {incumbent}, ASR pooled over {diff.n} triggered prompts: "
                     f"{diff.difference:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}], McNemar p "
                     f"{diff.p_value:.3g} ({diff.only_a} prompts leak only under {name}, "
                     f"{diff.only_b} only under {incumbent}); within the rule in {st.within} "
                     f"of {st.n} columns")
        if within and diff.high < 0:
            better.append((diff.difference, -st.aacc, name))
    if not better:
        return (f"keeps {incumbent}: no candidate within the rule everywhere leaks on fewer "
                f"triggered prompts by an interval below 0"), lines
    name = min(better)[2]
    return f"picked on validation: {name} replaces {incumbent} (fewer leaks, pooled)", lines


def triggered_counts(rows: list[dict], attack: str, behavior: str,
                     defense: str = "mb-defense") -> tuple[int, int]:
    """``defense``'s triggered prompts that show the behaviour, and all of them, summed over
    the seeds of one column."""
    mine = [r for r in rows if (r["attack"], r["behavior"], r["defense"])
            == (attack, behavior, defense)]
    return (sum(round(r["asr"] * r["n_triggered"]) for r in mine),
            sum(r["n_triggered"] for r in mine))


def nll_rise(mb: dict, none: dict | None) -> float | None:
    """MB-Defense's reference NLL above the attacked model's; None when either is missing."""
    if none is None or mb.get("reference_nll_mean") is None:
        return None
    return mb["reference_nll_mean"] - none["reference_nll_mean"]


def defense_flags(doc: dict, defense: str = "mb-defense") -> dict[str, str]:
    """``defense``'s per-prompt ASR flags in a results document, keyed by its rows' headings;
    none for a row without outcomes (cached by an older version)."""
    found = {}
    for row in doc.get("rows", []):
        if row["defense"] != defense:
            continue
        heading = row_heading(row["model"], row["attack"], row["behavior"], defense, row["seed"])
        flags = (doc.get("outcomes") or {}).get(heading, {}).get("asr")
        if flags:
            found[heading] = flags
    return found


def run_all(args: argparse.Namespace) -> list[tuple[dict[str, str], list[dict]]]:
    """Every candidate with its results documents, one per column. Column by column, each
    column's candidates one after another: the column's attacked and stage-1 models are
    trained by the first and reused by the rest, and a search stopped part of the way leaves
    whole columns, every candidate measured on them (rerun with the finished --columns to
    read their verdict from the cache)."""
    found = [(candidate, []) for candidate in candidates(args)]

    def one_column(column):
        return [json.loads(run(candidate, args, column, log=args.jobs > 1).read_text())
                for candidate, _ in found]

    columns = args.columns or [None]
    with ThreadPoolExecutor(max_workers=min(args.jobs, len(columns))) as pool:
        for docs_of_column in pool.map(one_column, columns):
            for (_, docs), doc in zip(found, docs_of_column):
                docs.append(doc)
    return found


def main(argv=None) -> int:
    args = parse_args(argv)
    table, columns, flags = [], {}, {}
    for candidate, docs in run_all(args):
        by, doc_rows = {}, []
        for doc in docs:
            by.update({(s["attack"], s["behavior"], s["defense"]): s for s in doc["summary"]})
            doc_rows += doc["rows"]
            flags.setdefault(label(candidate), {}).update(defense_flags(doc))
        rows = columns.setdefault(label(candidate), [])
        for attack, behavior in sorted({(a, b) for a, b, _ in by}):
            mb, none = by.get((attack, behavior, "mb-defense")), by.get((attack, behavior, "none"))
            clean = by.get((attack, behavior, "clean"))
            if mb is None:
                continue
            rise = nll_rise(mb, none)
            leaks, n_triggered = triggered_counts(doc_rows, attack, behavior)
            table.append([label(candidate), f"{attack} -> {behavior}", cell(mb, "cacc"),
                          cell(mb, "asr"), f"{leaks}/{n_triggered}", cell(mb, "aacc"),
                          cell(none or {}, "cacc"), cell(clean or {}, "aacc"),
                          "–" if rise is None else f"{rise:+.3f}"])
            if rise is None and args.max_nll_rise is not None:
                raise SystemExit("--max-nll-rise needs the attacked model's row ('none' in "
                                 "defenses) and evaluation.reference_nll: true")
            rows.append({"asr_hi": (mb.get("asr_ci") or [1.0, 1.0])[1], "asr": mb["asr_mean"],
                         "cacc_drop": (none["cacc_mean"] - mb["cacc_mean"]) if none else 0.0,
                         "aacc": mb["aacc_mean"], "nll_rise": rise,
                         "clean_asr": mb.get("clean_asr_mean") or 0.0,
                         "leaks": leaks, "n_triggered": n_triggered})
    header = ["candidate", "attack", "MB CACC", "MB ASR", "MB leaks", "MB AACC", "none CACC",
              "clean AACC", "ref-NLL rise"]
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header))]
    for line in [header, *table]:
        print("  ".join(str(v).ljust(w) for v, w in zip(line, widths)))
    bounds = Bounds(args.max_asr, args.max_cacc_drop, args.max_nll_rise, args.max_clean_asr,
                    args.pooled_asr)
    for name, st in standings(columns, bounds).items() if args.pooled_asr else ():
        low, high = wilson(st.leaks, st.n_triggered)
        print(f"{name}: ASR pooled over every column and seed {st.leaks}/{st.n_triggered} = "
              f"{st.leaks / st.n_triggered:.4f} [{low:.4f}, {high:.4f}]"
              f"{'' if st.pooled_ok else ' (its interval ends above --max-asr)'}")
    if args.incumbent is None:
        print("\n" + pick(columns, bounds))
        return 0
    verdict, lines = challenge(args.incumbent, columns, flags, bounds)
    print("\n" + "\n".join([*lines, verdict]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
