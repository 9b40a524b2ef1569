"""Tune selection per point: chosen on validation seed means, reported on test, never mixed."""
import json
import math

import polars as pl
import pytest

from carvelab.dashboards.frame import SweepData, front_table, reported_objectives
from carvelab.dashboards.selection import select_tuned, selection_objective, tune_markdown
from carvelab.search_space.sweep_loading import load_sweep
from tests.trials.sweep_helpers import tiny_sweep

LRS = [1e-3, 1e-2]


def spec(tmp_path, seeds=(0, 1), **changes):
    data = tiny_sweep("sel", tmp_path, mode="grid", budget={}, seeds=list(seeds),
                      space={"erase_axis": ["key", "value"]}, tune={"train.lr": LRS}, **changes)
    return load_sweep(data)


def frame(rows):
    """Trials-frame rows: (point, lr, seed, state, val_accuracy, test_accuracy, params)."""
    out = []
    for n, (axis, lr, seed, state, val, test, params) in enumerate(rows):
        out.append({"number": n, "state": state, "reason": None, "seed": seed, "label": "", "steps": 4,
                    "run_id": f"r{n}", "point": json.dumps({"erase_axis": axis}),
                    "tune": json.dumps({"train.lr": lr}), "val_accuracy": val, "params": params,
                    "m.test_accuracy": test, "m.val_accuracy": val, "m.params": params})
    df = pl.DataFrame(out)
    return df.with_columns(pl.col("m.test_accuracy").alias("test_accuracy"))


def test_selection_uses_the_validation_seed_mean_and_reports_that_combination_on_test(tmp_path):
    s = spec(tmp_path)
    # key: lr 1e-3 is better on validation (0.6 vs 0.5 mean), lr 1e-2 better on test (0.9 vs 0.2)
    df = frame([("key", 1e-3, 0, "COMPLETE", 0.7, 0.2, 10.0), ("key", 1e-3, 1, "COMPLETE", 0.5, 0.2, 10.0),
                ("key", 1e-2, 0, "COMPLETE", 0.5, 0.9, 10.0), ("key", 1e-2, 1, "COMPLETE", 0.5, 0.9, 10.0),
                ("value", 1e-3, 0, "COMPLETE", 0.1, 0.8, 20.0), ("value", 1e-3, 1, "COMPLETE", 0.1, 0.8, 20.0),
                ("value", 1e-2, 0, "COMPLETE", 0.3, 0.1, 20.0), ("value", 1e-2, 1, "COMPLETE", 0.4, 0.3, 20.0)])
    sel = select_tuned(df, s)
    chosen = {(json.loads(r["point"])["erase_axis"], json.loads(r["tune"])["train.lr"])
              for r in sel.trials.iter_rows(named=True)}
    assert chosen == {("key", 1e-3), ("value", 1e-2)} and len(sel.trials) == 4
    data = SweepData("sel", tmp_path, s, None, "", None, None)
    data.reported = reported_objectives(data.told_objectives, df)
    assert data.objectives == [("test_accuracy", "maximize"), ("params", "minimize")]
    table = front_table(data, df)
    by_axis = {json.loads(r["point"])["erase_axis"]: r for r in table.iter_rows(named=True)}
    # the reported figure is the test mean of the runs selected on validation, not the best test figure
    assert by_axis["key"]["test_accuracy"] == pytest.approx(0.2)
    assert by_axis["value"]["test_accuracy"] == pytest.approx(0.2)
    assert json.loads(by_axis["value"]["tune"]) == {"train.lr": 1e-2} and by_axis["key"]["n"] == 2


def test_a_combination_with_a_pruned_seed_is_never_selected(tmp_path):
    s = spec(tmp_path)
    df = frame([("key", 1e-3, 0, "COMPLETE", 0.9, 0.9, 1.0), ("key", 1e-3, 1, "PRUNED", None, None, 1.0),
                ("key", 1e-2, 0, "COMPLETE", 0.4, 0.4, 1.0), ("key", 1e-2, 1, "COMPLETE", 0.5, 0.5, 1.0),
                ("value", 1e-3, 0, "PRUNED", None, None, 2.0), ("value", 1e-2, 0, "FAIL", None, None, 2.0)])
    sel = select_tuned(df, s)
    assert set(sel.trials["tune"]) == {json.dumps({"train.lr": 1e-2})}
    assert set(sel.trials["point"]) == {json.dumps({"erase_axis": "key"})}  # value: no complete combination
    kept = sel.choices.filter(pl.col("kept"))
    assert len(kept) == 1 and kept["selection_mean"][0] == pytest.approx(0.45)
    text = tune_markdown(sel)
    assert "1/2" in text and "**yes**" in text and "train.lr=0.01" in text


def test_ties_go_to_the_first_combination_in_file_order(tmp_path):
    s = spec(tmp_path, seeds=(0,))
    df = frame([("key", 1e-2, 0, "COMPLETE", 0.5, 0.1, 1.0), ("key", 1e-3, 0, "COMPLETE", 0.5, 0.9, 1.0)])
    assert select_tuned(df, s).trials["tune"].to_list() == [json.dumps({"train.lr": 1e-3})]


def test_minimised_selection_metric(tmp_path):
    s = spec(tmp_path, seeds=(0,), objectives=[{"metric": "val_loss", "direction": "minimize"}])
    assert selection_objective(s) == ("val_loss", "minimize")
    rows = frame([("key", 1e-3, 0, "COMPLETE", 0.5, 0.1, 1.0), ("key", 1e-2, 0, "COMPLETE", 0.5, 0.9, 1.0)])
    df = rows.with_columns(pl.Series("val_loss", [2.0, 1.0]))
    assert select_tuned(df, s).trials["tune"].to_list() == [json.dumps({"train.lr": 1e-2})]


def test_without_tune_every_completed_run_is_kept(tmp_path):
    s = load_sweep(tiny_sweep("plain", tmp_path, mode="grid", budget={}, space={"erase_axis": ["key", "value"]}))
    df = frame([("key", 1e-3, 0, "COMPLETE", 0.5, 0.1, 1.0), ("value", 1e-3, 0, "FAIL", None, None, 1.0)])
    sel = select_tuned(df, s)
    assert len(sel.trials) == 1 and not len(sel.choices)


def test_reported_objectives_fall_back_to_validation_without_test_metrics():
    df = pl.DataFrame({"state": ["COMPLETE"], "m.val_accuracy": [0.5]})
    assert reported_objectives([("val_accuracy", "maximize")], df) == [("val_accuracy", "maximize")]
    df = df.with_columns(pl.Series("m.test_accuracy", [None], dtype=pl.Float64))
    assert reported_objectives([("val_accuracy", "maximize")], df) == [("val_accuracy", "maximize")]
    assert not math.isnan(0.0)
