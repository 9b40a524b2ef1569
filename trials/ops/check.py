"""``carvelab sweep check``: reconcile a sweep's Optuna study with its tracked runs (MLflow by default).

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

``--repair`` fixes them through the driver's own ``Recorder`` (trials/sweep/recorder.py: the
tracker first, then Optuna), from the saved results (``results/trial-N.json``) where they
exist: extra runs are deleted (a soft delete), a deleted run of a trial is restored (or
re-created from the saved result), missing metric steps are logged, terminal statuses are
set, and a RUNNING trial is recovered exactly as a resumed driver recovers it. Nothing is
repaired while a driver is alive. Runs are read through the sweep's ``RunStore`` and written
through its ``Tracker`` (trials/tracking).

A live driver: a process holding the lock of ``<sweep>/driver.lock`` (``driver_lock``), or
another process with the sweep's SQLite Optuna database open (for a driver that takes no
lock; with another storage only the lock tells).
"""
from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import optuna
from optuna.trial import TrialState

from carvelab.search_space.sweep_dir import LOCK_NAME, SweepDir, driver_lock, lock_owner
from carvelab.trials.sweep.recorder import Recorder, expected_status, keeper, missing_metrics
from carvelab.trials.tracking import DEFAULT_BACKEND, logged_history, open_store, open_tracker

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
    backend: str = "mlflow"                          # the sweep's tracking.backend, which holds the runs

    @property
    def consistent(self) -> bool:
        return not self.issues

    def text(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.trials.items())) or "none"
        lines = [f"sweep {self.name} ({self.path})",
                 f"driver: {self.driver or 'none running'}",
                 f"optuna trials: {counts}; {self.backend} trial runs: {self.runs}"]
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
    """A sweep's directory, snapshot, Optuna study and runs (read; written by repairs)."""

    def __init__(self, name: str, root: str | Path):
        self.dir = SweepDir(root, name)
        self.spec = self.dir.spec()
        self.name = name
        self.storage = self.spec.storage or self.dir.optuna_url
        self.objectives = [o.metric for o in self.spec.objectives]
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            self.study: Optional[optuna.Study] = optuna.load_study(study_name=name, storage=self.storage)
        except KeyError:
            self.study = None
        self.store = open_store(self.spec.tracking, self.dir.path)
        self._recorder: Optional[Recorder] = None

    @property
    def recorder(self) -> Recorder:
        """The driver's recorder over this sweep (its tracker creates the store if it must)."""
        if self._recorder is None:
            self._recorder = Recorder(self.dir, open_tracker(self.spec.tracking, self.dir.path), self.store,
                                      self.study, self.objectives, self.spec.seeds[0], self.name)
        return self._recorder

    def runs(self, deleted: bool = False) -> list:
        """Runs of this sweep (parent and children), active ones or deleted ones."""
        return self.store.runs(self.name, deleted)

    def trials(self) -> list:
        return self.study.get_trials(deepcopy=False) if self.study is not None else []


