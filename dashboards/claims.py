"""Verdicts on a claim study's claims: supported, contradicted or inconclusive at 95%.

For each claim (``search_space/claims.py``) the runs of ``change`` and of ``against`` (the
baseline unless named) are paired by seed, each point at its selected tune values when
the sweep tunes (``dashboards/selection.py``), and the paired differences of the claim's
metric give a mean effect and a 95% Student-t interval (``ablation.paired_stats``).

    expect increase   supported if the interval lies above 0, contradicted if below 0,
                      inconclusive if it contains 0
    expect decrease   the mirror image
    expect relative   on the per-seed relative effects (change - against) / |against|:
                      supported if the interval lies inside [R - T, R + T], contradicted
                      if it lies wholly outside, inconclusive if it straddles an edge

Fewer than two pairs give no interval: inconclusive, saying so. Each row also keeps the
paired values seed by seed, and an inconclusive verdict says when an arm's seeds spread over
more than the effect: whether that is seed noise around a null or seeds that fail to learn
(some near chance, others near 1) shows in the per-seed values. Each verdict is at 95% on
its own; with several claims the table says how many verdicts chance alone could flip.
The table goes to the terminal, to ``claims/claims.md`` and ``claims/claims.json`` on the
sweep's parent run, and its verdicts to the parent run's tags ``claim.<i>.verdict`` and
``claims.summary``.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Optional

import polars as pl

from carvelab.dashboards.ablation import paired_stats
from carvelab.dashboards.frame import SweepData, json_safe, trials_frame
from carvelab.dashboards.selection import select_tuned
from carvelab.search_space.points import change_label
from carvelab.search_space.sweep_spec import ClaimSpec, SweepSpec

VERDICTS = ("supported", "contradicted", "inconclusive")


def verdict(claim: ClaimSpec, diffs: list[float], relatives: list[float]) -> tuple[str, dict, str]:
    """(verdict, the statistics it rests on, why) for a claim's paired differences."""
    stats = paired_stats(relatives if claim.expect == "relative" else diffs)
    if stats["n"] < 2:
        return "inconclusive", stats, f"{stats['n']} seed pair(s): no interval (needs 2 or more seeds)"
    lo, hi = stats["ci_low"], stats["ci_high"]
    if claim.expect in ("increase", "decrease"):
        sign = 1.0 if claim.expect == "increase" else -1.0
        lo, hi = sorted((sign * lo, sign * hi))
        if lo > 0:
            return "supported", stats, f"the 95% interval excludes 0 on the claimed side ({claim.expect})"
        if hi < 0:
            return "contradicted", stats, "the 95% interval excludes 0 on the opposite side"
        return "inconclusive", stats, "the 95% interval contains 0"
    band = (claim.relative - claim.tolerance, claim.relative + claim.tolerance)
    if band[0] <= lo and hi <= band[1]:
        return "supported", stats, f"the 95% interval lies within the claimed {_band(claim)}"
    if hi < band[0] or lo > band[1]:
        return "contradicted", stats, f"the 95% interval lies outside the claimed {_band(claim)}"
    return "inconclusive", stats, f"the 95% interval overlaps the edge of the claimed {_band(claim)}"


def _band(claim: ClaimSpec) -> str:
    return f"{100 * claim.relative:+.1f}% ± {100 * claim.tolerance:.1f}%"


def _column(df: pl.DataFrame, metric: str) -> Optional[str]:
    for name in (f"m.{metric}", metric):
        if name in df.columns:
            return name
    return None


def claims_table(data: SweepData, df: Optional[pl.DataFrame] = None) -> list[dict]:
    """One row per claim of ``data.spec``: the effect, its interval, n, the verdict and why."""
    return claim_rows(data.spec, trials_frame(data) if df is None else df)


