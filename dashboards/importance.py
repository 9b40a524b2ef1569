"""Which choices matter: the axes of a sweep ranked by their effect on each objective.

Two methods, chosen by what the design allows:

- ``paired`` (grid and ablation sweeps): for every axis level, the paired differences from
  the base config's level (``dashboards.ablation``: same seed, one parameter changed; in a
  grid every combination of the other axes contributes a pair), as mean, 95% interval and n.
  An axis's importance is its largest absolute mean effect over its levels, in the
  objective's units; its interval is that level's. An axis whose every interval covers 0
  has no effect this sweep can show.
- ``fanova`` and ``ped_anova`` (search sweeps, whose points are not paired): Optuna's
  importance evaluators over the study's trials, one objective at a time (PED-ANOVA is told
  lower is better, so maximised objectives are negated). These are fractions of variance
  (fANOVA) or of the top quantile's density shift (PED-ANOVA), summing to 1 per objective,
  without intervals. They read the values Optuna holds: validation, not test.

``carvelab importance NAME`` prints the table and logs ``importance/importance.md``,
``importance.csv`` and ``importance.png`` (one bar chart per objective, with the paired
intervals as error bars) to the sweep's parent run.
"""
from __future__ import annotations

import logging
import math
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import polars as pl

from carvelab.dashboards.ablation import ablation_table
from carvelab.dashboards.frame import SweepData, trials_frame

logger = logging.getLogger(__name__)
METHODS = ("auto", "paired", "fanova", "ped_anova")
MIN_TRIALS = 30  # below this many completed trials the evaluators' rankings are flagged as unreliable


def method_for(data: SweepData, method: str = "auto") -> str:
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not allowed; choose one of {list(METHODS)}")
    if method != "auto":
        return method
    return "fanova" if data.spec.mode == "search" else "paired"


def paired_importance(data: SweepData, df: Optional[pl.DataFrame] = None) -> pl.DataFrame:
    """One row per (axis, objective): the level with the largest absolute paired effect."""
    table = ablation_table(data, df)
    if not len(table):
        return pl.DataFrame()
    # a grid's one-factor change is "axis=level"; an ablation's change (maybe several keys) is its own axis
    axis = pl.col("change") if data.spec.mode == "ablation" else pl.col("change").str.split("=").list.first()
    table = table.with_columns(axis.alias("axis"), pl.col("mean").abs().alias("importance"))
    best = (table.sort("importance", descending=True, nulls_last=True)
            .group_by(["axis", "objective"], maintain_order=True).first())
    return best.select(["axis", "objective", "direction", pl.col("change").alias("level"), "importance", "mean",
                        "ci_low", "ci_high", "n"]).with_columns(pl.lit("paired").alias("method")) \
        .sort(["objective", "importance"], descending=[False, True], nulls_last=True)


