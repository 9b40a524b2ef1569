"""The driver SIGKILLed at precise points (during ask, tell, MLflow logging), then re-run.

``crash_driver.py`` runs the real sweep in a subprocess (its own local Ray, in its own
session) and kills itself with SIGKILL on the N-th call of a chosen function; the test then
ends that session by its process group, re-runs the sweep here, and audits Optuna, MLflow
and the saved results: every grid point completed exactly once, one FINISHED run per
completed trial, nothing left RUNNING, no metric step lost, and ``carvelab sweep check``
agrees.
"""
import shutil

import optuna
import pytest
from mlflow.tracking import MlflowClient

from carvelab.search_space.sweep_loading import load_sweep
from carvelab.trials.ops.check import check_sweep
from carvelab.trials.cli import main
from carvelab.trials.sweep.driver import run_sweep
from tests.reliability.helpers import RUNNING, account, audit, point_key, run_crash_driver, write_sweep
from tests.reliability.ledger import LEDGER
from tests.trials.sweep_helpers import tiny_sweep

SPACE = {"erase_axis": ["key", "value"], "write_gate": ["scalar", "per_value"]}
EXPECTED = [point_key({"erase_axis": a, "write_gate": w}, 0) for a in SPACE["erase_axis"] for w in SPACE["write_gate"]]


def crash_sweep(name, folder, cache, tracking_uri=None):
    tracking = {"uri": tracking_uri, "experiment": name} if tracking_uri else {}
    data = tiny_sweep(name, cache, mode="grid", budget={}, space=SPACE, tracking=tracking)
    return write_sweep(data, folder)


@pytest.fixture(scope="module")
def shared_tracking(tmp_path_factory):
    """One SQLite MLflow store for several sweeps of this module (created here, before any driver)."""
    folder = tmp_path_factory.mktemp("tracking")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()
    return uri


def resume_and_audit(path, root, name, known_bug=False):
    spec = load_sweep(path)
    summary = run_sweep(spec, root)
    a = audit(name, summary.storage, summary.tracking_uri, root / name, EXPECTED, experiment=spec.tracking.experiment)
    account(a, known_bug)
    return a


def assert_survived(a, name, root):
    assert not a.lost, f"trials lost: {a.lost}"
    assert not a.duplicates, f"duplicated: {a.duplicates}"
    assert not a.problems, f"left over or missing: {a.problems}"
    report = check_sweep(name, root)
    assert report.consistent, report.text()
    if a.repeats:  # see test_resumed_driver_logs_each_metric_step_once
        LEDGER.notes.append(f"{name}: {len(a.repeats)} metric series with a step logged twice after resume")


def running_trials(root, name):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{root / name / 'optuna.db'}")
    return [t.number for t in study.trials if t.state == RUNNING]


@pytest.mark.parametrize("target, n, when", [
    ("tell", 1, "before"),         # during tell: result saved, MLflow run FINISHED, Optuna not told
    ("log_metrics", 3, "before"),  # during MLflow logging of streamed metrics, trials mid-training
])
def test_killed_driver_resumes_exactly_once(target, n, when, tmp_path, local_ray, shared_tracking):
    name = f"kill-{target}-{n}-{when}"
    path = crash_sweep(name, tmp_path, tmp_path / "cache", shared_tracking)
    root = tmp_path / "sweeps"
    code = run_crash_driver(path, root, target, n, when)
    assert code == -9, f"the driver should have been SIGKILLed at {target} #{n} (exit {code})"
    LEDGER.faults_injected += 1
    assert running_trials(root, name), "the kill should leave a trial RUNNING"

    a = resume_and_audit(path, root, name)
    assert_survived(a, name, root)
    LEDGER.faults_survived += 1


@pytest.fixture(scope="module")
def killed_during_ask(tmp_path_factory):
    """A sweep whose driver died inside ``ask``: trial 1 RUNNING, its parameters not yet written."""
    folder = tmp_path_factory.mktemp("during-ask")
    path = crash_sweep("kill-during-ask", folder, folder / "cache")
    root = folder / "sweeps"
    code = run_crash_driver(path, root, "set_param", 3, "before")
    assert code == -9, f"the driver should have been SIGKILLed inside ask (exit {code})"
    study = optuna.load_study(study_name="kill-during-ask", storage=f"sqlite:///{root / 'kill-during-ask' / 'optuna.db'}")
    assert [t.params for t in study.trials if t.state == RUNNING][-1] == {}, "trial 1 should have no params yet"
    return path, root


