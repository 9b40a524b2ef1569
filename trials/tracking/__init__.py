"""Experiment tracking: a ``Tracker`` writes runs, a ``RunStore`` reads them (``base``); the
backends register under a name (``mlflow_backend`` is the default, ``none`` tracks nothing).
Nothing else in carvelab imports a tracking library.

    tracker = open_tracker(spec.tracking, sweep_folder)     # the driver, repairs, dashboards' writes
    store = open_store(spec.tracking, sweep_folder)         # sweep check, recovery, dashboards' reads
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from carvelab.trials.tracking import mlflow_backend  # noqa: F401  (registers "mlflow")
from carvelab.trials.tracking.base import (
    TRACKERS, NullStore, NullTracker, RunRecord, RunStore, Tracker, register_tracker, tracker_names,
)
from carvelab.trials.tracking.mlflow_backend import MlflowRunStore, MlflowTracker
from carvelab.trials.tracking.records import (
    RESULT_TAGS, RUN_STATUS, flatten, logged_history, redact, redact_text, result_tags, test_metrics,
)

DEFAULT_BACKEND = "mlflow"

__all__ = [
    "TRACKERS", "DEFAULT_BACKEND", "NullStore", "NullTracker", "RunRecord", "RunStore", "Tracker", "MlflowTracker",
    "MlflowRunStore", "register_tracker", "tracker_names", "open_tracker", "open_store", "tracking_uri",
    "RESULT_TAGS", "RUN_STATUS", "flatten", "logged_history", "redact", "redact_text", "result_tags",
    "test_metrics",
]


def _backend(tracking):
    name = getattr(tracking, "backend", None) or DEFAULT_BACKEND
    if name not in TRACKERS:
        raise ValueError(f"tracking.backend={name!r} is not registered; choose one of {tracker_names()}")
    return TRACKERS[name]


def tracking_uri(tracking, folder: str | Path) -> Optional[str]:
    """The sweep's tracking URI: ``tracking.uri``, else its backend's default for the sweep folder."""
    return tracking.uri or _backend(tracking).default_uri(Path(folder))


def _experiment(tracking, folder: str | Path) -> str:
    return tracking.experiment or Path(folder).name


def open_tracker(tracking, folder: str | Path) -> Tracker:
    """The write side of a sweep's ``tracking`` spec (``search_space.sweep_spec.TrackingSpec``)."""
    return _backend(tracking).tracker(tracking_uri(tracking, folder), _experiment(tracking, folder), Path(folder))


def open_store(tracking, folder: str | Path) -> RunStore:
    """The read side of a sweep's ``tracking`` spec; creates nothing."""
    return _backend(tracking).store(tracking_uri(tracking, folder), _experiment(tracking, folder))