# ----------------------------------------------------------------------------- the check
def inspect_sweep(sweep: _Sweep) -> CheckReport:
    driver = live_driver(sweep.dir.path, sweep.storage)
    trials = sweep.trials()  # trials before runs: a live driver creates a trial before its run
    runs = sweep.runs()
    report = CheckReport(sweep.name, str(sweep.dir.path), driver,
                         backend=getattr(sweep.spec.tracking, "backend", None) or DEFAULT_BACKEND)
    for t in trials:
        report.trials[t.state.name] = report.trials.get(t.state.name, 0) + 1
    by_number = {t.number: t for t in trials}
    newest = max(by_number, default=-1)
    children = [r for r in runs if r.role == "trial"]
    parents = [r for r in runs if r.role == "sweep"]
    report.runs = len(children)
    issues = report.issues
    runs_of: dict[int, list] = {}
    for r in children:
        n = r.trial_number
        if n is not None and n in by_number and by_number[n].state != TrialState.WAITING:
            runs_of.setdefault(n, []).append(r)
        elif driver and n is not None and n > newest:
            report.in_progress.append(f"run {r.run_id} (trial {n})")
        else:
            what = "names no trial" if n is None else f"names trial {n}, which " + (
                "has not started" if n in by_number else "is not in the study")
            issues.append(Issue("run_without_trial", f"run {r.run_id} {what}", n, r.run_id))
    for n, rs in sorted(runs_of.items()):
        if len(rs) > 1:
            keep = keeper(by_number[n], rs)
            extra = [r for r in rs if r is not keep]
            issues.append(Issue("duplicate_runs", f"trial {n} has {len(rs)} runs; keeping {keep.run_id} "
                                f"({keep.status}), extra: "
                                + ", ".join(f"{r.run_id} ({r.status})" for r in extra),
                                n, ",".join(r.run_id for r in extra)))
    for t in trials:
        rs = runs_of.get(t.number, [])
        run = keeper(t, rs) if rs else None
        if t.state == TrialState.WAITING:
            continue
        if t.state == TrialState.RUNNING:
            if driver:
                report.in_progress.append(f"trial {t.number}")
            else:
                issues.append(Issue("running_trial", f"trial {t.number} is RUNNING and no driver is alive",
                                    t.number, run.run_id if run else None))
            continue
        status, required = expected_status(t)
        if run is None:
            if required:
                kind = "complete_without_run" if t.state == TrialState.COMPLETE else "trial_without_run"
                issues.append(Issue(kind, f"trial {t.number} is {t.state.name} but has no MLflow run", t.number))
            continue
        rid = run.run_id
        if run.status == "RUNNING":
            if driver:
                report.in_progress.append(f"run {rid} (trial {t.number})")
            else:
                issues.append(Issue("running_run", f"run {rid} of {t.state.name} trial {t.number} is RUNNING "
                                    "and no driver is alive", t.number, rid))
            continue
        if status is not None and run.status != status:
            kind = "complete_without_run" if t.state == TrialState.COMPLETE else "status_mismatch"
            issues.append(Issue(kind, f"trial {t.number} is {t.state.name} but its run {rid} is "
                                f"{run.status} (expected {status})", t.number, rid))
            continue
        if t.state == TrialState.COMPLETE:
            payload = sweep.dir.load_result(t.number)
            missing = missing_metrics(sweep.store, rid, logged_history(payload)) if payload else []
            if missing:
                steps = sorted({s for s, _, _ in missing})
                issues.append(Issue("missing_metrics", f"run {rid} of trial {t.number} lacks {len(missing)} "
                                    f"metric values at steps {steps} of its saved result", t.number, rid))
    for p in parents:
        if p.status == "RUNNING" and not driver:
            issues.append(Issue("running_run", f"parent run {p.run_id} is RUNNING and no driver is alive",
                                None, p.run_id))
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
    recorder = sweep.recorder
    trial = _trial(sweep, issue.trial)
    if issue.kind == "run_without_trial":
        recorder.tracker.delete_run(issue.run_id)
        return "deleted the run"
    if issue.kind == "duplicate_runs":
        for rid in issue.run_id.split(","):
            recorder.tracker.delete_run(rid)
        return f"deleted {len(issue.run_id.split(','))} run(s)"
    if issue.kind == "running_trial":
        outcome, status = recorder.recover(trial)
        if outcome == "finished":
            return f"finished from its saved result as {status}"
        return "marked FAIL (driver_died), its run KILLED if it had one; point re-queued"
    if issue.kind == "running_run" and trial is None:  # the parent run
        recorder.tracker.finish(issue.run_id, "KILLED")
        return "set the parent run KILLED"
    if issue.kind in ("running_run", "complete_without_run", "trial_without_run", "status_mismatch",
                      "missing_metrics"):
        run_id, how = recorder.run_for(trial)
        logged = recorder.sync_run(trial, run_id)
        return f"{how}; logged {logged} metric values; status {expected_status(trial)[0]}"
    raise ValueError(f"unknown issue kind {issue.kind!r}")


def _trial(sweep: _Sweep, number: Optional[int]):
    found = [t for t in sweep.trials() if t.number == number]
    return found[0] if found else None
