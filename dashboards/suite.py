"""Suite scores, MAD-style: a sweep that declares a ``suite:`` (its points' ``suite``
parameter, ``carvelab.search_space.suite_loading``) or whose points include task axes
(``task.name`` and any ``task.*`` key) is read as architectures x task settings.

A point's ``suite`` label, or else its ``task.*`` values, is its *setting* (its task the
setting's; the base's task where the sweep does not vary it), the rest its *architecture*.
With a suite, a task's settings are the suite's selected settings, whether or not each
has runs yet; with task axes, the settings that appear among the runs. For each architecture:

    per setting   the best run of the setting (with ``tune:``, the tune values with the best
                  validation seed mean, ``dashboards/selection.py``), on the reported metric
                  (test_X for val_X)
    per task      the mean over the task's settings
    overall       the mean over the tasks

as MAD (Poli et al. 2024) aggregates. Below the table, for each task and the overall score,
the pairs of architectures whose 95% intervals do not overlap (a conservative reading: it
ignores the pairing by seed), and the tasks where no pair separates, which therefore cannot
rank the architectures at this size (a saturated task shows up here). Uncertainty comes from the seeds: each seed's task and
overall scores are computed from that seed's runs, and the table shows their mean with a
95% Student-t interval over seeds. An architecture enters a task's score only for seeds
where every setting of that task completed, and the overall score only for seeds where
every task did, so no mean is taken over a different set of settings per architecture.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Optional

import polars as pl

from carvelab.dashboards.frame import SweepData, json_safe, trials_frame
from carvelab.dashboards.selection import select_tuned
from carvelab.dashboards.uncertainty import mean_interval
from carvelab.search_space.sweep_spec import SUITE_PARAM, SweepSpec

OVERALL = "(mean of tasks)"


def suite_rows(spec: SweepSpec, df: pl.DataFrame, metric: str) -> list[dict]:
    """Per architecture: one row per task and one overall row (mean, 95% interval, n seeds)."""
    done = select_tuned(df, spec).trials if len(df) else df
    if not len(done) or metric not in done.columns:
        return []
    base_task = (spec.base.get("task") or {}).get("name", "mqar")
    settings: dict[str, set] = {}                     # task -> every setting of the suite, or the sweep ran
    for label, mapping in spec.suite_settings.items():
        settings.setdefault(mapping["name"], set()).add(label)
    values: dict[tuple, dict[int, dict[str, float]]] = {}   # (arch, task) -> seed -> setting -> value
    for r in done.iter_rows(named=True):
        point = json.loads(r["point"])
        arch = json.dumps({k: v for k, v in point.items() if not _is_setting(k)}, sort_keys=True)
        if spec.suite:
            setting = point[SUITE_PARAM]
            task = spec.suite_settings[setting]["name"]
        else:
            setting = json.dumps({k: v for k, v in point.items() if k.startswith("task.")}, sort_keys=True)
            task = point.get("task.name", base_task)
            settings.setdefault(task, set()).add(setting)
        if r[metric] is not None and math.isfinite(r[metric]):
            values.setdefault((arch, task), {}).setdefault(r["seed"], {})[setting] = r[metric]
    rows = []
    for arch in sorted({a for a, _ in values}):
        per_seed_overall: dict[int, list[float]] = {}
        for task in sorted(settings):
            by_seed = values.get((arch, task), {})
            scores = {s: sum(v.values()) / len(v) for s, v in by_seed.items() if set(v) == settings[task]}
            for s, score in scores.items():
                per_seed_overall.setdefault(s, []).append(score)
            rows.append({"architecture": arch, "task": task, "settings": len(settings[task]),
                         **mean_interval(list(scores.values()))})
        complete = [sum(v) / len(v) for v in per_seed_overall.values() if len(v) == len(settings)]
        rows.append({"architecture": arch, "task": OVERALL, "settings": sum(map(len, settings.values())),
                     **mean_interval(complete)})
    return rows


def _is_setting(key: str) -> bool:
    return key == SUITE_PARAM or key.startswith("task.")


def suite_table(data: SweepData, df: Optional[pl.DataFrame] = None) -> tuple[str, list[dict]]:
    """(the metric, the rows) for the sweep's first objective as reported."""
    df = trials_frame(data) if df is None else df
    metric = data.objectives[0][0]
    return metric, suite_rows(data.spec, df, metric)


def suite_markdown(metric: str, rows: list[dict]) -> str:
    tasks = sorted({r["task"] for r in rows} - {OVERALL})
    if len(tasks) < 2 and max((r["settings"] for r in rows if r["task"] != OVERALL), default=0) < 2:
        return ("A suite needs two or more task settings among the sweep's points (a suite: key, a task.name "
                f"axis or task.* axes); this sweep has {len(tasks)} task(s) at one setting.\n")
    lines = [f"{metric}: per setting its best run (tuned on validation), mean over a task's settings, "
             "mean over tasks; seed means with 95% intervals over seeds (n).", "",
             "| architecture | " + " | ".join(tasks) + f" | {OVERALL} |", "|---|" + "---|" * (len(tasks) + 1)]
    by_arch: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_arch.setdefault(r["architecture"], {})[r["task"]] = r
    order = sorted(by_arch, key=lambda a: -_finite(by_arch[a].get(OVERALL, {}).get("mean")))
    for arch in order:
        cells = [_cell(by_arch[arch].get(t)) for t in tasks + [OVERALL]]
        lines.append(f"| {arch} | " + " | ".join(cells) + " |")
    apart = separated_pairs(rows)
    lines.append("")
    for task in tasks + [OVERALL]:
        if apart.get(task):
            pairs = "; ".join(f"{hi} above {lo}" for hi, lo in apart[task])
            lines.append(f"- {task}: disjoint 95% intervals: {pairs}.")
    tied = [t for t in tasks + [OVERALL] if t in apart and not apart[t]]
    if tied:
        lines.append(f"- No two architectures have disjoint 95% intervals on: {', '.join(tied)}.")
    return "\n".join(lines) + "\n"


def separated_pairs(rows: list[dict]) -> dict[str, list[tuple[str, str]]]:
    """{task: [(architecture above, architecture below)]} for the pairs whose intervals over
    seeds (two or more seeds each) do not overlap, the higher first, by descending mean; only
    tasks with two or more such architectures appear."""
    out: dict[str, list[tuple[str, str]]] = {}
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        if r["n"] >= 2 and math.isfinite(r["lo"]) and math.isfinite(r["hi"]):
            by_task.setdefault(r["task"], []).append(r)
    for task, rs in by_task.items():
        if len(rs) < 2:
            continue
        rs = sorted(rs, key=lambda r: -r["mean"])
        out[task] = [(a["architecture"], b["architecture"]) for i, a in enumerate(rs) for b in rs[i + 1:]
                     if a["lo"] > b["hi"]]
    return out


def _finite(x) -> float:
    return x if isinstance(x, float) and math.isfinite(x) else -math.inf


def _cell(r: Optional[dict]) -> str:
    if r is None or not r["n"]:
        return "–"
    if r["n"] < 2:
        return f"{r['mean']:.3f} (n 1)"
    return f"{r['mean']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] (n {r['n']})"


def publish_suite(data: SweepData, metric: str, rows: list[dict]) -> None:
    """Log suite.md / suite.json under ``suite/`` of the parent run."""
    if data.parent_run_id is None or not rows:
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "suite.md").write_text(suite_markdown(metric, rows))
        (out / "suite.json").write_text(json.dumps([json_safe(r) for r in rows], indent=2))
        for path in sorted(out.iterdir()):
            data.writer().log_artifact(data.parent_run_id, path, "suite")
