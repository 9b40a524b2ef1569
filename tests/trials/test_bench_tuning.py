"""bench_tuning: the planned runs of a tuned ablation trained outside Ray, then the sweep's selection."""
import json

import pytest
import yaml

from carvelab.trials import bench_tuning
from tests.trials.sweep_helpers import tiny_sweep


def test_flip_fraction_counts_discordant_pairs_by_hand():
    # a > b in seeds 0 and 1, b > a in seed 2: seed pairs (0,1) agree, (0,2) and (1,2) flip
    scores = {"a": {0: 0.9, 1: 0.8, 2: 0.1}, "b": {0: 0.5, 1: 0.5, 2: 0.5}}
    assert bench_tuning.flip_fraction(scores) == (pytest.approx(2 / 3), 3)
    # a tie in seed 1 removes the comparisons with seed 1
    scores["a"][1] = 0.5
    assert bench_tuning.flip_fraction(scores) == (1.0, 1)
    assert bench_tuning.flip_fraction({"a": {0: 1.0}})[1] == 0
    # differences below min_diff in either seed are not counted
    scores = {"a": {0: 0.999, 1: 1.0}, "b": {0: 1.0, 1: 0.9}}
    assert bench_tuning.flip_fraction(scores) == (1.0, 1) and bench_tuning.flip_fraction(scores, 0.01)[1] == 0


def test_run_then_analyse_a_tiny_tuned_ablation(tmp_path, capsys):
    data = tiny_sweep("tiny_tuned", tmp_path / "cache", mode="ablation", budget={}, space={}, seeds=[0, 1],
                      ablation={"changes": [{"erase_axis": "value"}]}, tune={"train.lr": [3e-3, 1e-2]})
    sweep = tmp_path / "tiny_tuned.yaml"
    sweep.write_text(yaml.safe_dump(data))
    out = tmp_path / "runs.jsonl"
    bench_tuning.run(str(sweep), out, workers=2, steps=None)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8 and {r["status"] for r in rows} == {"completed"}
    assert all("test_accuracy" in r["metrics"] for r in rows)
    bench_tuning.run(str(sweep), out, workers=2, steps=None)  # a rerun trains nothing new
    assert len(out.read_text().splitlines()) == 8
    report = bench_tuning.analyse(out, str(sweep))
    assert set(report["settings"]) == {"0.003", "0.01", "tuned"}
    tuned = report["settings"]["tuned"]["points"]
    for label, point in tuned.items():  # the tuned choice is the best validation seed mean, recomputed here
        means = {lr: sum(r["metrics"]["val_accuracy"] for r in rows if r["label"] == label
                         and r["tune"]["train.lr"] == lr) / 2 for lr in (3e-3, 1e-2)}
        best = max((3e-3, 1e-2), key=lambda lr: (means[lr], -[3e-3, 1e-2].index(lr)))
        assert point["tune"] == {"train.lr": best} and point["n"] == 2
    text = bench_tuning.markdown(report)
    assert "rank flips" in text and "tuned" in text


