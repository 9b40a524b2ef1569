"""The one place a trial of a sweep changes state.

A trial's end is written in this order, so a process killed at any instant loses nothing:

1. ``results/trial-N.json`` (atomic; ``SweepDir.save_result``),
2. the tracker: the run's missing metric steps, its state tags, its terminal status,
3. Optuna: ``tell`` (objective values, or PRUNED / FAIL with the reason as a user attribute).

The driver records trials as they end (``finish``); a resumed driver and ``sweep check
--repair`` record the trials a dead driver left RUNNING (``recover``): one with a saved
result is finished from it, one without is told FAIL (``driver_died``), its run KILLED, and
its point and seed re-queued. A trial's run is created in one place too (``start``; and
``run_for`` re-creates a lost one from the trial's saved result).
"""
from __future__ import annotations

import logging
from typing import Optional

import optuna
from optuna.trial import TrialState

from carvelab.search_space.sweep_dir import SweepDir
from carvelab.trials.sweep import study as st
from carvelab.trials.tracking import (
    RUN_STATUS, RunStore, Tracker, flatten, logged_history, result_tags, test_metrics,
)

logger = logging.getLogger(__name__)
RUN_ID_ATTR = "mlflow_run_id"  # the Optuna user attribute naming a trial's run (any backend; kept for old studies)


class Recorder:
    def __init__(self, folder: SweepDir, tracker: Tracker, store: RunStore, study: optuna.Study,
                 objectives: list[str], default_seed: int, sweep: str):
        self.dir, self.tracker, self.store, self.study = folder, tracker, store, study
        self.objectives, self.default_seed, self.sweep = objectives, default_seed, sweep
        self.run_ids: dict[int, str] = {}               # trial number -> its run
        self.logged: dict[int, set] = {}                # trial number -> steps its run holds
        self.live: dict[int, optuna.trial.Trial] = {}   # trial number -> the running trial, to be told

    # ------------------------------------------------------------------ a running trial
    def start(self, trial: optuna.trial.Trial, params: dict[str, str], tags: dict[str, str]) -> Optional[str]:
        """Create the trial's run (before it trains) and remember the trial until it is told."""
        run_id = self.tracker.start_child(trial.number, params, {"carvelab.sweep": self.sweep, **tags})
        trial.set_user_attr(RUN_ID_ATTR, run_id)
        self.run_ids[trial.number], self.live[trial.number] = run_id, trial
        return run_id

    def report(self, number: int, step: int, metrics: dict) -> None:
        """A streamed evaluation of a running trial (each step once)."""
        run_id = self.run_ids.get(number)
        logged = self.logged.setdefault(number, set())
        if run_id and step not in logged:
            self.tracker.log_metrics(run_id, step, metrics)
            logged.add(step)

    def finish(self, number: int, payload: dict, saved: bool = False,
               missing: Optional[list] = None) -> tuple[str, Optional[str]]:
        """Record a live trial's end: result file (unless ``saved``), tracker, Optuna. Returns the
        (status, reason) told to Optuna (a completed trial missing an objective is failed).
        ``missing``: the (step, key, value) its run lacks, where the streamed steps are not known."""
        if not saved:
            self.dir.save_result(number, payload)
        run_id = self.run_ids.get(number)
        status, reason = payload["status"], payload.get("reason")
        if run_id:
            if missing is None:
                for step, metrics in payload.get("history", []):
                    self.report(number, step, metrics)  # the steps not streamed while it ran
                if test_metrics(payload):  # never streamed: logged here, at the last step
                    self.tracker.log_metrics(run_id, payload.get("steps", 0), test_metrics(payload))
            else:
                self._log(run_id, missing)
            self._traceback(number, run_id, payload)
            self.tracker.set_tags(run_id, {"state": status, "reason": reason or "", **result_tags(payload)})
            self.tracker.finish(run_id, RUN_STATUS[status])
        values = [payload.get("metrics", {}).get(m) for m in self.objectives]
        return st.tell_finished(self.study, self.live.pop(number), status, reason, payload.get("steps", 0), values)

    def _traceback(self, number: int, run_id: str, payload: dict) -> None:
        if payload.get("traceback"):
            path = self.dir.failure_path(number)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(payload["traceback"])
            self.tracker.log_text(run_id, payload["traceback"], "traceback.txt")

    # ------------------------------------------------------------------ recovery
    def recover(self, trial: optuna.trial.FrozenTrial) -> tuple[str, Optional[str]]:
        """A RUNNING trial whose driver died. Returns ("finished", status) when it was finished
        from its saved result, ("requeued", None) when it was failed and its point re-queued."""
        payload = self.dir.load_result(trial.number)
        run = self._active_run(trial)
        self.live[trial.number] = st.live_trial(self.study, trial)
        if payload is not None:  # finished in Ray, saved, not fully recorded: record it
            run_id = run.run_id if run is not None else self.run_for(trial)[0]
            self.run_ids[trial.number] = run_id
            missing = missing_metrics(self.store, run_id, logged_history(payload))
            status, _ = self.finish(trial.number, payload, saved=True, missing=missing)
            return "finished", status
        if run is not None and run.status == "RUNNING":
            self.tracker.set_tags(run.run_id, {"state": "failed", "reason": "driver_died"})
            self.tracker.finish(run.run_id, "KILLED")
        live = self.live.pop(trial.number)
        live.set_user_attr("reason", "driver_died")
        self.study.tell(live, state=TrialState.FAIL)
        # A driver killed inside ask leaves only part of the params: the fixed ones complete them.
        point = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
        st.enqueue(self.study, point, int(trial.user_attrs.get("seed", self.default_seed)),
                   trial.user_attrs.get("label", ""), st.tune_of(trial), requeued_from=trial.number)
        return "requeued", None

    def _active_run(self, trial):
        runs = self.trial_runs(trial.number)
        return keeper(trial, runs) if runs else None

    def trial_runs(self, number: int, deleted: bool = False) -> list:
        return [r for r in self.store.runs(self.sweep, deleted) if r.role == "trial" and r.trial_number == number]

    def _log(self, run_id: str, missing: list) -> None:
        by_step: dict[int, dict] = {}
        for step, key, value in missing:
            by_step.setdefault(step, {})[key] = value
        for step, metrics in sorted(by_step.items()):
            self.tracker.log_metrics(run_id, step, metrics)

    # ------------------------------------------------------------------ a run out of step with its told trial
    def run_for(self, trial) -> tuple[str, str]:
        """The trial's run: its active one, else its deleted one restored, else a new one made from
        its saved result (under the sweep's parent run). Returns (run id, what was done)."""
        active = self.trial_runs(trial.number)
        if active:
            rid = keeper(trial, active).run_id
            return rid, f"run {rid}"
        deleted = self.trial_runs(trial.number, deleted=True)
        if deleted:
            rid = keeper(trial, deleted).run_id
            self.tracker.restore_run(rid)
            return rid, f"restored deleted run {rid}"
        if self.tracker.parent_run_id is None:
            parent = self.store.parent(self.sweep)
            if parent is not None:
                self.tracker.parent_run_id = parent.run_id
            else:  # the sweep's parent run was lost too: a new one, not running
                self.tracker.finish(self.tracker.start_parent(self.sweep, {}), "KILLED")
        payload = self.dir.load_result(trial.number) or {}
        params = flatten(payload["config"]) if payload.get("config") else {k: str(v) for k, v in trial.params.items()}
        tags = {"seed": str(trial.user_attrs.get("seed", "")), "label": str(trial.user_attrs.get("label", "")),
                "optuna_study": self.sweep, "carvelab.replaces_run": str(trial.user_attrs.get(RUN_ID_ATTR, ""))}
        return self.tracker.start_child(trial.number, params, {"carvelab.sweep": self.sweep, **tags}), \
            "re-created the run"

    def sync_run(self, trial, run_id: str) -> int:
        """Bring a told trial's run in line with it: the metric values it lacks (from the saved
        result), its state tags and terminal status. Returns how many values were logged."""
        payload = self.dir.load_result(trial.number)
        if payload and payload.get("history"):
            missing = missing_metrics(self.store, run_id, logged_history(payload))
        elif trial.state == TrialState.COMPLETE:  # no saved history: the objective values at the last step
            step = int(trial.user_attrs.get("steps", 0))
            missing = missing_metrics(self.store, run_id, [(step, dict(zip(self.objectives, trial.values)))])
        else:
            missing = []
        self._log(run_id, missing)
        state = trial.user_attrs.get("state") or {"COMPLETE": "completed", "PRUNED": "pruned"}.get(
            trial.state.name, "failed")
        tags = {"state": state, "reason": trial.user_attrs.get("reason", "")}
        if payload:
            tags.update(result_tags(payload))
        self.tracker.set_tags(run_id, tags)
        self.tracker.finish(run_id, expected_status(trial)[0] or "FAILED")
        return len(missing)


