"""Sweeps end to end: real local Ray on 127.0.0.1, real SQLite Optuna storage, real MLflow."""
import optuna
import pytest

from carvelab.search_space.sweep_loading import load_sweep
from carvelab.trials.sweep import scheduler
from carvelab.trials.sweep.driver import run_sweep
from tests.trials.sweep_helpers import assert_exactly_once, child_runs, study_of, tiny_sweep

COMPLETE, PRUNED, FAIL = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                          optuna.trial.TrialState.FAIL)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    scheduler.start_ray(num_cpus=2)
    yield
    scheduler.stop_ray()


def test_tiny_sweep_completes_once_in_optuna_and_mlflow(tmp_path):
    summary = run_sweep(load_sweep(tiny_sweep("basic", tmp_path / "cache")), tmp_path)
    study, runs = assert_exactly_once(summary)
    assert summary.counts["completed"] == 3 and len(study.trials) == 3
    run = [r for r in runs if r.info.status == "FINISHED"][0]
    assert "model.erase_axis" in run.data.params and "val_accuracy" in run.data.metrics
    client, _ = child_runs(summary)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [2, 4]
    assert run.data.tags["mlflow.parentRunId"] == summary.parent_run_id


def test_failing_trial_is_recorded_with_reason_and_the_sweep_goes_on(tmp_path):
    data = tiny_sweep("failing", tmp_path / "cache", mode="grid", budget={},
                      space={"task.name": ["mqar", "lm"]})
    data["base"]["task"]["data_path"] = str(tmp_path / "missing.txt")  # only the lm task reads it
    summary = run_sweep(load_sweep(data), tmp_path)
    study, runs = assert_exactly_once(summary)
    states = {t.params["task.name"]: t for t in study.trials}
    assert states["mqar"].state == COMPLETE
    assert states["lm"].state == FAIL and states["lm"].user_attrs["reason"] == "exception"
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(failed) == 1 and failed[0].data.tags["reason"] == "exception"
    client, _ = child_runs(summary)
    assert "missing.txt" in client.download_artifacts(failed[0].info.run_id, "traceback.txt", str(tmp_path)) \
        or "missing.txt" in open(client.download_artifacts(failed[0].info.run_id, "traceback.txt",
                                                             str(tmp_path))).read()


def test_infeasible_points_never_train(tmp_path):
    data = tiny_sweep("infeasible", tmp_path / "cache", mode="grid", budget={},
                      space={"write_gate": ["scalar", "per_value"]})
    data["base"]["preset"] = "kda"  # tied gates: a per-value write gate is infeasible
    summary = run_sweep(load_sweep(data), tmp_path)
    study, runs = assert_exactly_once(summary)
    by_gate = {t.params["write_gate"]: t for t in study.trials}
    assert by_gate["per_value"].state == FAIL and by_gate["per_value"].user_attrs["reason"] == "infeasible"
    assert by_gate["scalar"].state == COMPLETE
    assert len(runs) == 1  # no MLflow run: nothing was trained


def test_grid_mode_runs_every_point_times_seed(tmp_path):
    data = tiny_sweep("grid", tmp_path / "cache", mode="grid", budget={}, seeds=[0, 1],
                      space={"erase_axis": ["key", "value"]})
    study, _ = assert_exactly_once(run_sweep(load_sweep(data), tmp_path))
    got = sorted((t.params["erase_axis"], t.user_attrs["seed"]) for t in study.trials)
    assert got == [("key", 0), ("key", 1), ("value", 0), ("value", 1)]


