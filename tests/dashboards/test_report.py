"""Trial tables, fronts, MLflow publishing, ablation tables and export over real tiny sweeps."""

import polars as pl
import pytest
import yaml

from carvelab.dashboards.ablation import ablation_table
from carvelab.dashboards.export import export
from carvelab.dashboards.frame import front_table, hypervolume_history, open_sweep, trials_frame
from carvelab.dashboards.report import publish
from carvelab.search_space.loading import load_trial_config
from carvelab.search_space.sweep_loading import load_sweep
from carvelab.trials.sweep import scheduler
from carvelab.trials.cli import main
from carvelab.trials.sweep.driver import run_sweep
from tests.trials.sweep_helpers import tiny_sweep


def mlflow(data):
    """An MLflow client of the sweep's tracking store, to read what was published."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=data.tracking_uri)


SUMMARIES = {}


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps")
    cache = root / "cache"
    scheduler.start_ray(num_cpus=2)
    try:
        grid = tiny_sweep("grid", cache, mode="grid", budget={}, seeds=[0, 1],
                          space={"erase_axis": ["key", "value"], "write_gate": ["scalar", "per_value"]})
        SUMMARIES["grid"] = run_sweep(load_sweep(grid), root)
        abl = tiny_sweep("abl", cache, mode="ablation", budget={}, space={}, seeds=[0, 1, 2],
                         ablation={"changes": [{"erase_axis": "value"}, {"train.lr": 1e-7}]})
        run_sweep(load_sweep(abl), root)
        tuned = tiny_sweep("tuned", cache, mode="grid", budget={}, seeds=[0, 1], space={"erase_axis": ["key", "value"]},
                           tune={"train.lr": [3e-3, 1e-2]})
        SUMMARIES["tuned"] = run_sweep(load_sweep(tuned), root)
    finally:
        scheduler.stop_ray()
    return root


def grid_vocab() -> int:
    return tiny_sweep("grid", "unused")["base"]["task"]["vocab_size"]


def test_frame_joins_optuna_and_mlflow(sweeps):
    data = open_sweep("grid", sweeps)
    df = trials_frame(data)
    assert len(df) == 8 and set(df["state"]) == {"COMPLETE"}
    # the objective told to Optuna equals the metric logged to the run
    assert (df["val_accuracy"] - df["m.val_accuracy"]).abs().max() == 0
    assert df["run_id"].n_unique() == 8 and set(df["run_status"]) == {"FINISHED"}
    # what is reported is the test split, logged once per run
    assert data.objectives == [("test_accuracy", "maximize"), ("params", "minimize")]
    assert df["test_accuracy"].null_count() == 0 and (df["test_accuracy"] - df["m.test_accuracy"]).abs().max() == 0


def brute_force_front(rows: list[tuple[float, float]]) -> list[bool]:
    """(accuracy up, params down): a row is on the front when no other row is at least as good in
    both and better in one — written out here, independently of dashboards.pareto."""
    def beats(a, b):
        return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])

    return [not any(beats(other, row) for other in rows) for row in rows]


def test_seeds_are_aggregated_before_ranking(sweeps):
    data = open_sweep("grid", sweeps)
    df = trials_frame(data)
    table = front_table(data, df)
    assert len(table) == 4 and set(table["n"]) == {2}
    for row in table.iter_rows(named=True):  # each point's value is the mean over its two seeds
        seeds = df.filter(pl.col("point") == row["point"])
        assert sorted(seeds["seed"].to_list()) == [0, 1]
        assert row["test_accuracy"] == pytest.approx(sum(seeds["test_accuracy"]) / 2)
    means = table.select(["test_accuracy", "params"]).rows()
    assert [r == 0 for r in table["pareto_rank"]] == brute_force_front(means)


def test_one_front_definition_for_the_driver_and_the_published_front(sweeps):
    """With several seeds the driver's live count and the published front both count points."""
    data = open_sweep("grid", sweeps)
    info = publish(data)
    table = front_table(data)
    points = int((table["pareto_rank"] == 0).sum())
    assert SUMMARIES["grid"].front_size == info["front"] == points
    assert int(mlflow(data).get_run(data.parent_run_id).data.tags["pareto.front_size"]) == points
    assert info["front_runs"] == 2 * points  # both seeds of every front point are tagged


def test_hypervolume_history_never_decreases(sweeps):
    data = open_sweep("grid", sweeps)
    hv = hypervolume_history(trials_frame(data), data.objectives)["hypervolume"].to_list()
    assert len(hv) == 8 and all(b >= a for a, b in zip(hv, hv[1:])) and hv[-1] > 0


