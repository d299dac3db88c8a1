"""95% confidence intervals for the results' metrics, computed from the rows alone.

- One seed: the Wilson score interval of a binomial metric (``cacc``, ``asr``, ``aacc``,
  ``clean_asr``, ``echo_cacc``: successes out of the row's ``n_clean`` or ``n_triggered``
  prompts; ``judge_unparsed_share`` out of both; a metric ``m`` whose row also holds ``m_n``
  counts out of that). A metric with no count (a mean score,
  a loss) has no interval from one seed.
- Several seeds: the Student t interval over the per-seed values (mean ± t(0.975, k-1) ·
  s / sqrt(k)), for every numeric metric; fractions are clipped to [0, 1]. Where every seed
  gives the same value of a binomial metric, that interval has no width though each seed is
  still a sample of prompts: the Wilson interval of the counts pooled over the seeds stands
  in for it (the summary lists such metrics under ``pooled_wilson``).

:func:`with_intervals` adds ``{metric}_ci: [lo, hi]`` (``None`` when there is none) to a row;
:func:`summarise` aggregates rows over seeds per (model, attack, behavior, defense). Only the
standard library is used, so old documents can be given intervals wherever they are read.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable, Mapping, Sequence

CONFIDENCE = 0.95
#: Each binomial metric and the row fields whose sum is its number of prompts.
BINOMIAL = {"cacc": ("n_clean",), "asr": ("n_triggered",), "aacc": ("n_triggered",),
            "clean_asr": ("n_clean",), "echo_cacc": ("n_clean",),
            "judge_unparsed_share": ("n_clean", "n_triggered")}
#: Metrics aggregated over seeds (when numeric in the rows), in this order.
METRICS = ("cacc", "asr", "aacc", "clean_asr", "clean_score", "rouge_l", "echo_cacc",
           "echo_rouge_l", "judge_unparsed_share", "reference_nll")
FRACTIONS = (*BINOMIAL, "clean_score", "rouge_l", "echo_rouge_l")     # bounded to [0, 1]
NAMES = ("model", "attack", "behavior", "defense")
SEEDS_METHOD = "t over seeds"
ONE_SEED_METHOD = "wilson"
#: Several seeds that all agree on a binomial metric: the interval of their pooled counts.
SEEDS_AGREE_METHOD = "wilson of the pooled counts"

Interval = tuple[float, float]
Row = dict[str, Any]


def _number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def z_value(confidence: float = CONFIDENCE) -> float:
    """The two-sided standard normal quantile (1.95996... for 95%)."""
    return statistics.NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval | None:
    """The Wilson score interval of ``successes`` out of ``n`` (``None`` when ``n`` is 0)."""
    if n <= 0 or not 0 <= successes <= n:
        return None
    z = z_value(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    return lo, 1.0 if successes == n else min(1.0, centre + half)


def _central_mass(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df`` (the closed form in ``atan`` and
    powers of ``cos``, exact for every integer number of degrees of freedom)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:
        total, term = 0.0, 1.0
        for k in range(1, (df - 1) // 2 + 1):   # 1 + (2/3)c² + (2·4)/(3·5)c⁴ + ...
            total += term
            term *= 2 * k / (2 * k + 1) * c2
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    total, term = 0.0, 1.0
    for k in range(1, df // 2 + 1):             # 1 + (1/2)c² + (1·3)/(2·4)c⁴ + ...
        total += term
        term *= (2 * k - 1) / (2 * k) * c2
    return math.sin(theta) * total


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided Student t quantile: P(|T| < q) = ``confidence`` (12.706 for ``df`` 1,
    4.303 for 2, 1.960 in the limit)."""
    if df < 1:
        raise ValueError(f"t_quantile: df must be >= 1, got {df}")
    if df > 1000:      # the closed form's sums get long; the first terms of the expansion in
        z = z_value(confidence)     # 1/df are exact to about 1e-9 here
        return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
    lo, hi = 0.0, 1.0
    while _central_mass(hi, df) < confidence:
        lo, hi = hi, hi * 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _central_mass(mid, df) < confidence else (lo, mid)
    return (lo + hi) / 2


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE,
               bounds: Interval | None = None) -> Interval | None:
    """mean ± t · s / sqrt(k) over ``values`` (``None`` for fewer than two), clipped to
    ``bounds`` when given."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    half = t_quantile(len(values) - 1, confidence) * statistics.stdev(values) / math.sqrt(
        len(values))
    lo, hi = mean - half, mean + half
    if bounds is not None:
        lo, hi = max(bounds[0], lo), min(bounds[1], hi)
    return lo, hi


# ----------------------------------------------------------------------------- rows


def trials(row: Mapping[str, Any], metric: str) -> int | None:
    """The number of prompts behind a binomial metric of ``row`` (``None``: not binomial)."""
    fields = (f"{metric}_n",) if f"{metric}_n" in row else BINOMIAL.get(metric, ())
    counts = [row.get(f) for f in fields]
    if not counts or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                             for n in counts):
        return None
    return sum(counts)


def hits(row: Mapping[str, Any], metric: str) -> int | None:
    """The successes behind a binomial metric: value times prompts, rounded."""
    n, value = trials(row, metric), row.get(metric)
    return round(value * n) if n is not None and _number(value) else None


def row_interval(row: Mapping[str, Any], metric: str,
                 confidence: float = CONFIDENCE) -> Interval | None:
    """The Wilson interval of one row's binomial ``metric`` (``None`` without counts)."""
    k, n = hits(row, metric), trials(row, metric)
    return None if k is None or n is None else wilson(min(max(k, 0), n), n, confidence)