def test_ablation_mode_runs_baseline_and_each_change_per_seed(tmp_path):
    data = tiny_sweep("ablation", tmp_path / "cache", mode="ablation", budget={}, space={}, seeds=[0, 1],
                      ablation={"changes": [{"erase_axis": "value"}, {"content_gate": "on"}]})
    study, _ = assert_exactly_once(run_sweep(load_sweep(data), tmp_path))
    got = sorted((t.user_attrs["label"], t.user_attrs["seed"]) for t in study.trials)
    assert got == sorted((lab, s) for lab in ("baseline", "erase_axis=value", "content_gate=True") for s in (0, 1))
    baseline = [t for t in study.trials if t.user_attrs["label"] == "baseline"][0]
    assert baseline.params == {"erase_axis": "key", "content_gate": False}


def test_a_sampled_point_is_trained_at_every_tune_value_and_seed_and_a_rerun_adds_nothing(tmp_path):
    data = tiny_sweep("tuned-search", tmp_path / "cache", space={"erase_axis": ["key", "value"]}, seeds=[0, 1],
                      tune={"train.lr": [3e-3, 1e-2]}, sampler={"name": "random", "seed": 0},
                      budget={"trials": 8}, resources={"cpus_per_trial": 1, "concurrency": 2})
    summary = run_sweep(load_sweep(data), tmp_path)
    study, runs = assert_exactly_once(summary)
    trained = sorted((t.params["erase_axis"], t.user_attrs["tune"]["train.lr"], t.user_attrs["seed"])
                     for t in study.trials if t.state == COMPLETE)
    assert trained == sorted((a, lr, s) for a in ("key", "value") for lr in (3e-3, 1e-2) for s in (0, 1))
    # each run trained at its tune value (the param logged to MLflow), grouped by its point
    for r in runs:
        assert float(r.data.params["train.lr"]) == float(r.data.tags["tune"].split("=")[1])
    assert len({r.data.tags["point_id"] for r in runs}) == 2
    again = run_sweep(load_sweep(data), tmp_path)  # resumes: every (point, seed, tune) is done
    assert len(study_of(again).trials) == len(study.trials)


def test_ablation_with_tune_trains_every_label_at_every_tune_value(tmp_path):
    from carvelab.search_space.points import planned

    data = tiny_sweep("tuned-ablation", tmp_path / "cache", mode="ablation", budget={}, space={}, seeds=[0, 1],
                      ablation={"changes": [{"erase_axis": "value"}]}, tune={"train.weight_decay": [0.0, 0.1]})
    runs = planned(load_sweep(data))
    got = sorted((label, seed, tune["train.weight_decay"]) for _, seed, label, tune in runs)
    assert got == sorted((lab, s, wd) for lab in ("baseline", "erase_axis=value") for s in (0, 1) for wd in (0.0, 0.1))


PRUNER_KEYS = {"pareto": {"min_peers": 1, "min_dominators": 1}, "median": {"min_peers": 1},
               "successive_halving": {"min_resource": 1, "reduction_factor": 2},
               "hyperband": {"min_resource": 1, "reduction_factor": 2}}


@pytest.mark.parametrize("pruner", sorted(PRUNER_KEYS))
def test_pruning_stops_bad_trials_early_in_a_multi_objective_study(pruner, tmp_path):
    # Hyperband compares trials only within one of its 4 brackets (assigned by a hash), so it
    # gets 6 trials of decreasing quality: two of them must share a bracket, the later one worse.
    bad = [3e-3, 3e-4, 3e-5, 3e-6, 3e-7] if pruner == "hyperband" else [1e-7]
    data = tiny_sweep(f"prune-{pruner}", tmp_path / "cache", mode="grid", budget={},
                      space={"train.lr": [3e-2] + bad},
                      objectives=[{"metric": "val_loss", "direction": "minimize"},
                                  {"metric": "params", "direction": "minimize"}],
                      pruner={"name": pruner, "metric": "val_loss", **PRUNER_KEYS[pruner]},
                      resources={"cpus_per_trial": 1, "concurrency": 1})
    data["base"]["train"].update(steps=12, eval_every=2)
    summary = run_sweep(load_sweep(data), tmp_path)
    study = study_of(summary)
    assert len(study.directions) == 2
    by_lr = {t.params["train.lr"]: t for t in study.trials}
    assert by_lr[3e-2].state == COMPLETE
    pruned = [by_lr[lr] for lr in bad if by_lr[lr].state == PRUNED]
    assert pruned, [(lr, by_lr[lr].state) for lr in bad]
    assert all(t.user_attrs["steps"] < 12 for t in pruned)


