"""Experiment tracking behind a small interface; MLflow is imported only here.

One parent run per sweep, one child run per trial attempt, written with an explicit
``MlflowClient`` and run ids (never the fluent "active run"). ``NullTracker`` keeps the
same interface for runs without tracking. Credentials in URIs are redacted before they
reach params, tags or logs.
"""
from __future__ import annotations

import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any, Optional

logger = logging.getLogger(__name__)

# A trial's state -> its MLflow run's terminal status.
MLFLOW_STATUS = {"completed": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}
# Tags of a trial's run taken from its result payload: what ran, with which products, where.
RESULT_TAGS = ("backend", "precision", "step_mode", "node")


def result_tags(payload: dict) -> dict[str, str]:
    """The RESULT_TAGS of a trial's result payload ("" where the payload has none)."""
    return {key: str(payload.get(key, "")) for key in RESULT_TAGS}


def test_metrics(payload: dict) -> dict[str, float]:
    """A completed trial's one test evaluation (in its final metrics only, never in the history
    the pruner saw); {} otherwise."""
    from carvelab.trials.tasks.base import TEST_METRICS

    return {k: v for k, v in (payload.get("metrics") or {}).items() if k in TEST_METRICS}


def logged_history(payload: dict) -> list:
    """What a trial's run holds, as (step, metrics): its evaluations, then its test evaluation
    (``test_metrics``) at its last step."""
    history, final = list(payload.get("history", [])), test_metrics(payload)
    return history + [(int(payload.get("steps", 0)), final)] if final else history

_CRED = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*)(:(?P<pw>[^@/\s]*))?@")
_QUERY_SECRET = re.compile(r"(?P<key>[?&](password|passwd|pwd|token|secret|api_key)=)[^&#\s]*", re.IGNORECASE)
# MLflow prints "View run ... at: <tracking URI>" when a run ends; the URI may carry credentials.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def redact(uri: Optional[str]) -> Optional[str]:
    """``postgresql://bob:secret@host/db`` -> ``postgresql://bob:***@host/db``."""
    if uri is None:
        return None
    return redact_text(uri)


def redact_text(text: str) -> str:
    """``redact`` applied to every URI inside a block of text."""
    text = _CRED.sub(lambda m: f"{m['scheme']}{m['user']}:***@" if m["pw"] is not None else m.group(0), text)
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}***", text)


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {"a.b": "value"} with values as strings (MLflow params)."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    out[prefix[:-1]] = str(data)
    return out


class NullTracker:
    """Tracks nothing; every method returns at once."""

    parent_run_id: Optional[str] = None

    def start_parent(self, name: str, tags: dict[str, str]) -> Optional[str]:
        return None

    def start_child(self, trial_number: int, params: dict[str, str], tags: dict[str, str]) -> Optional[str]:
        return None

    def find_child(self, trial_number: int) -> Optional[dict]:
        return None

    def log_metrics(self, run_id, step: int, metrics: dict[str, float]) -> None:
        pass

    def logged_steps(self, run_id, history: list) -> set:
        return set()

    def set_tags(self, run_id, tags: dict[str, str]) -> None:
        pass

    def log_text(self, run_id, text: str, artifact_file: str) -> None:
        pass

    def log_artifact(self, run_id, path: str | Path, artifact_path: Optional[str] = None) -> None:
        pass

    def finish(self, run_id, status: str) -> None:
        pass