def test_publish_tags_exactly_the_front_and_logs_artifacts(sweeps, tmp_path):
    data = open_sweep("grid", sweeps)
    info = publish(data)
    table = front_table(data)
    front_runs = {r for row in table.filter(pl.col("pareto_rank") == 0).iter_rows(named=True) for r in row["run_ids"]}
    exp = mlflow(data).get_run(data.parent_run_id).info.experiment_id
    tagged = mlflow(data).search_runs([exp], filter_string="tags.on_front = 'true'")
    assert {r.info.run_id for r in tagged} == front_runs and info["front_runs"] == len(front_runs)
    names = {a.path for a in mlflow(data).list_artifacts(data.parent_run_id, "pareto")}
    for f in ("pareto.html", "pareto.png", "hypervolume.png", "hypervolume.csv", "trials.csv",
              "trials.parquet", "summary.md", "ablation.md"):
        assert f"pareto/{f}" in names
    page = open(mlflow(data).download_artifacts(data.parent_run_id, "pareto/pareto.html", str(tmp_path))).read()
    assert all(r in page for r in front_runs)


def test_ablation_table_pairs_by_seed(sweeps):
    data = open_sweep("abl", sweeps)
    df = trials_frame(data)
    table = ablation_table(data, df)
    assert set(table["change"]) == {"erase_axis=value", "train.lr=1e-07"}
    row = table.filter((pl.col("change") == "erase_axis=value") & (pl.col("objective") == "params")).row(0, named=True)
    base = df.filter(pl.col("label") == "baseline").sort("seed")["params"].to_list()
    change = df.filter(pl.col("label") == "erase_axis=value").sort("seed")["params"].to_list()
    diffs = [c - b for b, c in zip(base, change)]
    assert row["n"] == 3 and row["mean"] == pytest.approx(sum(diffs) / 3)
    lr = table.filter((pl.col("change") == "train.lr=1e-07") & (pl.col("objective") == "test_accuracy")).row(0, named=True)
    assert lr["ci_low"] <= lr["mean"] <= lr["ci_high"]


def test_export_writes_rerunnable_configs_and_never_overwrites(sweeps, tmp_path):
    data = open_sweep("grid", sweeps)
    first = [p for p in export(data, tmp_path, rank=0) if p.suffix == ".yaml"]
    assert first
    doc = yaml.safe_load(first[0].read_text())
    cfg = load_trial_config(doc)  # re-loadable as a trial config, provenance ignored
    prov = doc["provenance"]
    assert prov["seeds"] == [0, 1] and len(prov["mlflow_run_ids"]) == 2 and prov["git_commit"]
    trial = [t for t in data.study.trials if t.number == prov["optuna_trial_numbers"][0]][0]
    assert cfg.model.erase_axis == trial.params["erase_axis"] and cfg.model.write_gate == trial.params["write_gate"]
    # the vocabulary the model was trained with (the task's), not the config default it replaced
    assert cfg.model.vocab_size == grid_vocab() != load_trial_config({}).model.vocab_size
    again = [p for p in export(data, tmp_path, rank=0) if p.suffix == ".yaml"]
    assert not set(first) & set(again) and all(p.exists() for p in first)


def test_fla_export_says_which_points_it_cannot_express(sweeps, tmp_path):
    export(open_sweep("grid", sweeps), tmp_path, rank=10, fmt="fla")
    assert "no flash-linear-attention stock model" in (tmp_path / "fla_unsupported.txt").read_text()


def test_fla_config_carries_the_eigenvalue_range():
    from dataclasses import asdict

    from carvelab.carve_models import preset_config
    from carvelab.dashboards.export import fla_config

    unit = asdict(preset_config("kda", d_model=32))
    assert fla_config(unit)["allow_neg_eigval"] is False
    assert fla_config({**unit, "eigen_range": "[-1,1]"})["allow_neg_eigval"] is True
    assert fla_config({**asdict(preset_config("gdn", d_model=32)), "eigen_range": "[-1,1]"})["model_type"] == "gated_deltanet"