def test_search_never_trains_a_point_twice_and_stops_when_the_space_is_exhausted(tmp_path):
    # With this seed Optuna's random sampler proposes value, value, key: the sampler wrapper
    # replaces the repeat by the untrained point, and the sweep stops once both are trained.
    data = tiny_sweep("exhaust", tmp_path / "cache", space={"erase_axis": ["key", "value"]},
                      sampler={"name": "random", "seed": 1},
                      budget={"trials": 5}, resources={"cpus_per_trial": 1, "concurrency": 1})
    summary = run_sweep(load_sweep(data), tmp_path)
    study, _ = assert_exactly_once(summary)
    trained = [t for t in study.trials if t.state == COMPLETE]
    assert sorted(t.params["erase_axis"] for t in trained) == ["key", "value"]
    assert [t for t in study.trials if t.state == FAIL] == []
    assert len(study.trials) == 2


def test_a_search_with_the_grid_sampler_ends_when_its_grid_is_done(tmp_path):
    # Optuna's GridSampler stops an optimize loop after its last point; in ask-and-tell that
    # raised from the last tell and crashed the driver.
    data = tiny_sweep("gridsampler", tmp_path / "cache", space={"erase_axis": ["key", "value"]},
                      sampler={"name": "grid", "seed": 0}, budget={"trials": 4},
                      resources={"cpus_per_trial": 1, "concurrency": 1})
    study, _ = assert_exactly_once(run_sweep(load_sweep(data), tmp_path))
    assert sorted(t.params["erase_axis"] for t in study.trials if t.state == COMPLETE) == ["key", "value"]
    assert len(study.trials) == 2


def test_a_converged_sampler_still_explores_untrained_points(tmp_path):
    # TPE with one start-up trial soon proposes the same point again and again; each repeat
    # queues a random untrained point instead, so the budget is spent on distinct points.
    data = tiny_sweep("explore", tmp_path / "cache", sampler={"name": "tpe", "seed": 0, "n_startup_trials": 1},
                      space={"erase_axis": ["key", "value"], "write_gate": ["scalar", "per_value"]},
                      budget={"trials": 4}, resources={"cpus_per_trial": 1, "concurrency": 1})
    study, _ = assert_exactly_once(run_sweep(load_sweep(data), tmp_path))
    trained = {(t.params["erase_axis"], t.params["write_gate"]) for t in study.trials if t.state == COMPLETE}
    assert len(trained) == 4


class Ledger:
    """A sweep callback that writes down what it was told."""

    def __init__(self):
        self.events = []

    def on_sweep_start(self, sweep):
        self.events.append(("start", None, None))

    def on_trial_recorded(self, sweep, number, status):
        assert sweep.dir.load_result(number) is not None  # called after the result is durable
        self.events.append(("recorded", number, status))

    def on_tick(self, sweep):
        pass

    def on_sweep_end(self, sweep):
        self.events.append(("end", None, None))


def test_callbacks_see_every_recorded_trial_once_between_start_and_end(tmp_path):
    from carvelab.trials.sweep.callbacks import FrontPublisher

    data = tiny_sweep("callbacks", tmp_path / "cache", mode="grid", budget={})
    ledger = Ledger()
    summary = run_sweep(load_sweep(data), tmp_path, callbacks=[ledger, FrontPublisher(every_s=0.0)])
    study = study_of(summary)
    assert ledger.events[0][0] == "start" and ledger.events[-1][0] == "end"
    recorded = sorted((n, s) for kind, n, s in ledger.events if kind == "recorded")
    assert recorded == sorted((t.number, t.user_attrs["state"]) for t in study.trials)
    client, _ = child_runs(summary)
    assert client.get_run(summary.parent_run_id).data.tags["pareto.front_size"] == str(summary.front_size)


