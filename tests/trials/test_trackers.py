"""Trackers are pluggable: a backend registered in this file alone (an in-memory store) carries a
real sweep, ``sweep check`` and the published front, and MLflow is never touched."""
import itertools
import time
from pathlib import Path

import pytest

from carvelab.dashboards.frame import front_table, open_sweep
from carvelab.dashboards.report import publish
from carvelab.search_space.sweep_loading import load_sweep
from carvelab.search_space.yaml_io import ConfigError
from carvelab.trials.ops.check import check_sweep
from carvelab.trials.sweep.driver import run_sweep
from carvelab.trials.tracking import RunRecord, TRACKERS, register_tracker
from tests.trials.sweep_helpers import study_of, tiny_sweep

RUNS: dict[str, dict] = {}  # uri -> run id -> run
IDS = itertools.count()


class MemoryStore:
    def __init__(self, uri, experiment):
        self.runs_by_id = RUNS.setdefault(uri, {})

    def _records(self, deleted=False):
        return [RunRecord(i, r["status"], dict(r["tags"]), {k: v[-1][1] for k, v in r["metrics"].items()},
                          r["start"], r["tags"].get("parent")) for i, r in self.runs_by_id.items()
                if r["deleted"] == deleted]

    def parent(self, sweep):
        found = [r for r in self._records() if r.role == "sweep" and r.tags.get("carvelab.sweep") == sweep]
        return found[0] if found else None

    def runs(self, sweep, deleted=False):
        return [r for r in self._records(deleted) if r.tags.get("carvelab.sweep") == sweep]

    def children(self, parent_run_id):
        return [r for r in self._records() if r.parent_run_id == parent_run_id]

    def child(self, parent_run_id, trial_number):
        found = [r for r in self.children(parent_run_id) if r.trial_number == trial_number]
        return max(found, key=lambda r: r.start_time) if found else None

    def run(self, run_id):
        return next(r for r in self._records() + self._records(True) if r.run_id == run_id)

    def metric_steps(self, run_id, key):
        return {step for step, _ in self.runs_by_id[run_id]["metrics"].get(key, [])}

    def run_link(self, run_id):
        return f"#memory/{run_id}"


class MemoryTracker:
    def __init__(self, uri, experiment, folder):
        self.uri, self.experiment, self.parent_run_id = uri, experiment, None
        self.runs_by_id = RUNS.setdefault(uri, {})

    def _new(self, tags):
        run_id = f"run{next(IDS)}"
        self.runs_by_id[run_id] = {"status": "RUNNING", "tags": dict(tags), "metrics": {}, "params": {},
                                   "artifacts": [], "start": time.time_ns(), "deleted": False}
        return run_id

    def store(self):
        return MemoryStore(self.uri, self.experiment)

    def start_parent(self, name, tags):
        found = self.store().parent(name)
        self.parent_run_id = found.run_id if found else self._new({"carvelab.role": "sweep",
                                                                    "carvelab.sweep": name, **tags})
        self.runs_by_id[self.parent_run_id]["status"] = "RUNNING"
        return self.parent_run_id

    def start_child(self, trial_number, params, tags):
        run_id = self._new({"parent": self.parent_run_id, "carvelab.role": "trial",
                            "optuna_trial_number": str(trial_number), **tags})
        self.runs_by_id[run_id]["params"] = dict(params)
        return run_id

    def log_metrics(self, run_id, step, metrics):
        for key, value in metrics.items():
            self.runs_by_id[run_id]["metrics"].setdefault(key, []).append((step, float(value)))

    def set_tags(self, run_id, tags):
        self.runs_by_id[run_id]["tags"].update({k: str(v) for k, v in tags.items()})

    def log_text(self, run_id, text, artifact_file):
        self.runs_by_id[run_id]["artifacts"].append(artifact_file)

    def log_artifact(self, run_id, path, artifact_path=None):
        self.runs_by_id[run_id]["artifacts"].append(f"{artifact_path}/{Path(path).name}")

    def finish(self, run_id, status):
        self.runs_by_id[run_id]["status"] = status

    def delete_run(self, run_id):
        self.runs_by_id[run_id]["deleted"] = True

    def restore_run(self, run_id):
        self.runs_by_id[run_id]["deleted"] = False


@pytest.fixture(scope="module", autouse=True)
def memory_backend():
    register_tracker("memory", MemoryTracker, MemoryStore, lambda folder: f"memory://{folder}")
    yield
    TRACKERS.pop("memory")


def test_a_registered_tracker_carries_a_sweep_its_check_its_front_and_a_repair(tmp_path):
    data = tiny_sweep("mem", tmp_path / "cache", mode="grid", budget={}, seeds=[0, 1],
                      space={"erase_axis": ["key", "value"]}, tracking={"backend": "memory"},
                      resources={"cpus_per_trial": 1, "concurrency": 2})
    summary = run_sweep(load_sweep(data), tmp_path)
    assert summary.tracking_uri == f"memory://{tmp_path / 'mem'}"
    study = study_of(summary)
    runs = RUNS[summary.tracking_uri]
    children = {r["tags"]["optuna_trial_number"]: (i, r) for i, r in runs.items()
                if r["tags"].get("carvelab.role") == "trial"}
    assert len(study.trials) == 4 and len(children) == 4
    for t in study.trials:
        run_id, run = children[str(t.number)]
        assert t.user_attrs["mlflow_run_id"] == run_id and run["status"] == "FINISHED"
        assert run["metrics"]["val_accuracy"][-1][1] == pytest.approx(t.values[0])
        assert "test_accuracy" in run["metrics"]  # the test split, logged once at the end
    assert not (tmp_path / "mem" / "mlflow.db").exists()  # MLflow was never opened

    report = check_sweep("mem", tmp_path)
    assert report.consistent and report.runs == 4, report.text()
    assert "memory trial runs: 4" in report.text()  # the runs are counted where they live

    sweep = open_sweep("mem", tmp_path)
    info = publish(sweep)
    front = front_table(sweep)
    assert info["front"] == int((front["pareto_rank"] == 0).sum()) > 0
    parent = runs[sweep.parent_run_id]
    assert parent["tags"]["pareto.front_size"] == str(info["front"]) and "pareto/pareto.html" in parent["artifacts"]
    on_front = {i for i, r in runs.items() if r["tags"].get("on_front") == "true"}
    assert on_front == {rid for ids in front.filter(front["pareto_rank"] == 0)["run_ids"] for rid in ids}

    # A repair goes through the registered tracker too.
    victim = children["0"][0]
    runs[victim]["status"] = "FAILED"                     # out of step with its COMPLETE trial
    runs[victim]["metrics"]["val_loss"] = runs[victim]["metrics"]["val_loss"][:1]   # steps lost
    before = check_sweep("mem", tmp_path)
    assert {i.kind for i in before.issues} == {"complete_without_run"}, before.text()
    after = check_sweep("mem", tmp_path, repair=True)
    assert after.consistent, after.text()
    assert runs[victim]["status"] == "FINISHED" and len(runs[victim]["metrics"]["val_loss"]) >= 2


def test_an_unknown_tracker_is_refused_with_the_registered_ones(tmp_path):
    data = tiny_sweep("nope", tmp_path / "cache", tracking={"backend": "wandb"})
    with pytest.raises(ConfigError, match=r"tracking.backend='wandb' is not allowed; choose one of .*'mlflow'"):
        load_sweep(data)