def test_cli_pareto_ablation_export(sweeps, tmp_path, capsys):
    assert main(["pareto", "grid", "--root", str(sweeps)]) == 0
    assert "runs tagged on_front=true" in capsys.readouterr().out
    assert main(["ablation", "abl", "--root", str(sweeps)]) == 0
    assert "erase_axis=value" in capsys.readouterr().out
    assert main(["importance", "grid", "--root", str(sweeps)]) == 0
    out = capsys.readouterr().out
    assert "| erase_axis | erase_axis=value |" in out and "artifacts under importance/" in out
    data = open_sweep("grid", sweeps)
    names = {a.path for a in mlflow(data).list_artifacts(data.parent_run_id, "importance")}
    assert {"importance/importance.md", "importance/importance.csv", "importance/importance.png"} <= names
    assert main(["export", "grid", "--root", str(sweeps), "--out", str(tmp_path / "x"), "--top", "1"]) == 0
    assert len(list((tmp_path / "x").glob("*.yaml"))) == 1


def test_a_tuned_grid_reports_each_point_at_its_validation_choice(sweeps, tmp_path):
    """Every point ran at both learning rates and both seeds; the front shows each point with the
    runs of the rate whose validation seed mean is best (recomputed here), on the test split."""
    import json

    data = open_sweep("tuned", sweeps)
    df = trials_frame(data)
    assert len(df) == 8 and set(df["state"]) == {"COMPLETE"}
    assert sorted(df.group_by(["point", "tune"]).len()["len"].to_list()) == [2, 2, 2, 2]
    table = front_table(data, df)
    assert len(table) == 2 and set(table["n"]) == {2}
    for row in table.iter_rows(named=True):
        runs = df.filter(pl.col("point") == row["point"])
        means = {t: sum(g["val_accuracy"]) / 2 for (t,), g in runs.group_by(["tune"])}
        order = [json.dumps({"train.lr": lr}) for lr in (3e-3, 1e-2)]
        best = max(order, key=lambda t: (means[t], -order.index(t)))
        assert row["tune"] == best
        kept = runs.filter(pl.col("tune") == best)
        assert row["test_accuracy"] == pytest.approx(sum(kept["test_accuracy"]) / 2)
        assert sorted(row["run_ids"]) == sorted(kept["run_id"].to_list())
    publish(data)
    exp = mlflow(data).get_run(data.parent_run_id).info.experiment_id
    runs = mlflow(data).search_runs([exp], filter_string="tags.`carvelab.role` = 'trial'")
    assert {r.data.tags["tune"] for r in runs} == {"train.lr=0.003", "train.lr=0.01"}
    assert len({r.data.tags["point_id"] for r in runs}) == 2
    selected = {r.info.run_id for r in runs if r.data.tags["tune_selected"] == "true"}
    assert selected == {rid for ids in table["run_ids"] for rid in ids}
    names = {a.path for a in mlflow(data).list_artifacts(data.parent_run_id, "pareto")}
    assert "pareto/tune.md" in names
    summary = open(mlflow(data).download_artifacts(data.parent_run_id, "pareto/summary.md", str(tmp_path))).read()
    assert "test split" in summary and "train.lr=" in summary
    written = [p for p in export(data, tmp_path / "x", rank=10) if p.suffix == ".yaml"]
    for path in written:
        doc = yaml.safe_load(path.read_text())
        assert doc["train"]["lr"] == doc["provenance"]["tune"]["train.lr"]
        row = table.filter(pl.col("point") == json.dumps(doc["provenance"]["point"], sort_keys=True)).row(0, named=True)
        assert json.loads(row["tune"]) == doc["provenance"]["tune"]


def test_a_refresh_writes_only_the_front_tags_that_changed(sweeps, monkeypatch):
    """Live publishing refreshes the front while a sweep runs: a refresh must cost what moved,
    not one write per tag of every run (which grows with the sweep)."""
    from carvelab.dashboards.frame import FRONT_TAGS

    publish(open_sweep("grid", sweeps))  # every run carries its front tags now
    data = open_sweep("grid", sweeps)
    run = mlflow(data).search_runs([mlflow(data).get_run(data.parent_run_id).info.experiment_id],
                                  filter_string="tags.on_front = 'false'")[0]
    mlflow(data).set_tag(run.info.run_id, "on_front", "stale")  # one tag out of date
    writes = []
    set_tags = type(data.writer()).set_tags
    monkeypatch.setattr(type(data.writer()), "set_tags",
                        lambda self, run_id, tags: (writes.extend((run_id, k, v) for k, v in tags.items()),
                                                    set_tags(self, run_id, tags))[1])
    publish(data)
    assert [w for w in writes if w[1] in FRONT_TAGS] == [(run.info.run_id, "on_front", "false")]
