"""``carvelab sweep check``: reconcile a sweep's Optuna study with its MLflow runs.

Every trial that trained has one MLflow child run whose terminal status matches the
trial's state (COMPLETE -> FINISHED, PRUNED -> KILLED, FAIL -> FAILED; a trial that failed
as ``infeasible`` never trained and has no run, one that failed as ``driver_died`` has a
KILLED run or none, other failures that never trained have none). Disagreements, by kind:

- ``complete_without_run``: a COMPLETE trial without a FINISHED run;
- ``trial_without_run``: a PRUNED or FAILED trial that trained but has no run;
- ``run_without_trial``: a child run naming no trial of the study (or a trial never run);
- ``duplicate_runs``: several runs for one trial;
- ``running_trial`` / ``running_run``: a RUNNING trial, or a RUNNING run (child or parent),
  while no driver is alive;
- ``status_mismatch``: a run's terminal status disagrees with its trial's state;
- ``missing_metrics``: a completed trial's run lacks evaluation steps of its saved result.

``--repair`` fixes them in the driver's own write order (MLflow first, then Optuna), from
the saved results (``results/trial-N.json``) where they exist: extra runs are deleted (MLflow's
soft delete), a deleted run of a trial is restored (or re-created from the saved result),
missing metric steps are logged, terminal statuses are set, and a RUNNING trial is finished
from its saved result or marked FAIL (``driver_died``, its run KILLED) with its point and
seed re-queued, as a resumed driver would. Nothing is repaired while a driver is alive.

A live driver: a process holding the lock of ``<sweep>/driver.lock`` (``driver_lock``), or
another process with the sweep's SQLite Optuna database open (for a driver that takes no
lock; with another storage only the lock tells).
"""
from __future__ import annotations

import fcntl
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import optuna
from optuna.trial import TrialState

from carvelab.search_space.sweep_dir import LOCK_NAME, SweepDir, driver_lock, lock_owner
from carvelab.trials.study import finite
from carvelab.trials.tracking import MLFLOW_STATUS, _retry, flatten, logged_history, result_tags

logger = logging.getLogger(__name__)

# Kinds in the order --repair handles them (deletions first, so later steps see one run per trial).
KINDS = ("run_without_trial", "duplicate_runs", "running_trial", "running_run", "complete_without_run",
         "trial_without_run", "status_mismatch", "missing_metrics")


@dataclass
class Issue:
    kind: str
    detail: str
    trial: Optional[int] = None
    run_id: Optional[str] = None
    fix: str = ""  # what --repair did

    def line(self) -> str:
        return f"[{self.kind}] {self.detail}" + (f" -> {self.fix}" if self.fix else "")


@dataclass
class CheckReport:
    name: str
    path: str
    driver: Optional[str]               # the live driver, in words; None when none runs
    trials: dict = field(default_factory=dict)  # state name -> count
    runs: int = 0
    issues: list = field(default_factory=list)       # disagreements found (after any repair)
    repaired: list = field(default_factory=list)     # disagreements found before the repair, with the fix
    in_progress: list = field(default_factory=list)  # RUNNING work of a live driver
    notes: list = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.issues

    def text(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.trials.items())) or "none"
        lines = [f"sweep {self.name} ({self.path})",
                 f"driver: {self.driver or 'none running'}",
                 f"optuna trials: {counts}; mlflow trial runs: {self.runs}"]
        if self.repaired:
            lines.append(f"repaired ({len(self.repaired)}):")
            lines += [f"  {i.line()}" for i in self.repaired]
        if self.issues:
            lines.append(f"disagreements ({len(self.issues)}):")
            lines += [f"  {i.line()}" for i in self.issues]
        if self.in_progress:
            lines.append(f"in progress: {', '.join(self.in_progress)}")
        lines += self.notes
        lines.append("consistent" if self.consistent else
                     f"{len(self.issues)} disagreement(s) remain"
                     + ("" if self.repaired or self.driver else "; --repair fixes them"))
        return "\n".join(lines)