def copy_of(crashed, tmp_path):
    """The crashed sweep copied (its own Optuna and MLflow SQLite files), so each test resumes its own."""
    path, root = crashed
    shutil.copytree(root, tmp_path / "sweeps")
    return path, tmp_path / "sweeps"


def test_killed_during_ask_then_check_repair_then_resume_exactly_once(killed_during_ask, tmp_path, local_ray,
                                                                       capsys):
    path, root = copy_of(killed_during_ask, tmp_path)
    LEDGER.faults_injected += 1
    assert main(["sweep", "check", "kill-during-ask", "--root", str(root)]) == 1
    assert "running_trial" in capsys.readouterr().out
    assert main(["sweep", "check", "kill-during-ask", "--root", str(root), "--repair"]) == 0
    a = resume_and_audit(path, root, "kill-during-ask")
    assert_survived(a, "kill-during-ask", root)
    LEDGER.faults_survived += 1


def test_killed_during_ask_then_resume_exactly_once(killed_during_ask, tmp_path, local_ray):
    path, root = copy_of(killed_during_ask, tmp_path)
    LEDGER.faults_injected += 1
    a = resume_and_audit(path, root, "kill-during-ask")
    assert_survived(a, "kill-during-ask", root)
    LEDGER.faults_survived += 1


class _DriverDied(BaseException):
    """Stands in for the driver's death at an instant (nothing catches a BaseException there)."""


def test_resumed_driver_logs_each_metric_step_once(tmp_path, local_ray, monkeypatch):
    path = crash_sweep("relog", tmp_path, tmp_path / "cache")
    root = tmp_path / "sweeps"

    def dies(*args, **kwargs):
        raise _DriverDied()

    with monkeypatch.context() as m:
        m.setattr(optuna.study.Study, "tell", dies)  # the first result is saved and in MLflow, not in Optuna
        with pytest.raises(_DriverDied):
            run_sweep(load_sweep(path), root)
    LEDGER.faults_injected += 1
    a = resume_and_audit(path, root, "relog")
    assert not a.lost and not a.duplicates and not a.problems, a
    assert not a.repeats, a.repeats
    LEDGER.faults_survived += 1


def pruning_sweep(name, folder):
    """Two good learning rates, then two that barely train; median pruning on val_loss, one trial at a time."""
    data = tiny_sweep(name, folder / "cache", mode="grid", budget={}, space={"train.lr": [3e-2, 1e-2, 1e-7, 1e-6]},
                      objectives=[{"metric": "val_loss", "direction": "minimize"},
                                  {"metric": "params", "direction": "minimize"}],
                      pruner={"name": "median", "metric": "val_loss", "min_peers": 2},
                      resources={"cpus_per_trial": 1, "concurrency": 1})
    data["base"]["train"].update(steps=12, eval_every=2)
    return write_sweep(data, folder)


def decisions(root, name):
    """Per learning rate: how the trial ended and at which step."""
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{root / name / 'optuna.db'}")
    return {t.params["train.lr"]: (t.user_attrs["state"], t.user_attrs["steps"]) for t in study.trials
            if "state" in t.user_attrs}


def uninterrupted_decisions(tmp_path, name):
    """``decisions`` of the pruning sweep run without a fault; the two bad learning rates are
    pruned there only because the pruner knows the two good trials ended."""
    whole = tmp_path / "whole"
    whole.mkdir()
    run_sweep(load_sweep(pruning_sweep(name, whole)), whole / "sweeps")
    expected = decisions(whole / "sweeps", name)
    assert [expected[lr][0] for lr in (1e-7, 1e-6)] == ["pruned", "pruned"], expected
    return expected


def test_resumed_sweep_prunes_exactly_as_an_uninterrupted_one(tmp_path, local_ray):
    """Killed after the two good trials were told: the resumed driver's pruner must know they
    completed (not only their reports), so the two bad trials are pruned at the same steps."""
    expected = uninterrupted_decisions(tmp_path, "prune-whole")

    killed = tmp_path / "killed"
    killed.mkdir()
    path = pruning_sweep("prune-killed", killed)
    code = run_crash_driver(path, killed / "sweeps", "tell", 2, "after")
    assert code == -9, f"the driver should have been SIGKILLed after its second tell (exit {code})"
    assert set(decisions(killed / "sweeps", "prune-killed")) == {3e-2, 1e-2}
    LEDGER.faults_injected += 1
    run_sweep(load_sweep(path), killed / "sweeps")
    assert decisions(killed / "sweeps", "prune-killed") == expected
    LEDGER.faults_survived += 1