def missing_metrics(store: RunStore, run_id: str, history: list) -> list[tuple[int, str, float]]:
    """(step, key, value) of a history that the run lacks."""
    keys = sorted({k for _, metrics in history for k, v in metrics.items() if st.finite(v)})
    present = {k: store.metric_steps(run_id, k) for k in keys}
    return [(int(step), k, float(v)) for step, metrics in history for k, v in metrics.items()
            if st.finite(v) and int(step) not in present[k]]


def expected_status(trial) -> tuple[Optional[str], bool]:
    """(terminal run status, whether a run must exist) for a finished trial."""
    if trial.state == TrialState.COMPLETE:
        return "FINISHED", True
    if trial.state == TrialState.PRUNED:
        return "KILLED", True
    reason = trial.user_attrs.get("reason")
    if reason == "driver_died":  # its run (if it got one) was KILLED
        return "KILLED", False
    if reason in st.NO_TRAINING_REASONS:  # never trained (infeasible, ...): no run
        return None, False
    if reason == "missing_objective":  # the run finished; Optuna had no value to take
        return "FINISHED", True
    return "FAILED", reason is not None


def keeper(trial, runs: list):
    """The run a trial keeps among several: the one it names, else one in the right state, else the newest."""
    named = trial.user_attrs.get(RUN_ID_ATTR) if trial is not None else None
    want = expected_status(trial)[0] if trial is not None and trial.state.is_finished() else None
    return sorted(runs, key=lambda r: (r.run_id == named, r.status == want, r.status == "FINISHED",
                                       r.start_time or 0))[-1]