# ----------------------------------------------------------------------------- liveness
def live_driver(sweep_path: Path, storage: str) -> Optional[str]:
    """Describe the live driver of the sweep at ``sweep_path``, or None."""
    lock = sweep_path / LOCK_NAME
    if lock.exists():
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f"{lock_owner(lock)} holds {lock}"
        finally:
            os.close(fd)
    # A free (or absent) lock proves nothing about a driver that does not take it.
    db = _sqlite_file(storage)
    if db is None:
        return None
    for pid, path in _open_files(db):
        return f"pid {pid} has {path} open"
    return None


def _sqlite_file(storage: str) -> Optional[Path]:
    from sqlalchemy.engine import make_url

    try:
        url = make_url(storage)
    except Exception:  # not a database URL: nothing to look for
        return None
    if not url.drivername.startswith("sqlite") or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).resolve()


def _open_files(db: Path) -> Iterator[tuple[int, Path]]:
    """(pid, path) of other processes holding ``db`` (or its journal) open, from /proc."""
    names = {str(db), f"{db}-journal", f"{db}-wal", f"{db}-shm"}
    proc = Path("/proc")
    if not proc.is_dir():
        return
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # gone, or not ours to look at
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target in names:
                yield int(entry.name), Path(target)
                break


# ----------------------------------------------------------------------------- reading a sweep
class _Sweep:
    """A sweep's directory, snapshot, Optuna study and MLflow experiment (read, or written by repairs)."""

    def __init__(self, name: str, root: str | Path):
        self.dir = SweepDir(root, name)
        self.spec = self.dir.spec()
        self.name = name
        self.storage = self.spec.storage or self.dir.optuna_url
        self.tracking_uri = self.spec.tracking.uri or self.dir.mlflow_uri
        self.experiment_name = self.spec.tracking.experiment or name
        self.objectives = [o.metric for o in self.spec.objectives]
        self.seeds = self.spec.seeds
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            self.study: Optional[optuna.Study] = optuna.load_study(study_name=name, storage=self.storage)
        except KeyError:
            self.study = None
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def has_tracking(self) -> bool:
        """False when the sweep's own SQLite MLflow file does not exist (nothing to read, nothing created)."""
        return self.tracking_uri != self.dir.mlflow_uri or (self.dir.path / "mlflow.db").exists()

    def experiment_id(self, create: bool = False) -> Optional[str]:
        if not create and not self.has_tracking():
            return None
        exp = _retry(self.client.get_experiment_by_name, self.experiment_name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted" and create:
                _retry(self.client.restore_experiment, exp.experiment_id)
            return exp.experiment_id
        if not create:
            return None
        return _retry(self.client.create_experiment, self.experiment_name,
                      artifact_location=self.dir.artifact_location)

    def runs(self, deleted: bool = False) -> list:
        """Runs of this sweep (parent and children), active ones or deleted ones."""
        from mlflow.entities import ViewType

        exp = self.experiment_id()
        if exp is None:
            return []
        out, token = [], None
        while True:
            page = _retry(self.client.search_runs, [exp], filter_string=f"tags.`carvelab.sweep` = '{self.name}'",
                          run_view_type=ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY,
                          max_results=1000, page_token=token)
            out += list(page)
            token = page.token
            if not token:
                return out

    def trials(self) -> list:
        return self.study.get_trials(deepcopy=False) if self.study is not None else []


def _number(run) -> Optional[int]:
    try:
        return int(run.data.tags.get("optuna_trial_number", ""))
    except ValueError:
        return None


def _expected(trial) -> tuple[Optional[str], bool]:
    """(terminal run status, whether a run must exist) for a finished trial."""
    if trial.state == TrialState.COMPLETE:
        return "FINISHED", True
    if trial.state == TrialState.PRUNED:
        return "KILLED", True
    from carvelab.trials.study import NO_TRAINING_REASONS

    reason = trial.user_attrs.get("reason")
    if reason == "driver_died":  # its run (if it got one) was KILLED
        return "KILLED", False
    if reason in NO_TRAINING_REASONS:  # never trained (infeasible, ...): no run
        return None, False
    if reason == "missing_objective":  # the run finished; Optuna had no value to take
        return "FINISHED", True
    return "FAILED", reason is not None


def _keeper(trial, runs: list):
    """The run a trial keeps among several: the one it names, else one in the right state, else the newest."""
    named = trial.user_attrs.get("mlflow_run_id") if trial is not None else None
    want = _expected(trial)[0] if trial is not None and trial.state.is_finished() else None
    return sorted(runs, key=lambda r: (r.info.run_id == named, r.info.status == want,
                                       r.info.status == "FINISHED", r.info.start_time or 0))[-1]


def _missing_steps(sweep: _Sweep, run_id: str, history: list) -> list[tuple[int, str, float]]:
    """(step, key, value) of a saved history that the run lacks."""
    keys = sorted({k for _, metrics in history for k, v in metrics.items() if finite(v)})
    present = {k: {m.step for m in _retry(sweep.client.get_metric_history, run_id, k)} for k in keys}
    return [(int(step), k, float(v)) for step, metrics in history for k, v in metrics.items()
            if finite(v) and int(step) not in present[k]]


# ----------------------------------------------------------------------------- the check
def inspect_sweep(sweep: _Sweep) -> CheckReport:
    driver = live_driver(sweep.dir.path, sweep.storage)
    trials = sweep.trials()  # trials before runs: a live driver creates a trial before its run
    runs = sweep.runs()
    report = CheckReport(sweep.name, str(sweep.dir.path), driver)
    for t in trials:
        report.trials[t.state.name] = report.trials.get(t.state.name, 0) + 1
    by_number = {t.number: t for t in trials}
    newest = max(by_number, default=-1)
    children = [r for r in runs if r.data.tags.get("carvelab.role") == "trial"]
    parents = [r for r in runs if r.data.tags.get("carvelab.role") == "sweep"]
    report.runs = len(children)
    issues = report.issues
    runs_of: dict[int, list] = {}
    for r in children:
        n = _number(r)
        if n is not None and n in by_number and by_number[n].state != TrialState.WAITING:
            runs_of.setdefault(n, []).append(r)
        elif driver and n is not None and n > newest:
            report.in_progress.append(f"run {r.info.run_id} (trial {n})")
        else:
            what = "names no trial" if n is None else f"names trial {n}, which " + (
                "has not started" if n in by_number else "is not in the study")
            issues.append(Issue("run_without_trial", f"run {r.info.run_id} {what}", n, r.info.run_id))
    for n, rs in sorted(runs_of.items()):
        if len(rs) > 1:
            keep = _keeper(by_number[n], rs)
            extra = [r for r in rs if r is not keep]
            issues.append(Issue("duplicate_runs", f"trial {n} has {len(rs)} runs; keeping {keep.info.run_id} "
                                f"({keep.info.status}), extra: "
                                + ", ".join(f"{r.info.run_id} ({r.info.status})" for r in extra),
                                n, ",".join(r.info.run_id for r in extra)))
    for t in trials:
        rs = runs_of.get(t.number, [])
        run = _keeper(t, rs) if rs else None
        if t.state == TrialState.WAITING:
            continue
        if t.state == TrialState.RUNNING:
            if driver:
                report.in_progress.append(f"trial {t.number}")
            else:
                issues.append(Issue("running_trial", f"trial {t.number} is RUNNING and no driver is alive",
                                    t.number, run.info.run_id if run else None))
            continue
        status, required = _expected(t)
        if run is None:
            if required:
                kind = "complete_without_run" if t.state == TrialState.COMPLETE else "trial_without_run"
                issues.append(Issue(kind, f"trial {t.number} is {t.state.name} but has no MLflow run", t.number))
            continue
        rid = run.info.run_id
        if run.info.status == "RUNNING":
            if driver:
                report.in_progress.append(f"run {rid} (trial {t.number})")
            else:
                issues.append(Issue("running_run", f"run {rid} of {t.state.name} trial {t.number} is RUNNING "
                                    "and no driver is alive", t.number, rid))
            continue
        if status is not None and run.info.status != status:
            kind = "complete_without_run" if t.state == TrialState.COMPLETE else "status_mismatch"
            issues.append(Issue(kind, f"trial {t.number} is {t.state.name} but its run {rid} is "
                                f"{run.info.status} (expected {status})", t.number, rid))
            continue
        if t.state == TrialState.COMPLETE:
            payload = sweep.dir.load_result(t.number)
            missing = _missing_steps(sweep, rid, logged_history(payload)) if payload else []
            if missing:
                steps = sorted({s for s, _, _ in missing})
                issues.append(Issue("missing_metrics", f"run {rid} of trial {t.number} lacks {len(missing)} "
                                    f"metric values at steps {steps} of its saved result", t.number, rid))
    for p in parents:
        if p.info.status == "RUNNING" and not driver:
            issues.append(Issue("running_run", f"parent run {p.info.run_id} is RUNNING and no driver is alive",
                                None, p.info.run_id))
    return report


def check_sweep(name: str, root: str | Path = "carvelab_sweeps", repair: bool = False) -> CheckReport:
    """Check (and with ``repair``, fix) the sweep ``<root>/<name>``; see the module docstring."""
    sweep = _Sweep(name, root)
    report = inspect_sweep(sweep)
    if not repair or not report.issues:
        return report
    if report.driver:
        report.notes.append(f"not repaired: a driver is running ({report.driver}); stop it or let it finish")
        return report
    with driver_lock(sweep.dir.path):
        found = sorted(report.issues, key=lambda i: KINDS.index(i.kind))
        for issue in found:
            try:
                issue.fix = _repair(sweep, issue)
            except Exception as exc:  # report and go on: the final inspection says what remains
                logger.exception("repair of %s failed", issue.line())
                issue.fix = f"repair failed: {type(exc).__name__}: {exc}"
    after = inspect_sweep(sweep)
    after.repaired = found
    return after


# ----------------------------------------------------------------------------- repairs
def _repair(sweep: _Sweep, issue: Issue) -> str:
    client = sweep.client
    trial = _trial(sweep, issue.trial)
    if issue.kind == "run_without_trial":
        _retry(client.delete_run, issue.run_id)
        return "deleted the run"
    if issue.kind == "duplicate_runs":
        for rid in issue.run_id.split(","):
            _retry(client.delete_run, rid)
        return f"deleted {len(issue.run_id.split(','))} run(s)"
    if issue.kind == "running_trial":
        return _recover_trial(sweep, trial)
    if issue.kind == "running_run" and trial is None:  # the parent run
        _retry(client.set_terminated, issue.run_id, status="KILLED")
        return "set the parent run KILLED"
    if issue.kind in ("running_run", "complete_without_run", "trial_without_run", "status_mismatch",
                      "missing_metrics"):
        run_id, how = _run_for(sweep, trial)
        status, _ = _expected(trial)
        payload = sweep.dir.load_result(trial.number)
        logged = _fill(sweep, run_id, trial, payload)
        _retry(client.set_terminated, run_id, status=status or "FAILED")
        return f"{how}; logged {logged} metric values; status {status}"
    raise ValueError(f"unknown issue kind {issue.kind!r}")


def _trial(sweep: _Sweep, number: Optional[int]):
    found = [t for t in sweep.trials() if t.number == number]
    return found[0] if found else None


def _runs_of(sweep: _Sweep, number: int, deleted: bool = False) -> list:
    return [r for r in sweep.runs(deleted) if r.data.tags.get("carvelab.role") == "trial" and _number(r) == number]


def _run_for(sweep: _Sweep, trial) -> tuple[str, str]:
    """The trial's run: its active one, else its deleted one restored, else a new one."""
    active = _runs_of(sweep, trial.number)
    if active:
        return _keeper(trial, active).info.run_id, f"run {_keeper(trial, active).info.run_id}"
    deleted = _runs_of(sweep, trial.number, deleted=True)
    if deleted:
        rid = _keeper(trial, deleted).info.run_id
        _retry(sweep.client.restore_run, rid)
        return rid, f"restored deleted run {rid}"
    return _create_run(sweep, trial), "re-created the run"


def _create_run(sweep: _Sweep, trial) -> str:
    from mlflow.entities import Param

    client = sweep.client
    exp = sweep.experiment_id(create=True)
    parent = [r for r in sweep.runs() if r.data.tags.get("carvelab.role") == "sweep"]
    if parent:
        parent_id = parent[0].info.run_id
    else:
        parent_id = _retry(client.create_run, exp, run_name=sweep.name,
                           tags={"carvelab.role": "sweep", "carvelab.sweep": sweep.name}).info.run_id
        _retry(client.set_terminated, parent_id, status="KILLED")
    payload = sweep.dir.load_result(trial.number) or {}
    tags = {"mlflow.parentRunId": parent_id, "carvelab.role": "trial", "carvelab.sweep": sweep.name,
            "optuna_trial_number": str(trial.number), "optuna_study": sweep.name,
            "seed": str(trial.user_attrs.get("seed", "")), "label": str(trial.user_attrs.get("label", "")),
            "carvelab.replaces_run": str(trial.user_attrs.get("mlflow_run_id", ""))}
    run = _retry(client.create_run, exp, run_name=f"trial-{trial.number}", tags=tags)
    params = flatten(payload["config"]) if payload.get("config") else {k: str(v) for k, v in trial.params.items()}
    items = [Param(k[:250], v[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        _retry(client.log_batch, run.info.run_id, params=items[i:i + 100])
    return run.info.run_id


def _fill(sweep: _Sweep, run_id: str, trial, payload: Optional[dict]) -> int:
    """Log the metric values the run lacks (from the saved result) and the trial's state tags."""
    from mlflow.entities import Metric, RunTag

    client = sweep.client
    if payload and payload.get("history"):
        missing = _missing_steps(sweep, run_id, logged_history(payload))
    elif trial.state == TrialState.COMPLETE:  # no saved history: the objective values at the last step
        step = int(trial.user_attrs.get("steps", 0))
        history = [(step, dict(zip(sweep.objectives, trial.values)))]
        missing = _missing_steps(sweep, run_id, history)
    else:
        missing = []
    now = int(time.time() * 1000)
    items = [Metric(k, v, now, step) for step, k, v in missing]
    for i in range(0, len(items), 1000):
        _retry(client.log_batch, run_id, metrics=items[i:i + 1000])
    state = trial.user_attrs.get("state") or {"COMPLETE": "completed", "PRUNED": "pruned"}.get(
        trial.state.name, "failed")
    tags = {"state": state, "reason": trial.user_attrs.get("reason", "")}
    if payload:
        tags.update(result_tags(payload))
    _retry(client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    return len(items)


def _recover_trial(sweep: _Sweep, trial) -> str:
    """A RUNNING trial whose driver died: what a resumed driver does, without training anything."""
    from carvelab.trials import study as st

    client, study = sweep.client, sweep.study
    payload = sweep.dir.load_result(trial.number)
    active = _runs_of(sweep, trial.number)
    run = _keeper(trial, active) if active else None
    live = optuna.trial.Trial(study, trial._trial_id)
    if payload is not None:  # finished in Ray, saved, not fully recorded: record it (MLflow, then Optuna)
        status, reason = payload["status"], payload.get("reason")
        run_id = run.info.run_id if run is not None else _run_for(sweep, trial)[0]
        logged = _fill(sweep, run_id, trial, payload)
        if payload.get("traceback"):
            _retry(client.log_text, run_id, payload["traceback"], "traceback.txt")
        _retry(client.log_batch, run_id, tags=[_tag("state", status), _tag("reason", reason or "")])
        _retry(client.set_terminated, run_id, status=MLFLOW_STATUS[status])
        values = [payload.get("metrics", {}).get(m) for m in sweep.objectives]
        status, _ = st.tell_finished(study, live, status, reason, payload.get("steps", 0), values)
        return f"finished from its saved result as {status} (logged {logged} missing metric values)"
    if run is not None and run.info.status == "RUNNING":
        _retry(client.log_batch, run.info.run_id, tags=[_tag("state", "failed"), _tag("reason", "driver_died")])
        _retry(client.set_terminated, run.info.run_id, status="KILLED")
    # The full point: an enqueued trial killed while its parameters were being written has
    # only some of them in ``params``; the rest are still in its fixed parameters.
    point = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
    live.set_user_attr("reason", "driver_died")
    study.tell(live, state=TrialState.FAIL)
    st.enqueue(study, point, int(trial.user_attrs.get("seed", sweep.seeds[0])), trial.user_attrs.get("label", ""),
               st.tune_of(trial), requeued_from=trial.number)
    return "marked FAIL (driver_died)" + (", its run KILLED" if run is not None else "") + "; point re-queued"


def _tag(key: str, value: str):
    from mlflow.entities import RunTag

    return RunTag(key, str(value))