def test_a_grid_sweeps_runs_are_planned_once_each_and_a_rerun_skips_only_those_done(tmp_path):
    # a grid sweep's runs all carry the label '': each is told apart by its point
    from carvelab.search_space.sweep_loading import load_sweep
    from carvelab.trials import bench_claims

    data = {"name": "g", "mode": "grid", "seeds": [0, 1], "suite": "state_tracking",
            "base": {"preset": "gdn2", "model": {"d_model": 16, "n_heads": 2}},
            "space": {"erase_axis": ["key", "value"]}, "tune": {"train.lr": [1e-3, 3e-3]}}
    spec = load_sweep(data)
    out = tmp_path / "runs.jsonl"
    pending = bench_tuning.pending_runs(spec, out)
    assert len(pending) == 4 * 2 * 2 * 2  # suite settings x axis values x seeds x learning rates
    done = []
    for i, (point, seed, label, tune) in enumerate(list(pending.values())[:5]):
        done.append({"label": label, "point": point, "seed": seed, "tune": tune, "status": "completed",
                     "metrics": {"val_accuracy": 0.5, "test_accuracy": 0.1 * i}})
    out.write_text("".join(json.dumps(r) + "\n" for r in done))
    left = bench_tuning.pending_runs(spec, out)
    assert len(left) == len(pending) - 5 and not set(left) & {k for k in list(pending)[:5]}
    # every run done: scored as `carvelab suite` scores a sweep (tuned on validation, reported on test)
    rows = []
    for point, seed, label, tune in pending.values():
        acc = 0.9 if point["erase_axis"] == "key" else 0.3
        best = tune["train.lr"] == 1e-3  # the better validation mean: its test figure is reported
        rows.append({"label": label, "point": point, "seed": seed, "tune": tune, "status": "completed",
                     "metrics": {"val_accuracy": acc + (0.01 if best else 0.0), "test_accuracy": acc if best else 0.0}})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metric, scores = bench_claims.suite_scores(out, data, None)
    overall = {json.loads(r["architecture"])["erase_axis"]: r for r in scores if r["task"] == "(mean of tasks)"}
    assert metric == "test_accuracy"
    assert overall["key"]["mean"] == pytest.approx(0.9) and overall["value"]["mean"] == pytest.approx(0.3)
    assert overall["key"]["n"] == 2


def test_points_mode_reports_each_grid_cell_at_its_selected_rate_with_failures_named(tmp_path):
    from carvelab.search_space.sweep_loading import load_sweep
    from carvelab.trials import bench_claims

    data = {"name": "g", "mode": "grid", "seeds": [0, 1, 2],
            "base": {"preset": "gdn2", "model": {"d_model": 16, "n_heads": 2}, "task": {"name": "mqar"}},
            "space": {"task.num_kv_pairs": [8, 4], "erase_axis": ["key", "value"]},
            "tune": {"train.lr": [1e-3, 3e-3]}}
    spec = load_sweep(data)
    out = tmp_path / "runs.jsonl"
    rows = []
    for point, seed, label, tune in bench_tuning.pending_runs(spec, out).values():
        if point["task.num_kv_pairs"] == 4 and point["erase_axis"] == "value":
            rows.append({"label": label, "point": point, "seed": seed, "tune": tune, "status": "failed",
                         "reason": "ValueError", "error": "too short", "metrics": {}})
            continue
        fast = tune["train.lr"] == 3e-3  # the better rate on validation: its test figures are reported
        acc = 0.5 + 0.1 * seed + (0.2 if point["erase_axis"] == "key" else 0.0)
        rows.append({"label": label, "point": point, "seed": seed, "tune": tune, "status": "completed",
                     "metrics": {"val_accuracy": acc + (0.05 if fast else 0.0), "test_accuracy": acc if fast else 0.0,
                                 "params": 1000.0}})
    out.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))  # finishing order is not the grid's
    metrics, table = bench_claims.point_rows(out, data, None)
    assert metrics == ["val_accuracy", "test_accuracy"]
    assert [(r["point"]["task.num_kv_pairs"], r["point"]["erase_axis"]) for r in table] == \
        [(8, "key"), (8, "value"), (4, "key"), (4, "value")]
    key8 = table[0]
    assert json.loads(key8["tune"]) == {"train.lr": 3e-3}
    assert key8["test_accuracy"]["n"] == 3 and key8["test_accuracy"]["mean"] == pytest.approx(0.8)
    assert key8["test_accuracy"]["lo"] < 0.8 < key8["test_accuracy"]["hi"]
    assert table[1]["test_accuracy"]["mean"] == pytest.approx(0.6)
    assert table[3]["val_accuracy"]["n"] == 0 and table[3]["failed"] == {"too short": 6}
    md = bench_claims.points_markdown(*bench_claims.point_rows(out, data, None, metrics=["params"]))
    assert "| 8 | key | 1000 (n 3) |" in md and "6: too short" in md
    with pytest.raises(SystemExit, match="no_such"):
        bench_claims.point_rows(out, data, None, metrics=["no_such"])