def evaluator_importance(data: SweepData, method: str, seed: int = 0) -> pl.DataFrame:
    """Optuna's fANOVA or PED-ANOVA importances per objective over the completed trials."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    done = [t for t in data.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    rows = []
    for k, (metric, direction) in enumerate(data.told_objectives):
        sign = -1.0 if (method == "ped_anova" and direction == "maximize") else 1.0
        evaluator = FanovaImportanceEvaluator(seed=seed) if method == "fanova" else PedAnovaImportanceEvaluator()
        varied = [p for p in {p for t in done for p in t.params} if len({str(t.params.get(p)) for t in done}) > 1]
        if len(done) < 2 or not varied:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = optuna.importance.get_param_importances(
                data.study, evaluator=evaluator, params=sorted(varied),
                target=lambda t, k=k, s=sign: s * t.values[k])
        for axis, value in scores.items():
            rows.append({"axis": axis, "objective": metric, "direction": direction, "level": "",
                         "importance": float(value), "mean": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                         "n": len(done), "method": method})
    if not rows:
        return pl.DataFrame()
    return pl.DataFrame(rows).sort(["objective", "importance"], descending=[False, True])


def importance_table(data: SweepData, method: str = "auto", df: Optional[pl.DataFrame] = None) -> pl.DataFrame:
    method = method_for(data, method)
    if method == "paired":
        return paired_importance(data, trials_frame(data) if df is None else df)
    return evaluator_importance(data, method)


def importance_markdown(table: pl.DataFrame) -> str:
    if not len(table):
        return "Nothing to rank yet: no completed pairs (paired) or fewer than two completed trials (evaluators).\n"
    method = table["method"][0]
    lines = []
    if method == "paired":
        lines += ["Axes ranked per objective by their largest paired effect (same seed, one axis changed from "
                  "the base level): mean difference, 95% interval, n pairs. `shown` = the interval excludes 0.", "",
                  "| objective | axis | level | effect | 95% CI | n | shown |", "|---|---|---|---|---|---|---|"]
        for r in table.iter_rows(named=True):
            shown = r["ci_low"] > 0 or r["ci_high"] < 0
            lines.append(f"| {r['objective']} ({r['direction'][:3]}) | {r['axis']} | {r['level']} | {r['mean']:.4g} | "
                         f"[{r['ci_low']:.4g}, {r['ci_high']:.4g}] | {r['n']} | {'yes' if shown else 'no'} |")
    else:
        n = int(table["n"].max())
        lines += [f"Axes ranked per objective by Optuna's {method} importance over the {n} completed trials "
                  "(validation values; fractions summing to 1 per objective, no intervals)."
                  + (f" **{n} trials are too few for these to mean much**: with few points the axes are "
                     "confounded, and an axis can look important for an objective it cannot change."
                     if n < MIN_TRIALS else ""), "",
                  "| objective | axis | importance |", "|---|---|---|"]
        for r in table.iter_rows(named=True):
            lines.append(f"| {r['objective']} ({r['direction'][:3]}) | {r['axis']} | {r['importance']:.3f} |")
    return "\n".join(lines) + "\n"


def importance_png(table: pl.DataFrame, path: Path) -> bool:
    """One horizontal bar chart per objective; paired effects with their intervals."""
    from carvelab.dashboards.plots import _pyplot

    plt = _pyplot()
    if plt is None or not len(table):
        return False
    objectives = table["objective"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(len(objectives), 1, figsize=(6.4, 1.2 + 0.45 * len(table)), squeeze=False)
    paired = table["method"][0] == "paired"
    for ax, objective in zip(axes[:, 0], objectives):
        part = table.filter(pl.col("objective") == objective).reverse()
        labels = [f"{a} ({lv})" if lv else a for a, lv in zip(part["axis"], part["level"])]
        if paired:
            means = part["mean"].to_list()
            err = [[m - lo for m, lo in zip(means, part["ci_low"])], [hi - m for m, hi in zip(means, part["ci_high"])]]
            err = [[0.0 if not math.isfinite(e) else e for e in side] for side in err]
            shown = [(lo > 0 or hi < 0) for lo, hi in zip(part["ci_low"], part["ci_high"])]
            ax.barh(labels, means, xerr=err, color=["#d62728" if s else "#9ecae1" for s in shown], capsize=3)
            ax.axvline(0, color="#444", linewidth=0.8)
            ax.set_xlabel(f"paired effect on {objective} (95% interval; red: excludes 0)", fontsize=8)
        else:
            ax.barh(labels, part["importance"].to_list(), color="#1f77b4")
            n = int(part["n"].max())
            ax.set_xlabel(f"{table['method'][0]} importance for {objective} ({n} trials"
                          + (", too few to rely on)" if n < MIN_TRIALS else ")"), fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def publish_importance(data: SweepData, table: pl.DataFrame) -> None:
    """Log importance.md / .csv / .png under ``importance/`` of the parent run."""
    if data.parent_run_id is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "importance.md").write_text(importance_markdown(table))
        if len(table):
            table.write_csv(out / "importance.csv")
            importance_png(table, out / "importance.png")
        for path in sorted(out.iterdir()):
            data.writer().log_artifact(data.parent_run_id, path, "importance")