def binomial_metrics(row: Mapping[str, Any]) -> list[str]:
    """The row's metrics that have counts: the standard ones, then any ``m`` with ``m_n``."""
    names = [m for m in BINOMIAL if m in row]
    names += [k[:-2] for k in row if k.endswith("_n") and k[:-2] in row and k[:-2] not in names]
    return [m for m in names if trials(row, m) is not None and _number(row.get(m))]


def with_intervals(row: Mapping[str, Any], confidence: float = CONFIDENCE) -> Row:
    """``row`` with ``{metric}_ci`` (``[lo, hi]``, or ``None`` without prompts) for each
    binomial metric the row holds a value of."""
    out = dict(row)
    for metric in [m for m in BINOMIAL if _number(row.get(m))] + binomial_metrics(row):
        interval = row_interval(row, metric, confidence)
        out[f"{metric}_ci"] = list(interval) if interval is not None else None
    return out


# ----------------------------------------------------------------------------- over seeds


def _aggregate(group: Sequence[Mapping[str, Any]], metric: str, out: Row,
               confidence: float) -> None:
    values = [r[metric] for r in group if _number(r.get(metric))]
    if not values:
        return
    out[f"{metric}_mean"] = statistics.fmean(values)
    out[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else None
    binomial = all(trials(r, metric) is not None for r in group) and len(values) == len(group)
    if binomial:
        out[f"{metric}_hits"] = sum(hits(r, metric) for r in group)
        out[f"{metric}_n"] = sum(trials(r, metric) for r in group)
    bounds = (0.0, 1.0) if metric in FRACTIONS else None
    if len(values) > 1 and binomial and out[f"{metric}_std"] == 0:
        interval = wilson(out[f"{metric}_hits"], out[f"{metric}_n"], confidence)
        out.setdefault("pooled_wilson", []).append(metric)
    elif len(values) > 1:
        interval = t_interval(values, confidence, bounds)
    else:
        interval = row_interval(group[0], metric, confidence) if binomial else None
    out[f"{metric}_ci"] = list(interval) if interval is not None else None


def summarise(rows: Iterable[Mapping[str, Any]], confidence: float = CONFIDENCE) -> list[Row]:
    """Rows aggregated per (model, attack, behavior, defense), in order of first appearance.

    Each: the names, ``seeds``, ``n_seeds``, ``interval`` (``t over seeds`` or ``wilson``),
    ``pooled_wilson`` (the binomial metrics whose seeds all agree, so whose interval is the
    Wilson interval of the pooled counts; empty for one seed),
    ``confidence``, ``n_clean`` / ``n_triggered`` (prompts per seed, a list), and per metric
    present ``{m}_mean``, ``{m}_std`` (``None`` for one seed), ``{m}_ci`` (``[lo, hi]`` or
    ``None``) and, for binomial metrics, the summed ``{m}_hits`` and ``{m}_n``.
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in NAMES), []).append(row)
    out = []
    for group in groups.values():
        entry: Row = {k: group[0].get(k) for k in NAMES}
        entry["seeds"] = [r.get("seed") for r in group]
        entry["n_seeds"] = len(group)
        entry["interval"] = SEEDS_METHOD if len(group) > 1 else ONE_SEED_METHOD
        entry["confidence"] = confidence
        entry["pooled_wilson"] = []
        for name in ("n_clean", "n_triggered"):
            entry[name] = [r.get(name) for r in group]
        extra = [m for r in group for m in binomial_metrics(r) if m not in METRICS]
        for metric in (*METRICS, *dict.fromkeys(extra)):
            _aggregate(group, metric, entry, confidence)
        out.append(entry)
    return out


__all__ = ["BINOMIAL", "CONFIDENCE", "METRICS", "ONE_SEED_METHOD", "SEEDS_AGREE_METHOD",
           "SEEDS_METHOD", "binomial_metrics", "hits", "row_interval", "summarise",
           "t_interval", "t_quantile", "trials", "wilson", "with_intervals", "z_value"]