def test_planning_and_training_runs_outside_a_sweep_needs_no_optuna():
    # bench_claims / bench_tuning serve machines with torch and omegaconf only (a lent GPU)
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from carvelab.search_space.sweep_loading import load_sweep; "
            "from carvelab.trials import bench_claims, bench_tuning; "
            "n = len(bench_tuning.pending_runs(load_sweep('claim_carve'), Path('absent.jsonl'))); "
            "assert n > 0 and 'optuna' not in sys.modules, sorted(m for m in sys.modules if 'optuna' in m)[:3]")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_resumed_file_must_hold_the_runs_as_the_sweep_configures_them_now(tmp_path):
    """Rows keep their trial config; resuming from a file written at another size or with other
    overrides is refused, naming the key, instead of mixing its runs into the results."""
    from carvelab.search_space.sweep_loading import load_sweep

    data = {"name": "g", "mode": "grid", "seeds": [0, 1],
            "base": {"preset": "gdn2", "model": {"d_model": 16, "n_heads": 2}, "task": {"name": "mqar"},
                     "train": {"steps": 50}},
            "space": {"erase_axis": ["key", "value"]}}
    spec = load_sweep(data)
    out = tmp_path / "runs.jsonl"
    rows = []
    for point, seed, label, tune in list(bench_tuning.pending_runs(spec, out).values())[:2]:
        config = bench_tuning.run_config(spec, point, seed, tune)
        config["model"]["a_field_of_an_older_version"] = 1                   # keys one side lacks are not compared
        rows.append({"label": label, "point": point, "seed": seed, "tune": tune, "status": "completed",
                     "metrics": {}, "config": config})
    rows.append({**rows[0], "seed": 1, "point": {"erase_axis": "value"}, "config": None})
    del rows[-1]["config"]                                                   # a row from before configs were kept
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(bench_tuning.pending_runs(spec, out)) == 4 - 3
    longer = load_sweep({**data, "base": {**data["base"], "train": {"steps": 500}}})
    with pytest.raises(ValueError, match=r"runs.jsonl, line 1: this run .* was trained with train.steps=50; the sweep "
                                         r"now gives it 500\. Write to another --out"):
        bench_tuning.pending_runs(longer, out)
    assert bench_tuning.config_difference({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 0}) == ("a.c", 2, 3)
    assert bench_tuning.config_difference({"a": 1}, {"a": 1, "b": 2}) is None


def test_bench_claims_refuses_a_results_file_of_other_configs_with_exit_code_2(tmp_path, capsys):
    import yaml

    from carvelab.search_space.sweep_loading import load_sweep
    from carvelab.trials import bench_claims

    data = {"name": "g", "mode": "grid", "seeds": [0],
            "base": {"preset": "gdn2", "model": {"d_model": 16, "n_heads": 2}, "task": {"name": "mqar"},
                     "train": {"steps": 50, "device": "cpu"}},
            "space": {"erase_axis": ["key"]}}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(data))
    spec = load_sweep(str(path))
    point, seed, label, tune = next(iter(bench_tuning.pending_runs(spec, tmp_path / "none.jsonl").values()))
    config = bench_tuning.run_config(spec, point, seed, tune)
    config["train"]["steps"] = 7
    out = tmp_path / "runs.jsonl"
    out.write_text(json.dumps({"label": label, "point": point, "seed": seed, "tune": tune, "status": "completed",
                               "metrics": {}, "config": config}) + "\n")
    assert bench_claims.main(["run", str(path), "--out", str(out)]) == 2
    assert "was trained with train.steps=7; the sweep now gives it 50" in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 1                            # nothing trained, nothing appended
