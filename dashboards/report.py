"""Publish a sweep's Pareto front to its tracker (MLflow by default): tags on child runs,
artifacts on the parent.

Child runs get ``pareto_rank`` and ``on_front`` (``true``/``false``), so the MLflow UI's
search ``tags.on_front = 'true'`` lists exactly the front. The parent run gets, under
``pareto/``: ``pareto.html`` (interactive; points link to their runs), ``pareto.png``,
``hypervolume.png`` and ``hypervolume.csv``, ``trials.csv`` and ``trials.parquet``,
``summary.md``, with replicates or in ablation mode ``ablation.md``, and with ``tune:``
``tune.md`` (every point's tune combinations, their validation seed means, the kept one);
each run of a tuned sweep is tagged ``tune_selected``.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Optional

import polars as pl

from carvelab.dashboards import plots
from carvelab.dashboards.ablation import ablation_markdown, ablation_table
from carvelab.dashboards.frame import SweepData, front_table, hypervolume_history, trials_frame
from carvelab.dashboards.selection import select_tuned, tune_markdown, tune_text
from carvelab.dashboards.uncertainty import interval_text, significance_text

logger = logging.getLogger(__name__)


def tag_runs(data: SweepData, df: pl.DataFrame, table: pl.DataFrame) -> int:
    """Set pareto_rank / on_front (and, with tune, tune_selected) on every child run; returns the
    number of runs on the front. A run of a tune value not selected for its point is never on it."""
    rank_of: dict[str, tuple[int, bool]] = {}
    for row in table.iter_rows(named=True):
        for run_id in row.get("run_ids") or [row.get("run_id")]:
            if run_id:
                rank_of[run_id] = (row["pareto_rank"], bool(row.get("tied_with_front")))
    on_front = 0
    held = data.front_tags or {}
    for run_id in df["run_id"].drop_nulls().to_list():
        rank, tied = rank_of.get(run_id, (None, False))
        front = rank == 0
        on_front += front
        tags = {"on_front": "true" if front else "false", "tied_with_front": "true" if tied else "false",
                "pareto_rank": "" if rank is None else str(rank)}
        if data.spec.tune:
            tags["tune_selected"] = "true" if run_id in rank_of else "false"
        # only what changed since the last refresh: a refresh costs what moved, not the whole sweep
        changed = {key: value for key, value in tags.items() if held.get(run_id, {}).get(key) != value}
        if changed:
            data.writer().set_tags(run_id, changed)
    return on_front


def summary_markdown(data: SweepData, df: pl.DataFrame, table: pl.DataFrame, history: pl.DataFrame) -> str:
    counts = df.group_by("state").len().sort("state").rows() if len(df) else []
    lines = [f"# Sweep `{data.name}`", "", f"Mode: {data.spec.mode}; trials: "
             + ", ".join(f"{s.lower()} {n}" for s, n in counts), ""]
    if len(history):
        lines += [f"Hypervolume: {history['hypervolume'][-1]:.6g} after {history['trial_steps'][-1]} training steps.", ""]
    front = table.filter(pl.col("pareto_rank") == 0) if len(table) else table
    tied = table.filter(pl.col("tied_with_front")) if len(table) else table
    replicated = len(data.spec.seeds) > 1
    lines += [f"## Pareto front ({len(front)} points)", ""]
    tested = [f"`{m}` (selected on `{t}`)" for m, t in data.on_test()]
    if tested:
        lines += ["Reported on the test split, evaluated once per run after training: " + ", ".join(tested)
                  + ". Nothing that selected (sampler, pruner, tune values) saw it.", ""]
    if data.spec.tune:
        lines += ["Each point is shown at its tune values with the best validation seed mean "
                  "(`tune.md` lists every combination).", ""]
    if replicated:
        lines += ["Seed means ± the half-width of their 95% interval (Student t), n seeds per point. "
                  + significance_text(table, data.objectives, len(data.spec.seeds)), ""]
    else:
        lines += ["**One seed per point: there is no uncertainty estimate.** Whether two points differ, "
                  "including front and non-front points, is not known from this sweep; add seeds "
                  "(`seeds: [0, 1, 2]`) to get intervals.", ""]
    tuned = bool(data.spec.tune)
    lines += ["| trial | n | " + " | ".join(f"{m} ({d[:3]})" for m, d in data.objectives) + " | point |"
              + (" tune |" if tuned else ""),
              "|---|---|" + "---|" * len(data.objectives) + "---|" + ("---|" if tuned else "")]
    for part in (front, tied):
        for row in part.iter_rows(named=True):
            num = row["numbers"] if "numbers" in row else row["number"]
            mark = "" if row["pareto_rank"] == 0 else " (tied)"
            lines.append(f"| {num}{mark} | {row.get('n', 1)} | "
                         + " | ".join(interval_text(row, m) for m, _ in data.objectives) + f" | `{row['point']}` |"
                         + (f" {tune_text(row.get('tune'))} |" if tuned else ""))
    lines += ["", "Filter the front in the MLflow UI with `tags.on_front = 'true'` "
              "(and the ties with `tags.tied_with_front = 'true'`).", ""]
    return "\n".join(lines)


def publish(data: SweepData, df: Optional[pl.DataFrame] = None) -> dict:
    """Recompute the front and refresh tags and artifacts. Returns a small summary dict."""
    df = trials_frame(data) if df is None else df
    if data.parent_run_id is None or not len(df):
        return {"front": 0, "front_runs": 0, "hypervolume": 0.0}
    table = front_table(data, df)
    history = hypervolume_history(df, data.objectives)
    on_front = tag_runs(data, df, table)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "pareto.html").write_text(plots.pareto_html(table, data.objectives, data.name, data.store.run_link))
        plots.pareto_png(table, data.objectives, out / "pareto.png")
        plots.hypervolume_png(history, out / "hypervolume.png")
        history.write_csv(out / "hypervolume.csv")
        flat = df.with_columns([pl.col(c).cast(pl.Utf8) for c in df.columns if df[c].dtype == pl.Null])
        flat.write_csv(out / "trials.csv")
        flat.write_parquet(out / "trials.parquet")
        (out / "summary.md").write_text(summary_markdown(data, df, table, history))
        if data.spec.mode == "ablation" or len(data.spec.seeds) > 1:
            (out / "ablation.md").write_text(ablation_markdown(ablation_table(data, df)))
        if data.spec.tune:
            (out / "tune.md").write_text(tune_markdown(select_tuned(df, data.spec)))
        for path in sorted(out.iterdir()):
            data.writer().log_artifact(data.parent_run_id, path, "pareto")
    hv = float(history["hypervolume"][-1]) if len(history) else 0.0
    front = int((table["pareto_rank"] == 0).sum()) if len(table) else 0  # points, as the driver counts them
    data.writer().set_tags(data.parent_run_id, {"pareto.front_size": str(front), "pareto.front_runs": str(on_front),
                                                "pareto.hypervolume": f"{hv:.6g}"})
    return {"front": front, "front_runs": on_front, "hypervolume": hv}
