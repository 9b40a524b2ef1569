"""Importance recovers planted effects: paired effects on a grid, Optuna's evaluators on a search."""
import json
import random

import optuna
import polars as pl
import pytest

from carvelab.dashboards.frame import SweepData
from carvelab.dashboards.importance import (
    importance_markdown, importance_png, importance_table, method_for, paired_importance,
)
from carvelab.search_space.sweep_loading import load_sweep
from tests.trials.sweep_helpers import tiny_sweep

SPACE = {"erase_axis": ["key", "value"], "write_gate": ["scalar", "per_value"]}


def _data(tmp_path, mode, study=None):
    spec = load_sweep(tiny_sweep("imp", tmp_path, mode=mode, budget={} if mode == "grid" else {"trials": 50},
                                 seeds=[0, 1, 2, 3], space=SPACE))
    return SweepData("imp", tmp_path, spec, study, "", None, None)


def test_paired_importance_recovers_the_planted_axis(tmp_path):
    """val_accuracy = 0.5 + 0.2 [erase_axis = value] + noise; write_gate has no effect."""
    rng = random.Random(0)
    rows, n = [], 0
    for axis in SPACE["erase_axis"]:
        for gate in SPACE["write_gate"]:
            for seed in range(4):
                acc = 0.5 + (0.2 if axis == "value" else 0.0) + rng.gauss(0, 0.01)
                rows.append({"number": n, "state": "COMPLETE", "seed": seed, "label": "", "run_id": f"r{n}",
                             "point": json.dumps({"erase_axis": axis, "write_gate": gate}, sort_keys=True),
                             "tune": "{}", "val_accuracy": acc, "params": 100.0})
                n += 1
    data = _data(tmp_path, "grid")
    assert method_for(data) == "paired"
    table = paired_importance(data, pl.DataFrame(rows))
    acc = table.filter(pl.col("objective") == "val_accuracy")
    assert acc["axis"].to_list() == ["erase_axis", "write_gate"]  # ranked: the planted axis first
    top, other = acc.row(0, named=True), acc.row(1, named=True)
    assert top["mean"] == pytest.approx(0.2, abs=0.02) and top["ci_low"] > 0 and top["n"] == 8
    assert other["ci_low"] < 0 < other["ci_high"]  # no effect shown
    text = importance_markdown(table)
    assert "| val_accuracy (max) | erase_axis | erase_axis=value |" in text and "| yes |" in text
    assert importance_png(table, tmp_path / "imp.png") and (tmp_path / "imp.png").stat().st_size > 1000


@pytest.mark.parametrize("method", ["fanova", "ped_anova"])
def test_optuna_evaluators_recover_the_planted_axis_per_objective(tmp_path, method):
    """Objective 0 depends on erase_axis only, objective 1 (minimised) on write_gate only."""
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    rng = random.Random(1)
    dists = {k: optuna.distributions.CategoricalDistribution(v) for k, v in SPACE.items()}
    for _ in range(60):
        t = study.ask(dists)
        acc = (1.0 if t.params["erase_axis"] == "value" else 0.0) + rng.gauss(0, 0.05)
        params = (2.0 if t.params["write_gate"] == "per_value" else 1.0) + rng.gauss(0, 0.05)
        study.tell(t, [acc, params])
    data = _data(tmp_path, "search", study)
    assert method_for(data) == "fanova"
    table = importance_table(data, method)
    for objective, planted in (("val_accuracy", "erase_axis"), ("params", "write_gate")):
        part = table.filter(pl.col("objective") == objective)
        assert part["axis"][0] == planted and part["importance"][0] > 0.8, part
    assert f"Optuna's {method} importance" in importance_markdown(table)


def test_unknown_method_is_refused(tmp_path):
    with pytest.raises(ValueError, match="method='shap' is not allowed"):
        method_for(_data(tmp_path, "grid"), "shap")
