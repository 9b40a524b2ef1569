"""Ablation statistics: the effect of each axis level relative to the baseline, paired by seed.

For ``mode: ablation`` sweeps each change (a label such as ``erase_axis=value``) is
compared with the ``baseline`` trial of the same seed. For other sweeps with replicates,
every pair of completed trials of the same seed whose points differ in exactly one
parameter — going from the base config's level to another — contributes to that
(axis, level). Per objective: mean ± std of the paired differences, n, a 95% confidence
interval (Student t) and the effect in standard errors (mean / (std / sqrt n)).
With ``tune:`` each side of a pair is its point at its own selected tune values.
"""
from __future__ import annotations

import json
import math
from statistics import mean, stdev

import polars as pl

from carvelab.dashboards.frame import SweepData, trials_frame
from carvelab.dashboards.selection import select_tuned
from carvelab.dashboards.uncertainty import t975
from carvelab.search_space.points import base_levels

def paired_stats(diffs: list[float]) -> dict[str, float]:
    n = len(diffs)
    m = mean(diffs) if n else math.nan
    s = stdev(diffs) if n > 1 else math.nan
    se = s / math.sqrt(n) if n > 1 else math.nan
    half = t975(n - 1) * se if n > 1 else math.nan
    sigma = m / se if n > 1 and se > 0 else (math.inf if n > 1 and m != 0 else math.nan)
    return {"n": n, "mean": m, "std": s, "ci_low": m - half, "ci_high": m + half, "sigma": sigma}


def _pairs_by_label(done: pl.DataFrame) -> dict[str, list[tuple[dict, dict]]]:
    base = {r["seed"]: r for r in done.filter(pl.col("label") == "baseline").iter_rows(named=True)}
    out: dict[str, list] = {}
    for r in done.filter(pl.col("label") != "baseline").iter_rows(named=True):
        if r["seed"] in base:
            out.setdefault(r["label"], []).append((base[r["seed"]], r))
    return out


def _pairs_one_factor(done: pl.DataFrame, base_levels: dict) -> dict[str, list[tuple[dict, dict]]]:
    rows = list(done.iter_rows(named=True))
    out: dict[str, list] = {}
    for a in rows:
        pa = json.loads(a["point"])
        for b in rows:
            pb = json.loads(b["point"])
            if a["seed"] != b["seed"] or pa.keys() != pb.keys():
                continue
            diff = [k for k in pa if pa[k] != pb[k]]
            if len(diff) == 1 and str(pa[diff[0]]) == str(base_levels.get(diff[0])):
                out.setdefault(f"{diff[0]}={pb[diff[0]]}", []).append((a, b))
    return out


def ablation_table(data: SweepData, df: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per (change, objective) with the paired statistics."""
    df = trials_frame(data) if df is None else df
    done = select_tuned(df, data.spec).trials  # with tune: each point at its selected tune values
    if not len(done):
        return pl.DataFrame()
    if data.spec.mode == "ablation":
        pairs = _pairs_by_label(done)
    else:
        pairs = _pairs_one_factor(done, base_levels(data.spec))
    rows = []
    for label, items in pairs.items():
        for metric, direction in data.objectives:
            diffs = [b[metric] - a[metric] for a, b in items
                     if a[metric] is not None and b[metric] is not None]
            base_mean = mean(a[metric] for a, _ in items) if items else math.nan
            stats = paired_stats(diffs)
            rows.append({"change": label, "objective": metric, "direction": direction,
                         "baseline": base_mean, **stats,
                         "relative": stats["mean"] / abs(base_mean) if base_mean else math.nan})
    return pl.DataFrame(rows)


def ablation_markdown(table: pl.DataFrame) -> str:
    if not len(table):
        return "No completed pairs to compare (an ablation needs the baseline and a change with the same seed).\n"
    lines = ["| change | objective | baseline | effect (mean ± std) | relative | 95% CI | n | sigma |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table.iter_rows(named=True):
        lines.append(
            f"| {r['change']} | {r['objective']} ({r['direction'][:3]}) | {_f(r['baseline'])} | "
            f"{_f(r['mean'])} ± {_f(r['std'])} | {_pct(r['relative'])} | [{_f(r['ci_low'])}, {_f(r['ci_high'])}] "
            f"| {r['n']} | {_f(r['sigma'], 2)} |")
    return "\n".join(lines) + "\n" + multiple_comparison_note(table)


def multiple_comparison_note(table: pl.DataFrame) -> str:
    """How many effects were tested, how many intervals exclude zero, and how many of those
    chance alone would give (each interval is at 95% on its own)."""
    tested = table.filter(pl.col("n") > 1) if len(table) else table
    k = len(tested)
    if k < 2:
        return ""
    excluding = int(((tested["ci_low"] > 0) | (tested["ci_high"] < 0)).sum())
    return (f"\n{k} effects tested, each at 95% on its own: {excluding} interval(s) exclude 0, and about "
            f"{0.05 * k:.1f} would by chance alone if no change had any effect. Treat an effect as "
            f"established only if it also holds at the Bonferroni level (95% for all {k} together: "
            f"each at {100 * (1 - 0.05 / k):.2f}%), or in a second sweep with new seeds.\n")


def _f(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}g}"


def _pct(x) -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "–"
    return f"{100 * x:+.1f}%"
