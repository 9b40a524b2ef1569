"""A sweep's trials as a polars DataFrame: the Optuna study joined with its tracked runs.

One row per Optuna trial: ``number, state, reason, seed, label, steps, run_id, point,
tune`` (the run's tune values as JSON, ``{}`` without ``tune:``), one ``p.<name>`` column
per swept parameter, one column per objective (the values told to Optuna: validation),
``m.<metric>`` for every final metric logged to the trial's run (read through the sweep's
``RunStore``, trials/tracking), and, for every
validation objective ``val_X`` whose runs were evaluated on the test split, ``test_X``.

What is reported (fronts, intervals, tables, exports) is measured on the test split:
``SweepData.objectives`` names ``test_X`` for a validation objective ``val_X`` once every
completed run has it (sweeps recorded before test splits existed keep ``val_X``). What is
selected (tune values per point, ``dashboards.selection``) is chosen on validation.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import optuna
import polars as pl

from carvelab.dashboards.pareto import hypervolume_trace, non_dominated_ranks, reference_point
from carvelab.dashboards.selection import select_tuned
from carvelab.dashboards.uncertainty import tied_with_front, with_intervals
from carvelab.search_space.sweep_dir import SweepDir
from carvelab.search_space.sweep_spec import SweepSpec
from carvelab.trials.tracking import RunStore, Tracker, open_store, open_tracker, tracking_uri

logger = logging.getLogger(__name__)


@dataclass
class SweepData:
    name: str
    path: Path
    spec: SweepSpec
    study: optuna.Study
    tracking_uri: str
    store: RunStore                  # reads the runs
    parent_run_id: Optional[str]
    tracker: Optional[Tracker] = None  # writes tags and artifacts (opened on first use: ``writer``)
    reported: Optional[list] = None  # set by trials_frame: the objectives as reported
    front_tags: Optional[dict] = None  # set by trials_frame: run id -> its FRONT_TAGS as the store holds them

    def writer(self) -> Tracker:
        if self.tracker is None:
            self.tracker = open_tracker(self.spec.tracking, self.path)
        return self.tracker

    @property
    def told_objectives(self) -> list[tuple[str, str]]:
        """The objectives as told to Optuna (measured on validation)."""
        return [(o.metric, o.direction) for o in self.spec.objectives]

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """The objectives as reported: ``test_X`` for ``val_X`` where the runs have it (see above)."""
        return self.reported if self.reported is not None else self.told_objectives

    def on_test(self) -> list[tuple[str, str]]:
        """(reported, told) for every objective reported on the test split instead of validation."""
        return [(m, t) for (m, _), (t, _) in zip(self.objectives, self.told_objectives) if m != t]


def open_sweep(name: str, root: str | Path = "carvelab_sweeps") -> SweepData:
    """Open a sweep's Optuna study and its runs from its directory."""
    folder = SweepDir(root, name)
    spec = folder.spec()
    storage = spec.storage or folder.optuna_url
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=storage)
    store = open_store(spec.tracking, folder.path)
    parent = store.parent(name)
    return SweepData(name, folder.path, spec, study, tracking_uri(spec.tracking, folder.path), store,
                     parent.run_id if parent is not None else None)


# The tags ``report.tag_runs`` keeps on every child run.
FRONT_TAGS = ("on_front", "tied_with_front", "pareto_rank", "tune_selected")


def _run_metrics(data: SweepData) -> dict[str, dict]:
    if data.parent_run_id is None:
        return {}
    return {r.run_id: {"metrics": dict(r.metrics), "status": r.status,
                       "tags": {k: r.tags[k] for k in FRONT_TAGS if k in r.tags}}
            for r in data.store.children(data.parent_run_id)}


def trials_frame(data: SweepData) -> pl.DataFrame:
    runs = _run_metrics(data)
    data.front_tags = {run_id: run["tags"] for run_id, run in runs.items()}
    params = sorted({k for t in data.study.get_trials(deepcopy=False) for k in t.params})
    metric_names = sorted({k for r in runs.values() for k in r["metrics"]})
    rows = []
    for t in data.study.get_trials(deepcopy=False):
        run_id = t.user_attrs.get("mlflow_run_id")
        run = runs.get(run_id, {"metrics": {}, "status": None})
        row = {
            "number": t.number, "state": t.state.name, "reason": t.user_attrs.get("reason"),
            "seed": int(t.user_attrs.get("seed", 0)), "label": t.user_attrs.get("label", ""),
            "steps": int(t.user_attrs.get("steps", 0)), "run_id": run_id, "run_status": run["status"],
            "point": json.dumps(t.params, sort_keys=True, default=str),
            "tune": json.dumps(dict(t.user_attrs.get("tune") or {}), sort_keys=True, default=str),
        }
        for p in params:
            row[f"p.{p}"] = None if p not in t.params else str(t.params[p])
        for k, (metric, _) in enumerate(data.told_objectives):
            row[metric] = float(t.values[k]) if t.values is not None else None
        for m in metric_names:
            row[f"m.{m}"] = run["metrics"].get(m)
        rows.append(row)
    schema_hint = {m: pl.Float64 for m, _ in data.told_objectives}
    schema_hint.update({f"m.{m}": pl.Float64 for m in metric_names})
    df = pl.DataFrame(rows, schema_overrides=schema_hint, infer_schema_length=None) if rows else pl.DataFrame()
    df, data.reported = with_reported(df, data.told_objectives)
    return df


