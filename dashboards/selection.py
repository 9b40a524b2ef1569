"""Tuning per point: which tune values a point is reported with, chosen on validation data.

A sweep with ``tune:`` trains every point at every combination of the tune values and every
seed. Per point, the combination kept is the one with the best **seed mean** of the
selection metric (the first validation objective, e.g. ``val_accuracy``) among the
combinations whose every seed completed; ties go to the earlier combination in file order.
The point is then reported with the runs of that combination only, on the test split
(``frame``: ``val_accuracy`` is reported as ``test_accuracy``), so the selection does not
inflate what is reported.

Why the seed mean and not a choice per seed: a choice per seed takes, for every seed, the
luckiest value, which inflates the point by the maximum of noisy draws, and reports a
point no single configuration reproduces. One choice on the mean is one configuration (the
one ``export`` writes), and its seeds' spread is the uncertainty of that configuration.

Why every seed must have completed: a combination with a pruned or failed seed would be
averaged over its surviving (better) seeds only. Pruned runs are still useful: they end
bad combinations early, and a point none of whose combinations completed is not reported.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Optional

import polars as pl

from carvelab.search_space.sweep_spec import INTERMEDIATE_METRICS, SweepSpec


def selection_objective(spec: SweepSpec) -> tuple[str, str]:
    """(metric, direction) tune values are chosen on: the first validation objective, else the
    first quality objective (``train_loss``)."""
    quality = [(o.metric, o.direction) for o in spec.objectives if o.metric in INTERMEDIATE_METRICS]
    on_val = [q for q in quality if q[0].startswith("val_")]
    return (on_val or quality)[0]


@dataclass
class Selection:
    """``trials``: the completed runs each point is reported with (all completed runs without
    ``tune:``); ``choices``: one row per (point, tune combination) with its seed mean of the
    selection metric, its completed and planned seeds and whether it was kept."""

    trials: pl.DataFrame
    choices: pl.DataFrame
    metric: Optional[str] = None
    direction: Optional[str] = None


def select_tuned(df: pl.DataFrame, spec: SweepSpec) -> Selection:
    done = df.filter(pl.col("state") == "COMPLETE") if len(df) else df
    if not spec.tune or not len(done):
        return Selection(done, pl.DataFrame())
    metric, direction = selection_objective(spec)
    seeds = len(spec.seeds)
    order = _file_order(spec)
    rows, kept = [], set()
    for point in done["point"].unique(maintain_order=True).to_list():
        runs = done.filter(pl.col("point") == point)
        best = None
        for tune in sorted(runs["tune"].unique().to_list(), key=lambda t: order.get(t, len(order))):
            values = [v for v in runs.filter(pl.col("tune") == tune)[metric].to_list()
                      if v is not None and math.isfinite(v)]
            mean = sum(values) / len(values) if values else math.nan
            rows.append({"point": point, "tune": tune, "selection_mean": mean, "completed": len(values),
                         "seeds": seeds, "kept": False})
            if len(values) == seeds and (best is None or _better(mean, best[1], direction)):
                best = (tune, mean)
        if best is not None:
            kept.add((point, best[0]))
    choices = pl.DataFrame(rows).with_columns(
        pl.Series("kept", [(r["point"], r["tune"]) in kept for r in rows], dtype=pl.Boolean))
    trials = done.filter(pl.struct(["point", "tune"]).map_elements(
        lambda r: (r["point"], r["tune"]) in kept, return_dtype=pl.Boolean))
    return Selection(trials, choices, metric, direction)


def _better(a: float, b: float, direction: str) -> bool:
    return a > b if direction == "maximize" else a < b


def _file_order(spec: SweepSpec) -> dict[str, int]:
    """A tune combination's JSON (as ``frame`` writes it) -> its index in file order (ties go first)."""
    from carvelab.search_space.points import tune_points

    return {json.dumps(t, sort_keys=True, default=str): i for i, t in enumerate(tune_points(spec))}


def tune_text(tune: Optional[str]) -> str:
    """``{"train.lr": 0.001}`` (JSON) -> ``train.lr=0.001``; "" without tune values."""
    values = json.loads(tune) if tune else {}
    return ", ".join(f"{k}={v}" for k, v in values.items())


def tune_markdown(selection: Selection) -> str:
    """Every point's tune combinations with the seed mean they were selected on; the kept one marked."""
    if not len(selection.choices):
        return "No point has a completed tune combination yet.\n"
    lines = [f"Tune values are selected per point on the seed mean of `{selection.metric}` "
             f"({selection.direction}), among the combinations whose every seed completed; the point is "
             "reported with the kept combination, on the test split.", "",
             f"| point | tune | {selection.metric} (seed mean) | completed seeds | kept |", "|---|---|---|---|---|"]
    for r in selection.choices.iter_rows(named=True):
        mean = "–" if not math.isfinite(r["selection_mean"]) else f"{r['selection_mean']:.4g}"
        lines.append(f"| `{r['point']}` | {tune_text(r['tune'])} | {mean} | {r['completed']}/{r['seeds']} | "
                     f"{'**yes**' if r['kept'] else ''} |")
    return "\n".join(lines) + "\n"
