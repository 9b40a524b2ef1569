"""The MLflow tracking backend (``tracking.backend: mlflow``, the default); MLflow is imported only here.

Runs are written with an explicit ``MlflowClient`` and run ids (never the fluent "active
run"). Default store: ``sqlite:///<sweep>/mlflow.db`` with artifacts in ``<sweep>/mlartifacts``.
Credentials in URIs are redacted before they reach params, tags or logs (``records.redact``).
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Optional

from carvelab.trials.tracking.base import RunRecord, register_tracker
from carvelab.trials.tracking.records import finite_number, retry

# MLflow prints "View run ... at: <tracking URI>" when a run ends; the URI may carry credentials.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def default_uri(folder: Path) -> str:
    return f"sqlite:///{Path(folder) / 'mlflow.db'}"


def _client(uri: str):
    import mlflow  # noqa: F401  (fails early with a clear ImportError if missing)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _record(run) -> RunRecord:
    tags = dict(run.data.tags)
    return RunRecord(run.info.run_id, run.info.status, tags, dict(run.data.metrics), run.info.start_time or 0,
                     tags.get("mlflow.parentRunId"))


class MlflowRunStore:
    """Reads a sweep's runs from MLflow. A SQLite store whose file does not exist holds no runs
    (and is not created)."""

    def __init__(self, uri: str, experiment: str, client=None, experiment_id: Optional[str] = None):
        self.uri, self.experiment = uri, experiment
        self._client, self._experiment_id = client, experiment_id  # a tracker's store shares its client

    def exists(self) -> bool:
        if self.uri.startswith("sqlite:///"):
            return Path(self.uri[len("sqlite:///"):]).exists()
        return True

    @property
    def client(self):
        if self._client is None:
            self._client = _client(self.uri)
        return self._client

    def experiment_id(self) -> Optional[str]:
        if self._experiment_id is None and self.exists():
            exp = retry(self.client.get_experiment_by_name, self.experiment)
            self._experiment_id = exp.experiment_id if exp is not None else None
        return self._experiment_id

    def _search(self, filter_string: str, deleted: bool = False, newest_first: bool = False) -> list[RunRecord]:
        from mlflow.entities import ViewType

        exp = self.experiment_id()
        if exp is None:
            return []
        out, token = [], None
        while True:
            page = retry(self.client.search_runs, [exp], filter_string=filter_string,
                         run_view_type=ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY,
                         order_by=["attributes.start_time DESC"] if newest_first else None,
                         max_results=10000, page_token=token)
            out += [_record(r) for r in page]
            token = page.token
            if not token:
                return out

    def parent(self, sweep: str) -> Optional[RunRecord]:
        found = self._search(f"tags.`carvelab.role` = 'sweep' and tags.`carvelab.sweep` = '{sweep}'")
        return found[0] if found else None

    def runs(self, sweep: str, deleted: bool = False) -> list[RunRecord]:
        return self._search(f"tags.`carvelab.sweep` = '{sweep}'", deleted)

    def children(self, parent_run_id: str) -> list[RunRecord]:
        return self._search(f"tags.`mlflow.parentRunId` = '{parent_run_id}'")

    def child(self, parent_run_id: str, trial_number: int) -> Optional[RunRecord]:
        found = self._search(f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                             f"tags.optuna_trial_number = '{trial_number}'", newest_first=True)
        return found[0] if found else None

    def run(self, run_id: str) -> RunRecord:
        return _record(retry(self.client.get_run, run_id))

    def metric_steps(self, run_id: str, key: str) -> set[int]:
        return {m.step for m in retry(self.client.get_metric_history, run_id, key)}

    def run_link(self, run_id: str) -> str:
        return f"/#/experiments/{self.experiment_id()}/runs/{run_id}"


class MlflowTracker:
    """Writes a sweep's runs to MLflow. ``uri`` may be sqlite:///..., http://..., etc."""

    def __init__(self, uri: str, experiment: str, folder: Optional[str | Path] = None,
                 artifact_location: Optional[str] = None):
        self.uri, self.experiment = uri, experiment
        self.client = _client(uri)
        if artifact_location is None and folder is not None:
            artifact_location = (Path(folder) / "mlartifacts").as_uri()
        self.experiment_id = self._experiment(experiment, artifact_location)
        self.parent_run_id: Optional[str] = None

    def store(self) -> MlflowRunStore:
        return MlflowRunStore(self.uri, self.experiment, self.client, self.experiment_id)

    def _experiment(self, name: str, artifact_location: Optional[str]) -> str:
        exp = retry(self.client.get_experiment_by_name, name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                retry(self.client.restore_experiment, exp.experiment_id)
            return exp.experiment_id
        tried = False

        def create_experiment() -> str:
            # A retried request whose response was lost may have created it already.
            nonlocal tried
            if tried and (found := self.client.get_experiment_by_name(name)) is not None:
                return found.experiment_id
            tried = True
            return self.client.create_experiment(name, artifact_location=artifact_location)

        return retry(create_experiment)

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

        return retry(create_run)

    def start_parent(self, name: str, tags: dict[str, str]) -> str:
        """Reuse the sweep's parent run if one exists (resume), else create it."""
        found = self.store().parent(name)
        if found is not None:
            self.parent_run_id = found.run_id
            if found.status != "RUNNING":
                retry(self.client.update_run, self.parent_run_id, status="RUNNING")
        else:
            run = self._create_run(name, {"carvelab.role": "sweep", "carvelab.sweep": name, **tags})
            self.parent_run_id = run.info.run_id
        return self.parent_run_id

    def start_child(self, trial_number: int, params: dict[str, str], tags: dict[str, str]) -> str:
        from mlflow.entities import Param

        run_tags = {"mlflow.parentRunId": self.parent_run_id, "carvelab.role": "trial",
                    "optuna_trial_number": str(trial_number), **tags}
        run = self._create_run(f"trial-{trial_number}", run_tags)
        items = [Param(k[:250], v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            retry(self.client.log_batch, run.info.run_id, params=items[i:i + 100])
        return run.info.run_id

    def log_metrics(self, run_id, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if finite_number(v)]
        for i in range(0, len(items), 1000):
            retry(self.client.log_batch, run_id, metrics=items[i:i + 1000])

    def set_tags(self, run_id, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        retry(self.client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, run_id, text: str, artifact_file: str) -> None:
        retry(self.client.log_text, run_id, text, artifact_file)

    def log_artifact(self, run_id, path: str | Path, artifact_path: Optional[str] = None) -> None:
        retry(self.client.log_artifact, run_id, str(path), artifact_path)

    def finish(self, run_id, status: str) -> None:
        """status: FINISHED, FAILED or KILLED."""
        retry(self.client.set_terminated, run_id, status=status)

    def delete_run(self, run_id: str) -> None:
        """MLflow's soft delete: the run can be restored."""
        retry(self.client.delete_run, run_id)

    def restore_run(self, run_id: str) -> None:
        retry(self.client.restore_run, run_id)


register_tracker("mlflow", MlflowTracker, MlflowRunStore, default_uri)
