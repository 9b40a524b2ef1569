"""Faults inside trials: a worker SIGKILLed mid-trial, and trials that raise, diverge, run out
of memory or hang past their timeout. The local Ray of ``scheduler.start_ray`` runs them."""
import os
import signal
import threading
import time

import optuna
from mlflow.tracking import MlflowClient

from carvelab.search_space.sweep_loading import load_sweep
from carvelab.trials.sweep.driver import run_sweep
from tests.reliability.helpers import (
    COMPLETE, FAIL, RUNNING, account, alive, audit, cmdline, child_runs, point_key, raylet_pid,
    running_trial_workers, wait_for,
)
from tests.reliability.ledger import LEDGER
from tests.trials.sweep_helpers import tiny_sweep


def test_worker_killed_mid_trial_is_retried_and_the_trial_completes_once(tmp_path, local_ray):
    data = tiny_sweep("worker-kill", tmp_path / "cache", mode="grid", budget={},
                      space={"erase_axis": ["key", "value"]},
                      resources={"cpus_per_trial": 1, "concurrency": 2, "max_retries": 1})
    # Long enough (seconds, even in a worker that has torch imported already) to be killed mid-training.
    data["base"]["train"].update(steps=400, eval_every=100)
    storage = f"sqlite:///{tmp_path / 'worker-kill' / 'optuna.db'}"
    raylet = raylet_pid()
    killed: dict = {}

    def kill_a_trial_worker():
        def a_trial_is_running():
            try:
                study = optuna.load_study(study_name="worker-kill", storage=storage)
            except Exception:  # the study does not exist yet
                return False
            return any(t.state == RUNNING for t in study.trials)

        try:
            wait_for(a_trial_is_running, 180, "a RUNNING trial")

            def a_worker_still_in_its_trial():
                for pid in running_trial_workers(raylet):
                    time.sleep(0.5)  # into the trial: imports done, training under way
                    title = cmdline(pid)
                    if title.startswith("ray::_run_remote"):  # not finished meanwhile: kill it now
                        os.kill(pid, signal.SIGKILL)
                        return pid, title
                return None

            killed["pid"], killed["title"] = wait_for(a_worker_still_in_its_trial, 120, "a worker in its trial")
        except BaseException as exc:  # reported by the main thread
            killed["error"] = exc

    killer = threading.Thread(target=kill_a_trial_worker, daemon=True)
    killer.start()
    summary = run_sweep(load_sweep(data), tmp_path)
    killer.join(30)
    assert "error" not in killed, f"could not kill a trial worker: {killed.get('error')!r}"
    LEDGER.faults_injected += 1
    wait_for(lambda: not alive(killed["pid"]), 30, f"worker {killed['pid']} to be gone")

    a = audit("worker-kill", summary.storage, summary.tracking_uri, tmp_path / "worker-kill",
              [point_key({"erase_axis": v}, 0) for v in ("key", "value")])
    account(a)
    # Without the retry the killed trial would be FAIL (worker_died); with it, each point completes once.
    assert summary.counts["failed"] == 0, summary.counts
    assert not a.lost and not a.duplicates and not a.problems, a
    assert not a.repeats, a.repeats  # a retried task re-reports steps: the driver logs each once
    LEDGER.faults_survived += 1


def test_failing_trials_are_recorded_with_their_reason_and_the_sweep_goes_on(tmp_path, local_ray):
    hang = {"train.steps": 10_000_000, "train.eval_every": 1_000_000}
    changes = [
        {"train.lr": 1e30},          # weights overflow: the loss is NaN/Inf -> diverged
        {"model.d_model": 2_000_000},  # a 16 TB weight matrix: the allocation fails -> oom
        {"task.name": "lm"},         # its data file does not exist: the task raises -> exception
        hang,                        # trains far past resources.trial_timeout_s -> timeout
    ]
    data = tiny_sweep("failures", tmp_path / "cache", mode="ablation", budget={}, space={},
                      ablation={"changes": changes},
                      resources={"cpus_per_trial": 1, "concurrency": 2, "trial_timeout_s": 20})
    data["base"]["task"]["data_path"] = str(tmp_path / "missing.txt")  # only the lm task reads it
    raylet = raylet_pid()
    started = time.monotonic()
    summary = run_sweep(load_sweep(data), tmp_path)
    wall = time.monotonic() - started
    LEDGER.faults_injected += 4

    study = optuna.load_study(study_name="failures", storage=summary.storage)
    by_label = {t.user_attrs["label"]: t for t in study.trials}
    expected = {"baseline": None, "train.lr=1e+30": "diverged", "model.d_model=2000000": "oom",
                "task.name=lm": "exception", "train.steps=10000000,train.eval_every=1000000": "timeout"}
    assert sorted(by_label) == sorted(expected), sorted(by_label)
    assert by_label["baseline"].state == COMPLETE  # the sweep went on around its failures
    runs = child_runs(MlflowClient(summary.tracking_uri), "failures", "failures")
    run_of = {int(r.data.tags["optuna_trial_number"]): r for r in runs}
    assert len(run_of) == len(runs) == 5, [r.data.tags.get("optuna_trial_number") for r in runs]
    for label, reason in expected.items():
        trial = by_label[label]
        run = run_of[trial.number]
        if reason is None:
            assert run.info.status == "FINISHED"
            continue
        assert trial.state == FAIL and trial.user_attrs.get("reason") == reason, (label, trial.user_attrs)
        assert run.info.status == "FAILED" and run.data.tags.get("reason") == reason, (label, run.data.tags)
    assert not [t for t in study.trials if t.state == RUNNING]
    # The timed-out trial's worker was ended, not left training.
    wait_for(lambda: not running_trial_workers(raylet), 30, "no worker still executing a trial")
    assert wall < 240, f"the sweep took {wall:.0f}s: the timeout did not stop the hanging trial"
    a = audit("failures", summary.storage, summary.tracking_uri, tmp_path / "failures")
    account(a)
    assert not a.duplicates and not a.problems, a
    LEDGER.faults_survived += 4
