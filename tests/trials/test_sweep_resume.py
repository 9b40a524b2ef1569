"""A driver SIGKILLed mid-sweep, then re-run: every trial exactly once, nothing lost."""
import os
import signal
import subprocess
import sys
import time

import optuna
import sqlalchemy
import yaml

from carvelab.search_space.sweep_loading import load_sweep
from carvelab.trials.sweep.driver import run_sweep
from tests.trials.sweep_helpers import assert_exactly_once, study_of, tiny_sweep


def wait_for(predicate, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_driver_resumes_without_duplicates_or_losses(tmp_path):
    data = tiny_sweep("resume", tmp_path / "cache", mode="grid", budget={},
                      space={"erase_axis": ["key", "value"], "write_gate": ["scalar", "per_value"],
                             "chunk_size": [16, 32]})
    # Trials long enough (a second or more of training) that a kill lands inside one.
    data["base"]["train"].update(steps=300, eval_every=50)
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(data))
    root = tmp_path / "sweeps"
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    proc = subprocess.Popen([sys.executable, "-m", "carvelab.trials.cli", "sweep", "run", str(path),
                             "--root", str(root), "-q"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = root / "resume" / "results"
    storage = f"sqlite:///{root / 'resume' / 'optuna.db'}"

    def interrupted():
        """Numbers of the trials RUNNING in the study that have no saved result."""
        # The study first, the results after: a result saved in between (its trial still
        # RUNNING until the driver tells Optuna) then counts as saved, not as interrupted.
        trials = optuna.load_study(study_name="resume", storage=storage).trials
        saved = {int(p.stem.removeprefix("trial-")) for p in results.glob("trial-*.json")}
        return {t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING} - saved

    def one_done_one_training():
        if not list(results.glob("trial-*.json")):
            return False
        try:
            return bool(interrupted())
        except sqlalchemy.exc.OperationalError:  # the driver holds the SQLite write lock: look again
            return False

    try:
        # Kill once one trial has finished and another is still training.
        wait_for(one_done_one_training, 240, "a first result while another trial trains")
    finally:
        # The driver and the local Ray it started share one process group: end it by its id.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    spec = load_sweep(path)
    lost_in_flight = interrupted()
    assert lost_in_flight, "the kill should interrupt a trial"

    summary = run_sweep(spec, root)
    study, runs = assert_exactly_once(summary)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    points = sorted((t.params["erase_axis"], t.params["write_gate"], t.params["chunk_size"]) for t in complete)
    expected = sorted((a, w, c) for a in ("key", "value") for w in ("scalar", "per_value") for c in (16, 32))
    assert points == expected  # every point once: none lost, none duplicated
    killed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert {t.number for t in killed} == lost_in_flight  # exactly the interrupted ones failed
    assert all(t.user_attrs["reason"] == "driver_died" for t in killed)
    assert len([r for r in runs if r.info.status == "KILLED"]) <= len(killed)
    # A third run finds nothing left to do and trains nothing.
    again = run_sweep(spec, root)
    assert len(study_of(again).trials) == len(study.trials)
