"""Shared pieces of the reliability tests: processes by PID, sweep audits, tiny sweep files.

Processes are found through ``/proc`` (parent, process group, session) and ended by their
PID or process group only; nothing here selects processes by name.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import optuna
import yaml
from mlflow.tracking import MlflowClient

from tests.reliability.ledger import LEDGER

ROOT = Path(__file__).resolve().parents[2]
COMPLETE, PRUNED, FAIL, RUNNING = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                                   optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING)


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2):
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ----------------------------------------------------------------------------- processes
def stat(pid: int) -> Optional[tuple[int, int, int, str]]:
    """(ppid, pgrp, session, state) of ``pid``, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[2]), int(fields[3]), fields[0]


def alive(pid: int) -> bool:
    s = stat(pid)
    return s is not None and s[3] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` in the process tree."""
    parents: dict[int, list[int]] = {}
    for p in all_pids():
        s = stat(p)
        if s is not None:
            parents.setdefault(s[0], []).append(p)
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return [p for p in out if alive(p)]


def session_members(sid: int) -> list[int]:
    return [p for p in all_pids() if (s := stat(p)) is not None and s[2] == sid and s[3] != "Z"]


def end_session(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGKILL the process group ``proc`` leads (it was started with start_new_session=True)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout)
    wait_for(lambda: not session_members(proc.pid), timeout, f"the processes of session {proc.pid} to exit")


def local_ray_pids() -> list[int]:
    """PIDs of the local Ray this process started (its daemons and their workers)."""
    import ray

    node = ray._private.worker._global_node
    tops = [info.process.pid for infos in node.all_processes.values() for info in infos if info.process]
    return sorted({p for top in tops for p in [top, *descendants(top)] if alive(p)})


def running_trial_workers(raylet_pid: int) -> list[int]:
    """Ray worker processes (children of ``raylet_pid``) that are executing a trial task now."""
    return [p for p in descendants(raylet_pid) if cmdline(p).startswith("ray::_run_remote")]


def raylet_pid() -> int:
    import ray

    return ray._private.worker._global_node.all_processes["raylet"][0].process.pid


def listening(pids: Iterable[int]) -> list[tuple[str, int]]:
    """(local address, pid) of every listening TCP socket owned by one of ``pids`` (from ``ss``)."""
    wanted = set(pids)
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 6:
            continue
        local, users = parts[3], " ".join(parts[5:])
        for chunk in users.split("pid=")[1:]:
            pid = int(chunk.split(",")[0])
            if pid in wanted:
                found.append((local, pid))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int, exclude: frozenset = frozenset()) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1, none of ``exclude``: their sockets are held open
    together while they are chosen (one ``free_port()`` after another can repeat a port)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < n:
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            if s.getsockname()[1] not in exclude:
                ports.append(s.getsockname()[1])
        return ports


# ----------------------------------------------------------------------------- MLflow server
class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite backend, started and ended by this test."""

    def __init__(self, folder: Path, port: Optional[int] = None):
        self.folder, self.port = folder, port or free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.log = folder / "mlflow-server.log"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
               "--artifacts-destination", str(self.folder / "artifacts")]
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(self._up, timeout, f"mlflow server on port {self.port} (log: {self.log})", interval=0.5)

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"mlflow server exited with {self.proc.returncode}: "
                                 f"{self.log.read_text()[-2000:]}")
        try:
            import urllib.request

            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def pids(self) -> list[int]:
        return [self.proc.pid, *descendants(self.proc.pid)] if self.proc else []

    def kill(self) -> None:
        """SIGKILL the server's whole process group and wait until its port is free."""
        if self.proc is None:
            return
        end_session(self.proc)
        self.proc = None


# ----------------------------------------------------------------------------- sweeps
def write_sweep(data: dict, folder: Path) -> Path:
    path = folder / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_crash_driver(path: Path, root: Path, target: str, n: int, when: str = "before",
                     timeout: float = 300.0) -> int:
    """Run ``crash_driver`` in a new session; return its exit status after ending its session."""
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONPATH=str(ROOT))
    log = open(root.parent / f"driver-{target}-{n}-{when}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "tests.reliability.crash_driver", str(path), str(root),
                             target, str(n), when], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    try:
        proc.wait(timeout)
    finally:
        end_session(proc)  # the local Ray the driver started shares its process group
    return proc.returncode


def point_key(params: dict, seed) -> str:
    return json.dumps({"point": params, "seed": int(seed)}, sort_keys=True, default=str)


@dataclass
class Audit:
    """What a finished sweep holds, read back from Optuna, MLflow and its result files."""

    trials: list
    runs: list
    complete: dict = field(default_factory=dict)    # point key -> [trial numbers]
    lost: list = field(default_factory=list)          # expected point keys without a COMPLETE trial
    duplicates: list = field(default_factory=list)    # descriptions of duplicated trials or runs
    problems: list = field(default_factory=list)      # leftovers, broken links, metric gaps
    repeats: list = field(default_factory=list)       # metric values logged twice for one step

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicates or self.problems)

    def __str__(self) -> str:
        return f"lost={self.lost} duplicates={self.duplicates} problems={self.problems}"


def child_runs(client: MlflowClient, experiment: str, sweep: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id],
                              filter_string=f"tags.`carvelab.role` = 'trial' and tags.`carvelab.sweep` = '{sweep}'",
                              max_results=50000)


def audit(name: str, storage: str, tracking_uri: str, sweep_dir: Path, expected: Optional[Iterable[str]] = None,
          experiment: Optional[str] = None, check_metrics: bool = True) -> Audit:
    """Every expected (point, seed) COMPLETE exactly once, one FINISHED run each, nothing RUNNING,
    every completed trial's run holding one value per evaluation step of its saved result."""
    study = optuna.load_study(study_name=name, storage=storage)
    client = MlflowClient(tracking_uri)
    runs = child_runs(client, experiment or name, name)
    a = Audit(study.trials, runs)
    for t in study.trials:
        if t.state == COMPLETE:
            a.complete.setdefault(point_key(t.params, t.user_attrs["seed"]), []).append(t.number)
        if t.state == RUNNING:
            a.problems.append(f"trial {t.number} left RUNNING")
    for key, numbers in a.complete.items():
        if len(numbers) > 1:
            a.duplicates.append(f"{key} completed by trials {numbers}")
    if expected is not None:
        a.lost = sorted(set(expected) - set(a.complete))
        extra = sorted(set(a.complete) - set(expected))
        a.problems += [f"unexpected point {k}" for k in extra]
    by_number: dict[int, list] = {}
    for r in runs:
        if r.info.status == "RUNNING":
            a.problems.append(f"run {r.info.run_id} (trial {r.data.tags.get('optuna_trial_number')}) left RUNNING")
        if r.info.status == "FINISHED":
            by_number.setdefault(int(r.data.tags["optuna_trial_number"]), []).append(r)
    exp = client.get_experiment_by_name(experiment or name)
    parents = client.search_runs([exp.experiment_id], filter_string=(
        f"tags.`carvelab.role` = 'sweep' and tags.`carvelab.sweep` = '{name}'")) if exp else []
    a.problems += [f"parent run {p.info.run_id} left RUNNING" for p in parents if p.info.status == "RUNNING"]
    complete = {t.number: t for t in study.trials if t.state == COMPLETE}
    for number, rs in by_number.items():
        if len(rs) > 1:
            a.duplicates.append(f"trial {number} has {len(rs)} FINISHED runs")
        if number not in complete:
            a.problems.append(f"FINISHED run for trial {number}, which is not COMPLETE")
    for number, t in complete.items():
        rs = by_number.get(number, [])
        if not rs:
            a.lost.append(f"trial {number}: COMPLETE in Optuna but no FINISHED MLflow run")
            continue
        if rs[0].info.run_id != t.user_attrs.get("mlflow_run_id"):
            a.problems.append(f"trial {number}: mlflow_run_id does not name its FINISHED run")
        if check_metrics:
            gaps, repeats = metric_problems(client, rs[0].info.run_id,
                                            sweep_dir / "results" / f"trial-{number}.json", number)
            a.problems += gaps
            a.repeats += repeats
    return a


def metric_problems(client: MlflowClient, run_id: str, result_file: Path, number: int) -> tuple[list, list]:
    """(gaps, repeats) against the saved result: (metric, evaluation step) pairs missing from
    the run's history, and pairs logged more than once."""
    if not result_file.exists():
        return [f"trial {number}: no saved result {result_file.name}"], []
    history = json.loads(result_file.read_text()).get("history", [])
    if not history:
        return [f"trial {number}: saved result has no evaluation history"], []
    gaps, repeats = [], []
    for key in sorted({k for _, metrics in history for k in metrics}):
        want = {int(step) for step, metrics in history if _finite(metrics.get(key))}
        got = [m.step for m in client.get_metric_history(run_id, key)]
        if want - set(got):
            gaps.append(f"trial {number}: metric {key} lacks steps {sorted(want - set(got))}")
        twice = sorted({s for s in got if got.count(s) > 1})
        if twice:
            repeats.append(f"trial {number}: metric {key} logged more than once at steps {twice}")
    return gaps, repeats


def _finite(v) -> bool:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return f == f and f not in (float("inf"), float("-inf"))


def account(a: Audit, known_bug: bool = False) -> None:
    """Add an audit's lost and duplicated trials to the session's ledger (apart for an xfail test)."""
    if known_bug:
        LEDGER.known_lost += len(a.lost)
        LEDGER.known_duplicates += len(a.duplicates)
    else:
        LEDGER.trials_lost += len(a.lost)
        LEDGER.duplicates += len(a.duplicates)
