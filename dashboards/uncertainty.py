"""Uncertainty of a point's objectives over its seeds, and ties with the Pareto front.

A point trained with n seeds has, per objective, its seed mean m, standard error
se = s / sqrt(n) (s the sample standard deviation) and the 95% interval m ± t₀.₉₇₅(n−1)·se
(Student t). With one seed a point has no interval (NaN): a front of one-seed points says
nothing about whether its points differ.

Tied with the front. A point off the front (pareto_rank > 0) is ``tied_with_front`` when,
for some point on the front, their 95% intervals overlap in every objective: the data do
not show that the front point is better in any objective. Overlapping intervals are a
conservative screen, not a test (two means can differ significantly while their
intervals overlap); a point with no interval (one seed) is never tied.
"""
from __future__ import annotations

import math
from statistics import mean, stdev
from typing import Sequence

import polars as pl

# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042]


_Z975 = 1.959963984540054  # the standard normal's 0.975 quantile


def t975(df: int) -> float:
    if df < 1:
        return math.nan
    if df <= 30:
        return _T975[df - 1]
    # Cornish-Fisher expansion of the t quantile around the normal one, to the 1/df³ term:
    # within 2e-5 of the exact quantile beyond df = 30 (the 1/df term alone was 3e-3 off at 31).
    z = _Z975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))



def mean_interval(values: Sequence[float]) -> dict[str, float]:
    """n, mean, standard error and the 95% interval (lo, hi) of ``values`` (NaN where n < 2)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    m = mean(vals) if n else math.nan
    se = stdev(vals) / math.sqrt(n) if n > 1 else math.nan
    half = t975(n - 1) * se if n > 1 else math.nan
    return {"n": n, "mean": m, "se": se, "lo": m - half, "hi": m + half}


def with_intervals(points: pl.DataFrame, runs: pl.DataFrame, objectives: list[tuple[str, str]]) -> pl.DataFrame:
    """Add ``{metric}.se``, ``{metric}.lo`` and ``{metric}.hi`` to ``points`` (one row per
    ``point``) from the completed ``runs`` of each point."""
    by_point: dict[str, dict[str, list[float]]] = {}
    for row in runs.iter_rows(named=True):
        slot = by_point.setdefault(row["point"], {m: [] for m, _ in objectives})
        for m, _ in objectives:
            slot[m].append(row[m])
    cols: dict[str, list[float]] = {}
    for point in points["point"].to_list():
        for m, _ in objectives:
            iv = mean_interval(by_point.get(point, {}).get(m, []))
            for key in ("se", "lo", "hi"):
                cols.setdefault(f"{m}.{key}", []).append(iv[key])
    return points.with_columns([pl.Series(k, v, dtype=pl.Float64) for k, v in cols.items()])


def _overlap(a_lo: float, a_hi: float, b_lo: float, b_hi: float) -> bool:
    if any(math.isnan(x) for x in (a_lo, a_hi, b_lo, b_hi)):
        return False
    return a_lo <= b_hi and b_lo <= a_hi


def tied_with_front(table: pl.DataFrame, objectives: list[tuple[str, str]]) -> list[bool]:
    """Per row of ``table`` (with ``pareto_rank`` and the interval columns): see the module
    docstring. Front points themselves are False (they are on it)."""
    rows = table.to_dicts()
    front = [r for r in rows if r["pareto_rank"] == 0]

    def tied(r: dict) -> bool:
        if r["pareto_rank"] == 0 or f"{objectives[0][0]}.lo" not in r:
            return False
        return any(all(_overlap(r[f"{m}.lo"], r[f"{m}.hi"], f[f"{m}.lo"], f[f"{m}.hi"]) for m, _ in objectives)
                   for f in front)

    return [tied(r) for r in rows]


def interval_text(row: dict, metric: str) -> str:
    """``mean ± half-width`` of the 95% interval, or the mean alone when there is none."""
    m, lo, hi = row[metric], row.get(f"{metric}.lo"), row.get(f"{metric}.hi")
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return f"{m:.5g}"
    return f"{m:.5g} ± {(hi - lo) / 2:.2g}"


def significance_text(table: pl.DataFrame, objectives: list[tuple[str, str]], seeds: int) -> str:
    """What the sweep does and does not show about its points, in one paragraph."""
    if not len(table):
        return "No completed point yet: nothing can be concluded."
    front = int((table["pareto_rank"] == 0).sum())
    if seeds < 2:
        return (f"{front} of {len(table)} points are on the front, from one seed each: no difference between "
                "points is established, on or off the front (no uncertainty estimate).")
    lo = f"{objectives[0][0]}.lo"
    off = table.filter(pl.col("pareto_rank") != 0)
    tied = int(off["tied_with_front"].sum()) if len(off) else 0
    judged = off.filter(pl.col(lo).is_not_nan() & pl.col(lo).is_not_null()) if len(off) else off
    unknown = len(off) - len(judged)
    separated = len(judged) - tied
    parts = [f"{front} of {len(table)} points are on the front (seed means)."]
    parts.append(f"{separated} point(s) off it are worse than a front point beyond their 95% intervals in at least "
                 "one objective" + (" (each interval alone; with many points some of these separations are "
                                    "chance)" if separated else ""))
    parts.append(f"{tied} point(s) off it are not distinguishable from the front: their intervals overlap a "
                 "front point's in every objective")
    if unknown:
        parts.append(f"{unknown} point(s) have fewer than 2 completed seeds and no interval: not judged")
    return " ".join([parts[0], "; ".join(parts[1:]) + "."])