def with_reported(df: pl.DataFrame, told: list[tuple[str, str]]) -> tuple[pl.DataFrame, list[tuple[str, str]]]:
    """(the frame with a column per reported ``test_X`` objective, the objectives as reported)."""
    reported = reported_objectives(told, df)
    tests = [m for m, _ in reported if m.startswith("test_")]
    return (df.with_columns([pl.col(f"m.{m}").alias(m) for m in tests]) if tests else df), reported


def reported_objectives(told: list[tuple[str, str]], df: pl.DataFrame) -> list[tuple[str, str]]:
    """``val_X`` -> ``test_X`` for every objective whose completed runs all have ``m.test_X``."""
    done = completed(df)
    out = []
    for metric, direction in told:
        test = "test_" + metric[4:] if metric.startswith("val_") else None
        has = (test is not None and len(done) and f"m.{test}" in done.columns
               and done[f"m.{test}"].null_count() == 0)
        out.append((test, direction) if has else (metric, direction))
    return out


def json_safe(row: dict) -> dict:
    """A table row with non-finite floats as None (JSON has no NaN or infinity)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def completed(df: pl.DataFrame) -> pl.DataFrame:
    return df.filter(pl.col("state") == "COMPLETE") if len(df) else df


def aggregate_seeds(df: pl.DataFrame, objectives: list[tuple[str, str]]) -> pl.DataFrame:
    """One row per point: mean, std and n of each objective over its completed seeds."""
    done = completed(df)
    if not len(done):
        return done
    aggs = [pl.len().alias("n"), pl.col("seed").sort().alias("seeds"), pl.col("run_id").alias("run_ids"),
            pl.col("number").alias("numbers"), pl.col("label").first().alias("label"),
            pl.col("tune").first().alias("tune")]
    for metric, _ in objectives:
        aggs += [pl.col(metric).mean().alias(metric), pl.col(metric).std().alias(f"{metric}.std")]
    return done.group_by("point", maintain_order=True).agg(aggs)


def with_ranks(df: pl.DataFrame, objectives: list[tuple[str, str]]) -> pl.DataFrame:
    """Add ``pareto_rank`` (0 = front) over the objective columns."""
    if not len(df):
        return df.with_columns(pl.lit(None, dtype=pl.Int64).alias("pareto_rank"))
    points = df.select([m for m, _ in objectives]).rows()
    ranks = non_dominated_ranks(points, [d for _, d in objectives])
    return df.with_columns(pl.Series("pareto_rank", ranks, dtype=pl.Int64))


def front_table(data: SweepData, df: Optional[pl.DataFrame] = None) -> pl.DataFrame:
    """Completed trials (points averaged over seeds when the sweep has replicates, with
    standard errors and 95% intervals) with ranks and ``tied_with_front`` (dashboards.uncertainty).
    With ``tune:``, each point's runs at its selected tune values (dashboards.selection)."""
    df = trials_frame(data) if df is None else df
    objectives = data.objectives
    chosen = select_tuned(df, data.spec).trials
    if len(data.spec.seeds) > 1:
        table = aggregate_seeds(chosen, objectives)
        if len(table):
            table = with_intervals(table, chosen, objectives)
    else:
        table = chosen
    table = with_ranks(table, objectives)
    table = table.with_columns(pl.Series("tied_with_front", tied_with_front(table, objectives) if len(table) else [],
                                         dtype=pl.Boolean))
    return table.sort(["pareto_rank", objectives[0][0]], descending=[False, objectives[0][1] == "maximize"])


def hypervolume_history(df: pl.DataFrame, objectives: list[tuple[str, str]],
                        reference: Optional[list[float]] = None) -> pl.DataFrame:
    """Hypervolume of the completed trials so far, after each trial (by number) and per trial-steps."""
    if not len(df):
        return pl.DataFrame({"number": [], "trial_steps": [], "hypervolume": []})
    df = df.sort("number")
    directions = [d for _, d in objectives]
    done_points = completed(df).select([m for m, _ in objectives]).rows()
    if reference is None:
        if not done_points:
            return pl.DataFrame({"number": [], "trial_steps": [], "hypervolume": []})
        reference = reference_point(done_points, directions)
    rows, counted, points = [], [], []
    steps = 0
    for row in df.iter_rows(named=True):
        steps += row["steps"] or 0
        if row["state"] == "COMPLETE" and all(row[m] is not None and math.isfinite(row[m]) for m, _ in objectives):
            points.append([row[m] for m, _ in objectives])
        counted.append(len(points))  # how many points the hypervolume after this trial covers
        rows.append({"number": row["number"], "trial_steps": steps})
    trace = hypervolume_trace(points, reference, directions)
    for row, n in zip(rows, counted):
        row["hypervolume"] = trace[n - 1] if n else 0.0
    return pl.DataFrame(rows)
