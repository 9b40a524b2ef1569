"""The two interfaces of experiment tracking and the registry of backends.

A ``Tracker`` writes: one parent run per sweep, one child run per trial attempt, their
metrics, tags, artifacts and terminal status (``RUN_STATUS``). A ``RunStore`` reads what
was written, as ``RunRecord``s: ``sweep check``, recovery and the dashboards read through
it. A backend is one module that implements both and registers them under a name
(``register_tracker``); the sweep file picks one with ``tracking.backend`` (default
``mlflow``, ``mlflow_backend.py``). Every run carries the tags ``carvelab.sweep`` (the sweep's
name) and ``carvelab.role`` (``sweep`` or ``trial``); a trial's run also
``optuna_trial_number``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Protocol


@dataclass(frozen=True)
class RunRecord:
    """One run as a store holds it: status RUNNING, FINISHED, FAILED or KILLED; the latest
    value of each metric; start_time in ms since the epoch."""

    run_id: str
    status: str
    tags: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    start_time: int = 0
    parent_run_id: Optional[str] = None

    @property
    def role(self) -> Optional[str]:
        return self.tags.get("carvelab.role")

    @property
    def trial_number(self) -> Optional[int]:
        try:
            return int(self.tags.get("optuna_trial_number", ""))
        except ValueError:
            return None


class RunStore(Protocol):
    """The read side."""

    def parent(self, sweep: str) -> Optional[RunRecord]:
        """The sweep's parent run, or None."""

    def runs(self, sweep: str, deleted: bool = False) -> list[RunRecord]:
        """Every run of the sweep (parent and children): the active ones, or the deleted ones."""

    def children(self, parent_run_id: str) -> list[RunRecord]:
        """The child runs of a parent run."""

    def child(self, parent_run_id: str, trial_number: int) -> Optional[RunRecord]:
        """The newest child run of ``trial_number``, or None."""

    def run(self, run_id: str) -> RunRecord: ...

    def metric_steps(self, run_id: str, key: str) -> set[int]:
        """The steps at which the run holds a value of ``key``."""

    def run_link(self, run_id: str) -> str:
        """Where the run is shown in the backend's UI (a URL relative to the UI's root)."""


class Tracker(Protocol):
    """The write side. ``parent_run_id`` is the run ``start_child`` puts children under."""

    parent_run_id: Optional[str]

    def start_parent(self, name: str, tags: dict[str, str]) -> Optional[str]:
        """The sweep's parent run (reused and set RUNNING if it exists, else created)."""

    def start_child(self, trial_number: int, params: dict[str, str], tags: dict[str, str]) -> Optional[str]: ...

    def log_metrics(self, run_id, step: int, metrics: dict[str, float]) -> None: ...

    def set_tags(self, run_id, tags: dict[str, str]) -> None: ...

    def log_text(self, run_id, text: str, artifact_file: str) -> None: ...

    def log_artifact(self, run_id, path: str | Path, artifact_path: Optional[str] = None) -> None: ...

    def finish(self, run_id, status: str) -> None:
        """Set the run's terminal status: FINISHED, FAILED or KILLED."""

    def delete_run(self, run_id: str) -> None: ...

    def restore_run(self, run_id: str) -> None: ...

    def store(self) -> RunStore:
        """The read side over the same backend."""


class NullStore:
    """Holds no runs."""

    def parent(self, sweep):
        return None

    def runs(self, sweep, deleted=False):
        return []

    def children(self, parent_run_id):
        return []

    def child(self, parent_run_id, trial_number):
        return None

    def run(self, run_id):
        raise KeyError(run_id)

    def metric_steps(self, run_id, key):
        return set()

    def run_link(self, run_id):
        return ""


class NullTracker:
    """Tracks nothing; every write returns at once and reads find nothing."""

    parent_run_id: Optional[str] = None

    def __init__(self, *args, **kwargs):
        pass

    def start_parent(self, name, tags):
        return None

    def start_child(self, trial_number, params, tags):
        return None

    def log_metrics(self, run_id, step, metrics):
        pass

    def set_tags(self, run_id, tags):
        pass

    def log_text(self, run_id, text, artifact_file):
        pass

    def log_artifact(self, run_id, path, artifact_path=None):
        pass

    def finish(self, run_id, status):
        pass

    def delete_run(self, run_id):
        pass

    def restore_run(self, run_id):
        pass

    def store(self):
        return NullStore()


@dataclass(frozen=True)
class Backend:
    """A registered tracking backend.

    tracker(uri, experiment, folder) -> Tracker (creates what it writes to if needed; ``folder``
    is the sweep's folder, for a backend that keeps files there);
    store(uri, experiment) -> RunStore (creates nothing: an absent store holds no runs);
    default_uri(folder) -> the URI used when the sweep file gives none."""

    tracker: Callable[..., Tracker]
    store: Callable[..., RunStore]
    default_uri: Callable[[Path], Optional[str]]


TRACKERS: dict[str, Backend] = {}


def register_tracker(name: str, tracker: Callable[..., Tracker], store: Callable[..., RunStore],
                     default_uri: Callable[[Path], Optional[str]] = lambda folder: None) -> None:
    """Make ``tracking.backend: <name>`` available to sweep files."""
    if name in TRACKERS and TRACKERS[name] != Backend(tracker, store, default_uri):
        raise ValueError(f"a tracking backend named {name!r} is already registered")
    TRACKERS[name] = Backend(tracker, store, default_uri)


def tracker_names() -> list[str]:
    return sorted(TRACKERS)


register_tracker("none", NullTracker, lambda uri, experiment: NullStore())