def _retry(fn, *args, attempts: int = 8, first_delay: float = 0.5, **kwargs):
    """Call ``fn``, retrying transient failures (a tracking server restarting) with back-off."""
    delay = first_delay
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # MLflow raises several types for connection trouble
            if attempt == attempts - 1 or not _transient(exc):
                raise
            logger.warning("tracking call %s failed (%s); retrying in %.1fs", fn.__name__, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def _transient(exc: Exception) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(s in text for s in ("connection", "timeout", "temporarily", "503", "502", "locked", "max retries"))


class MlflowTracker:
    """MLflow tracking with an explicit client. ``uri`` may be sqlite:///..., http://..., etc."""

    def __init__(self, uri: str, experiment: str, artifact_location: Optional[str] = None):
        import mlflow  # noqa: F401  (fails early with a clear ImportError if missing)
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = self._experiment(experiment, artifact_location)
        self.parent_run_id: Optional[str] = None

    def _experiment(self, name: str, artifact_location: Optional[str]) -> str:
        exp = _retry(self.client.get_experiment_by_name, name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                _retry(self.client.restore_experiment, exp.experiment_id)
            return exp.experiment_id
        tried = False

        def create_experiment() -> str:
            # A retried request whose response was lost may have created it already.
            nonlocal tried
            if tried and (found := self.client.get_experiment_by_name(name)) is not None:
                return found.experiment_id
            tried = True
            return self.client.create_experiment(name, artifact_location=artifact_location)

        return _retry(create_experiment)

    def _create_run(self, run_name: str, tags: dict[str, str]):
        """``create_run`` that is safe to retry: a tracking server that dies after creating the
        run but before answering must not leave a second, forever RUNNING, run behind. The run
        carries a fresh token; a retry first looks for a run with that token."""
        token = uuid.uuid4().hex
        tags = {**tags, "carvelab.create_token": token}
        tried = False

        def create_run():
            nonlocal tried
            if tried:
                found = self.client.search_runs([self.experiment_id], max_results=1,
                                                filter_string=f"tags.`carvelab.create_token` = '{token}'")
                if found:
                    return found[0]
            tried = True
            return self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)

        return _retry(create_run)

    def start_parent(self, name: str, tags: dict[str, str]) -> str:
        """Reuse the sweep's parent run if one exists (resume), else create it."""
        runs = _retry(
            self.client.search_runs, [self.experiment_id],
            filter_string=f"tags.`carvelab.role` = 'sweep' and tags.`carvelab.sweep` = '{name}'",
        )
        if runs:
            self.parent_run_id = runs[0].info.run_id
            if runs[0].info.status != "RUNNING":
                _retry(self.client.update_run, self.parent_run_id, status="RUNNING")
        else:
            run = self._create_run(name, {"carvelab.role": "sweep", "carvelab.sweep": name, **tags})
            self.parent_run_id = run.info.run_id
        return self.parent_run_id

    def start_child(self, trial_number: int, params: dict[str, str], tags: dict[str, str]) -> str:
        run_tags = {"mlflow.parentRunId": self.parent_run_id, "carvelab.role": "trial",
                    "optuna_trial_number": str(trial_number), **tags}
        run = self._create_run(f"trial-{trial_number}", run_tags)
        from mlflow.entities import Param

        items = [Param(k[:250], v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            _retry(self.client.log_batch, run.info.run_id, params=items[i:i + 100])
        return run.info.run_id

    def find_child(self, trial_number: int) -> Optional[dict]:
        """The latest child run of this sweep for ``trial_number``: {run_id, status, tags, metrics}."""
        runs = _retry(
            self.client.search_runs, [self.experiment_id],
            filter_string=(f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and "
                           f"tags.optuna_trial_number = '{trial_number}'"),
            order_by=["attributes.start_time DESC"],
        )
        if not runs:
            return None
        r = runs[0]
        return {"run_id": r.info.run_id, "status": r.info.status, "tags": dict(r.data.tags),
                "metrics": dict(r.data.metrics)}

    def logged_steps(self, run_id, history: list) -> set:
        """The evaluation steps of ``history`` whose metrics are already in the run."""
        names = {k for _, metrics in history for k in metrics}
        key = "val_loss" if "val_loss" in names else next(iter(sorted(names)), None)
        if key is None:
            return set()
        return {m.step for m in _retry(self.client.get_metric_history, run_id, key)}

    def log_metrics(self, run_id, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if _finite_number(v)]
        if items:
            _retry(self.client.log_batch, run_id, metrics=items)

    def set_tags(self, run_id, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        _retry(self.client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, run_id, text: str, artifact_file: str) -> None:
        _retry(self.client.log_text, run_id, text, artifact_file)

    def log_artifact(self, run_id, path: str | Path, artifact_path: Optional[str] = None) -> None:
        _retry(self.client.log_artifact, run_id, str(path), artifact_path)

    def finish(self, run_id, status: str) -> None:
        """status: FINISHED, FAILED or KILLED."""
        _retry(self.client.set_terminated, run_id, status=status)


def _finite_number(v) -> bool:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return f == f and f not in (float("inf"), float("-inf"))