def claim_rows(spec: SweepSpec, df: pl.DataFrame) -> list[dict]:
    """``claims_table`` on a trials frame (``frame.trials_frame``'s columns: state, seed, label,
    point, tune, the told objectives and ``m.<metric>`` per logged metric)."""
    done = select_tuned(df, spec).trials if len(df) else df
    rows = []
    for i, claim in enumerate(spec.claims):
        change, against = change_label(claim.change), change_label(claim.against)
        column = _column(done, claim.metric) if len(done) else None
        diffs, relatives, base, mine, seeds = [], [], [], [], []
        if column is not None:
            by_seed = {r["seed"]: r[column] for r in done.filter(pl.col("label") == against).iter_rows(named=True)}
            for r in sorted(done.filter(pl.col("label") == change).iter_rows(named=True), key=lambda r: r["seed"]):
                a, b = by_seed.get(r["seed"]), r[column]
                if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
                    continue
                seeds.append(r["seed"])
                diffs.append(b - a)
                base.append(a)
                mine.append(b)
                if a != 0:
                    relatives.append((b - a) / abs(a))
        result, stats, why = verdict(claim, diffs, relatives)
        if result == "inconclusive" and len(seeds) >= 2 and claim.expect != "relative":
            why += seed_spread_note(mine, base, stats["mean"])
        if claim.metric == "peak_mem_mb" and column is not None and not _per_trial_memory(done, change, against):
            result, why = "inconclusive", ("peak_mem_mb was not measured per trial (on a CPU it is the worker "
                                           "process's resident-set high-water mark, which earlier trials of "
                                           "that process may have set); judge memory claims on a GPU")
        rows.append({"index": i, "name": claim.name, "source": claim.source, "change": change,
                     "against": against, "metric": claim.metric, "expect": _expected(claim),
                     "scale": "relative" if claim.expect == "relative" else "absolute",
                     "seeds": seeds, "change_by_seed": mine, "against_by_seed": base,
                     "change_mean": sum(mine) / len(mine) if mine else math.nan,
                     "against_mean": sum(base) / len(base) if base else math.nan,
                     **{k: stats[k] for k in ("n", "mean", "std", "ci_low", "ci_high")},
                     "verdict": result, "why": why if column is not None else
                     f"no run logged {claim.metric!r}"})
    return rows


def seed_spread_note(change: list[float], against: list[float], effect: float) -> str:
    """``""``, or why an inconclusive claim is undecided when its arms' seeds spread over a
    range wider than the effect: the seeds disagree with each other more than the arms do."""
    spread = max(max(change) - min(change), max(against) - min(against))
    if not spread > abs(effect):
        return ""
    return f"; the seeds of an arm spread over {spread:.3g}, more than the effect ({abs(effect):.3g})"


def _per_trial_memory(done: pl.DataFrame, *labels: str) -> bool:
    """Whether every run of ``labels`` measured its own peak memory (a GPU trial)."""
    if "m.peak_mem_per_trial" not in done.columns:
        return False
    flags = done.filter(pl.col("label").is_in(list(labels)))["m.peak_mem_per_trial"].to_list()
    return bool(flags) and all(f == 1.0 for f in flags)


def _expected(claim: ClaimSpec) -> str:
    return _band(claim) if claim.expect == "relative" else claim.expect


def summary_line(rows: list[dict]) -> str:
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    return ", ".join(f"{n} {v}" for v, n in counts.items())


def claims_markdown(rows: list[dict]) -> str:
    if not rows:
        return "This sweep declares no claims.\n"
    lines = ["| # | claim | change vs against | metric | expected | effect (95% CI) | n | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pct = r["scale"] == "relative"
        lines.append(
            f"| {r['index']} | {r['name']} | {r['change']} vs {r['against']} | {r['metric']} | {r['expect']} | "
            f"{_num(r['mean'], pct)} [{_num(r['ci_low'], pct)}, {_num(r['ci_high'], pct)}] | {r['n']} | "
            f"**{r['verdict']}** |")
    lines.append("")
    for r in rows:
        source = f" Source: {r['source']}." if r["source"] else ""
        per_seed = ""
        if r.get("seeds"):
            per_seed = (f" Per seed ({', '.join(str(x) for x in r['seeds'])}): change "
                        f"{', '.join(_num(x, False) for x in r['change_by_seed'])}; against "
                        f"{', '.join(_num(x, False) for x in r['against_by_seed'])}.")
        lines.append(f"- {r['index']}: {r['verdict']}: {r['why']}; {r['metric']} means: change "
                     f"{_num(r.get('change_mean'), False)}, against {_num(r['against_mean'], False)}."
                     f"{per_seed}{source}")
    k = len(rows)
    lines.append("")
    lines.append(f"Verdicts: {summary_line(rows)}. Each is at 95% on its own"
                 + (f"; among {k} claims about {0.05 * k:.1f} could be flipped by chance alone, so "
                    "confirm a surprising one with new seeds." if k > 1 else "."))
    return "\n".join(lines) + "\n"


def _num(x, pct: bool) -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "–"
    return f"{100 * x:+.2f}%" if pct else f"{x:.4g}"


def publish_claims(data: SweepData, rows: list[dict]) -> None:
    """Log claims.md / claims.json under ``claims/`` of the parent run and tag its verdicts."""
    if data.parent_run_id is None or not rows:
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "claims.md").write_text(claims_markdown(rows))
        (out / "claims.json").write_text(json.dumps([json_safe(r) for r in rows], indent=2))
        for path in sorted(out.iterdir()):
            data.writer().log_artifact(data.parent_run_id, path, "claims")
    tags = {"claims.summary": summary_line(rows)}
    for r in rows:
        tags.update({f"claim.{r['index']}.verdict": r["verdict"], f"claim.{r['index']}.name": r["name"][:250]})
    data.writer().set_tags(data.parent_run_id, tags)
