"""``carvelab sweep check``: a finished tiny sweep corrupted in each way, reported, then repaired."""
import json
import shutil
import sqlite3
import subprocess
import sys

import optuna
import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from carvelab.search_space.sweep_dir import driver_lock
from carvelab.search_space.sweep_loading import load_sweep
from carvelab.trials.sweep import scheduler
from carvelab.trials.cli import main
from carvelab.trials.sweep.driver import run_sweep
from tests.trials.sweep_helpers import tiny_sweep

NAME = "checked"
COMPLETE, FAIL, RUNNING, WAITING = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                                    optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished grid sweep: two completed trials and two failed ones (their data file is missing)."""
    folder = tmp_path_factory.mktemp("finished")
    data = tiny_sweep(NAME, folder / "cache", mode="grid", budget={},
                      space={"erase_axis": ["key", "value"], "task.name": ["mqar", "lm"]})
    data["base"]["task"]["data_path"] = str(folder / "missing.txt")  # only the lm task reads it
    scheduler.start_ray(num_cpus=2)
    try:
        run_sweep(load_sweep(data), folder / "sweeps")
    finally:
        scheduler.stop_ray()
    return folder / "sweeps"


class Sweep:
    """A private copy of the finished sweep, and handles on its Optuna study and MLflow runs."""

    def __init__(self, finished, tmp_path):
        self.root = tmp_path / "sweeps"
        shutil.copytree(finished, self.root)
        self.path = self.root / NAME
        self.storage = f"sqlite:///{self.path / 'optuna.db'}"
        self.tracking = f"sqlite:///{self.path / 'mlflow.db'}"
        self.client = MlflowClient(self.tracking)
        self.exp = self.client.get_experiment_by_name(NAME).experiment_id

    @property
    def study(self):
        return optuna.load_study(study_name=NAME, storage=self.storage)

    def trials(self, state):
        return [t for t in self.study.trials if t.state == state]

    def runs(self, number=None, view=ViewType.ACTIVE_ONLY):
        runs = self.client.search_runs([self.exp], "tags.`carvelab.role` = 'trial'", run_view_type=view)
        return [r for r in runs if number is None or r.data.tags.get("optuna_trial_number") == str(number)]

    def parent(self):
        return self.client.search_runs([self.exp], "tags.`carvelab.role` = 'sweep'")[0]

    def check(self, capsys, *extra):
        code = main(["sweep", "check", NAME, "--root", str(self.root), *extra])
        return code, capsys.readouterr().out

    def sql(self, statement, *args):
        with sqlite3.connect(self.path / "mlflow.db") as db:
            db.execute(statement, args)

    def history(self, run_id, key):
        return sorted(m.step for m in self.client.get_metric_history(run_id, key))

    def saved_steps(self, number):
        result = json.loads((self.path / "results" / f"trial-{number}.json").read_text())
        return sorted(step for step, _ in result["history"])

    def add_child(self, number, status="FINISHED", **tags):
        run = self.client.create_run(self.exp, run_name=f"trial-{number}", tags={
            "mlflow.parentRunId": self.parent().info.run_id, "carvelab.role": "trial", "carvelab.sweep": NAME,
            **({"optuna_trial_number": str(number)} if number is not None else {}), **tags})
        if status != "RUNNING":
            self.client.set_terminated(run.info.run_id, status)
        return run.info.run_id


@pytest.fixture
def sweep(finished, tmp_path):
    return Sweep(finished, tmp_path)


def test_finished_sweep_is_consistent(sweep, capsys):
    code, out = sweep.check(capsys)
    assert code == 0, out
    assert "consistent" in out and "2 COMPLETE, 2 FAIL" in out and "mlflow trial runs: 4" in out


def test_completed_trial_whose_run_was_deleted_gets_it_back(sweep, capsys):
    trial = sweep.trials(COMPLETE)[0]
    run_id = trial.user_attrs["mlflow_run_id"]
    sweep.client.delete_run(run_id)
    code, out = sweep.check(capsys)
    assert code == 1 and f"[complete_without_run] trial {trial.number} is COMPLETE but has no MLflow run" in out, out
    code, out = sweep.check(capsys, "--repair")
    assert code == 0 and "restored deleted run" in out, out
    run = sweep.client.get_run(run_id)
    assert run.info.lifecycle_stage == "active" and run.info.status == "FINISHED"
    assert sweep.history(run_id, "val_accuracy") == sweep.saved_steps(trial.number)


def test_completed_trial_whose_run_was_lost_gets_one_from_its_saved_result(sweep, capsys):
    trial = sweep.trials(COMPLETE)[0]
    lost = trial.user_attrs["mlflow_run_id"]
    for table in ("metrics", "latest_metrics", "params", "tags", "runs"):
        sweep.sql(f"DELETE FROM {table} WHERE run_uuid = ?", lost)
    code, out = sweep.check(capsys)
    assert code == 1 and "[complete_without_run]" in out, out
    code, out = sweep.check(capsys, "--repair")
    assert code == 0 and "re-created the run" in out, out
    (run,) = sweep.runs(trial.number)
    assert run.info.status == "FINISHED" and run.data.tags["carvelab.replaces_run"] == lost
    assert run.data.params["model.erase_axis"] == trial.params["erase_axis"]
    for key in ("val_accuracy", "train_loss", "params"):
        assert sweep.history(run.info.run_id, key) == sweep.saved_steps(trial.number), key


def test_runs_whose_status_disagrees_with_their_trial_are_set_right(sweep, capsys):
    done, failed = sweep.trials(COMPLETE)[0], sweep.trials(FAIL)[0]
    sweep.client.set_terminated(done.user_attrs["mlflow_run_id"], "FAILED")
    sweep.client.set_terminated(failed.user_attrs["mlflow_run_id"], "FINISHED")
    code, out = sweep.check(capsys)
    assert code == 1 and "[complete_without_run]" in out and "[status_mismatch]" in out, out
    code, out = sweep.check(capsys, "--repair")
    assert code == 0, out
    assert sweep.client.get_run(done.user_attrs["mlflow_run_id"]).info.status == "FINISHED"
    assert sweep.client.get_run(failed.user_attrs["mlflow_run_id"]).info.status == "FAILED"


def test_missing_metric_steps_are_logged_again(sweep, capsys):
    trial = sweep.trials(COMPLETE)[0]
    run_id = trial.user_attrs["mlflow_run_id"]
    first = sweep.saved_steps(trial.number)[0]
    sweep.sql("DELETE FROM metrics WHERE run_uuid = ? AND step = ?", run_id, first)
    code, out = sweep.check(capsys)
    assert code == 1 and f"[missing_metrics] run {run_id} of trial {trial.number}" in out, out
    code, out = sweep.check(capsys, "--repair")
    assert code == 0, out
    for key in ("val_accuracy", "val_loss", "wall_s"):
        assert sweep.history(run_id, key) == sweep.saved_steps(trial.number), key  # once each


def test_runs_without_a_trial_are_deleted(sweep, capsys):
    stray = [sweep.add_child(99), sweep.add_child(None, status="RUNNING")]
    code, out = sweep.check(capsys)
    assert code == 1 and out.count("[run_without_trial]") == 2, out
    assert "names trial 99, which is not in the study" in out and "names no trial" in out
    code, out = sweep.check(capsys, "--repair")
    assert code == 0, out
    assert all(sweep.client.get_run(r).info.lifecycle_stage == "deleted" for r in stray)
    assert len(sweep.runs()) == 4


def test_duplicate_runs_keep_the_one_the_trial_names(sweep, capsys):
    trial = sweep.trials(COMPLETE)[0]
    extra = sweep.add_child(trial.number)
    code, out = sweep.check(capsys)
    assert code == 1 and f"[duplicate_runs] trial {trial.number} has 2 runs" in out, out
    code, out = sweep.check(capsys, "--repair")
    assert code == 0, out
    assert [r.info.run_id for r in sweep.runs(trial.number)] == [trial.user_attrs["mlflow_run_id"]]
    assert sweep.client.get_run(extra).info.lifecycle_stage == "deleted"


def running_trial(sweep, point, seed, with_result_of=None):
    """A trial left RUNNING by a dead driver (asked from the queue, parameters not yet written),
    with a RUNNING run; optionally with a saved result (copied from another trial)."""
    study = sweep.study
    study.enqueue_trial(point, user_attrs={"seed": seed, "label": ""})
    trial = study.ask()
    run_id = sweep.add_child(trial.number, status="RUNNING", seed=str(seed))
    trial.set_user_attr("mlflow_run_id", run_id)
    if with_result_of is not None:
        shutil.copy(sweep.path / "results" / f"trial-{with_result_of}.json",
                    sweep.path / "results" / f"trial-{trial.number}.json")
    return trial.number, run_id


def test_running_trials_and_runs_of_a_dead_driver_are_recovered(sweep, capsys):
    done = sweep.trials(COMPLETE)[0]
    killed, killed_run = running_trial(sweep, {"erase_axis": "value", "task.name": "mqar"}, 7)
    saved, saved_run = running_trial(sweep, dict(done.params), 8, with_result_of=done.number)
    sweep.client.update_run(sweep.parent().info.run_id, status="RUNNING")
    code, out = sweep.check(capsys)
    assert code == 1 and out.count("[running_trial]") == 2 and "[running_run] parent run" in out, out
    code, out = sweep.check(capsys, "--repair")
    assert code == 0, out
    by_number = {t.number: t for t in sweep.study.trials}
    # No saved result: FAIL (driver_died), run KILLED, and the whole point re-queued with its seed.
    assert by_number[killed].state == FAIL and by_number[killed].user_attrs["reason"] == "driver_died"
    assert sweep.client.get_run(killed_run).info.status == "KILLED"
    (queued,) = [t for t in sweep.study.trials if t.state == WAITING]
    assert queued.system_attrs["fixed_params"] == {"erase_axis": "value", "task.name": "mqar"}
    assert queued.user_attrs["seed"] == 7 and queued.user_attrs["requeued_from"] == killed
    # A saved result: finished from it, in MLflow and in Optuna.
    assert by_number[saved].state == COMPLETE and by_number[saved].values == done.values
    assert sweep.client.get_run(saved_run).info.status == "FINISHED"
    assert sweep.history(saved_run, "val_accuracy") == sweep.saved_steps(done.number)
    assert sweep.parent().info.status == "KILLED"


def test_a_live_driver_is_left_alone(sweep, capsys):
    number, run_id = running_trial(sweep, {"erase_axis": "key", "task.name": "mqar"}, 9)
    with driver_lock(sweep.path):  # what a running driver holds
        code, out = sweep.check(capsys)
        assert code == 0 and "holds" in out and f"in progress: trial {number}" in out, out
        code, out = sweep.check(capsys, "--repair")
    assert code == 0
    assert [t.state for t in sweep.study.trials if t.number == number] == [RUNNING]
    code, out = sweep.check(capsys)
    assert code == 1 and "[running_trial]" in out, out  # once the lock is free, the trial is an orphan


def test_a_process_with_the_study_open_counts_as_a_live_driver(sweep, capsys):
    number, _ = running_trial(sweep, {"erase_axis": "key", "task.name": "mqar"}, 9)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        f"db = sqlite3.connect({str(sweep.path / 'optuna.db')!r}); db.execute('select 1').fetchall()\n"
        "print('open', flush=True); time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        code, out = sweep.check(capsys, "--repair")
        assert code == 0 and f"pid {holder.pid} has" in out and f"in progress: trial {number}" in out, out
    finally:
        holder.kill()  # by its PID
        holder.wait(30)
    assert [t.state for t in sweep.study.trials if t.number == number] == [RUNNING]


def test_unknown_sweep_is_a_usage_error(tmp_path, capsys):
    assert main(["sweep", "check", "nope", "--root", str(tmp_path)]) == 2
    assert "no sweep named 'nope'" in capsys.readouterr().err