def test_a_sweep_over_tasks_is_scored_as_a_suite_in_the_terminal_and_mlflow(tmp_path, capsys):
    """task.name as an axis: carvelab suite shows per task and the mean of tasks, per architecture."""
    from carvelab.trials.cli import main

    data = tiny_sweep("suite", tmp_path / "cache", mode="grid", budget={}, seeds=[0, 1],
                      space={"task.name": ["mqar", "parity"], "erase_axis": ["key", "value"]})
    summary = run_sweep(load_sweep(data), tmp_path)
    assert summary.counts["completed"] == 8
    assert main(["suite", "suite", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| architecture"))
    assert "mqar" in header and "parity" in header and "(mean of tasks)" in header
    assert sum(line.startswith('| {"erase_axis"') for line in out.splitlines()) == 2
    assert "(n 2)" in out
    client, _ = child_runs(summary)
    names = {a.path for a in client.list_artifacts(summary.parent_run_id, "suite")}
    assert names == {"suite/suite.md", "suite/suite.json"}


def test_a_sweep_declaring_a_suite_trains_every_setting_and_is_scored_per_task(tmp_path, capsys):
    """suite: state_tracking: each point at parity, modular arithmetic (twice) and S5."""
    from carvelab.trials.cli import main

    data = tiny_sweep("suitekey", tmp_path / "cache", mode="grid", budget={}, seeds=[0],
                      suite="state_tracking", space={"erase_axis": ["key"]})
    data["base"]["task"] = {"train_examples": 64, "val_examples": 8, "test_examples": 8,
                            "cache_dir": str(tmp_path / "cache")}
    summary = run_sweep(load_sweep(data), tmp_path)
    study, runs = assert_exactly_once(summary)
    assert summary.counts["completed"] == 4
    assert sorted(t.params["suite"] for t in study.trials) == sorted(
        ["parity", "modular_arithmetic", "modular_arithmetic:brackets=true", "s5"])
    by_label = {r.data.tags["suite"]: r for r in runs}
    assert by_label["modular_arithmetic:brackets=true"].data.params["task.brackets"] == "True"
    assert by_label["s5"].data.params["task.name"] == "s5" and by_label["s5"].data.params["task.val_examples"] == "8"
    assert main(["suite", "suitekey", "--root", str(tmp_path)]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| architecture"))
    assert header == "| architecture | modular_arithmetic | parity | s5 | (mean of tasks) |"


def test_a_new_folder_over_a_storage_that_holds_the_study_is_refused_and_creates_nothing(tmp_path):
    """A declared storage outlives the sweep folder: a run with another --root must not adopt
    trials whose results and MLflow runs live in the first folder."""
    from carvelab.search_space.yaml_io import ConfigError
    from carvelab.trials.sweep.study import stored_trial_count

    missing = tmp_path / "not-yet.db"
    assert stored_trial_count("shared", f"sqlite:///{missing}") == 0 and not missing.exists()
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    data = tiny_sweep("shared", tmp_path / "cache", budget={"trials": 1}, storage=storage)
    first = run_sweep(load_sweep(data), tmp_path / "a")
    assert first.counts["completed"] == 1 and stored_trial_count("shared", storage) == 1
    with pytest.raises(ConfigError, match=r"already holds a study named 'shared' with 1 trial\(s\).*nothing was created"):
        run_sweep(load_sweep(data), tmp_path / "b")
    assert not (tmp_path / "b").exists()
    again = run_sweep(load_sweep(data), tmp_path / "a")              # its own folder resumes
    assert again.counts["completed"] == 1 and stored_trial_count("shared", storage) == 1
