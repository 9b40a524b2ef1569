"""The MLflow tracking server killed by PID mid-sweep and restarted on the same port: the sweep
completes and every completed trial's run holds its full metric history."""
import logging
import threading
import time

import requests
from mlflow.tracking import MlflowClient

from carvelab.search_space.sweep_loading import load_sweep
from carvelab.trials.ops.check import check_sweep
from carvelab.trials.sweep.driver import run_sweep
from tests.reliability.helpers import account, alive, audit, point_key, wait_for
from tests.reliability.ledger import LEDGER
from tests.trials.sweep_helpers import tiny_sweep

SPACE = {"erase_axis": ["key", "value"], "write_gate": ["scalar", "per_value"]}
EXPECTED = [point_key({"erase_axis": a, "write_gate": w}, 0) for a in SPACE["erase_axis"] for w in SPACE["write_gate"]]
SECRET = "s3cret-pw"


def with_credentials(uri):
    """The server ignores HTTP basic auth; the password only has to stay out of logs, params and tags."""
    return uri.replace("http://", f"http://bob:{SECRET}@")


def test_tracking_server_killed_and_restarted_mid_sweep_loses_nothing(mlflow_server, tmp_path, local_ray, caplog):
    caplog.set_level(logging.INFO)
    name = "server-restart"
    data = tiny_sweep(name, tmp_path / "cache", mode="grid", budget={}, space=SPACE,
                      tracking={"uri": with_credentials(mlflow_server.uri)})
    # Trials of a second or more, so the server goes down while some are still training.
    data["base"]["train"].update(steps=120, eval_every=20)
    results = tmp_path / name / "results"
    events: dict = {}

    def kill_and_restart():
        client = MlflowClient(mlflow_server.uri)

        def metrics_logged():
            exp = client.get_experiment_by_name(name)
            runs = client.search_runs([exp.experiment_id], "tags.`carvelab.role` = 'trial'") if exp else []
            return any(r.data.metrics for r in runs)

        try:
            wait_for(metrics_logged, 240, "a first metric in MLflow")
            events["done_at_kill"] = len(list(results.glob("*.json"))) if results.exists() else 0
            events["old_pids"] = mlflow_server.pids()
            mlflow_server.kill()
            events["killed"] = time.monotonic()
            time.sleep(3)
            mlflow_server.start()
            events["restarted"] = time.monotonic()
        except BaseException as exc:  # reported by the main thread
            events["error"] = exc

    thread = threading.Thread(target=kill_and_restart, daemon=True)
    thread.start()
    summary = run_sweep(load_sweep(data), tmp_path)
    thread.join(120)
    assert "error" not in events, f"could not kill and restart the server: {events.get('error')!r}"
    assert "restarted" in events, "the server was not restarted"
    LEDGER.faults_injected += 1
    assert events["done_at_kill"] < len(EXPECTED), "the server should go down mid-sweep"
    assert not any(alive(p) for p in events["old_pids"])

    a = audit(name, summary.storage, mlflow_server.uri, tmp_path / name, EXPECTED)
    account(a)
    assert not a.lost and not a.duplicates and not a.problems, a  # problems include missing metric steps
    assert not a.repeats, a.repeats
    assert check_sweep(name, tmp_path).consistent
    assert "etrying" in caplog.text, "calls made while the server was down should have been retried"
    assert SECRET not in caplog.text  # the retry warnings name the server's URL
    LEDGER.faults_survived += 1


def test_lost_answer_to_create_run_leaves_no_second_run(mlflow_server, tmp_path, local_ray, monkeypatch):
    """A server that dies after creating a run but before answering: the retry must find that run."""
    real = MlflowClient.create_run
    calls = {"n": 0}

    def created_but_unanswered(self, *args, **kwargs):
        run = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] in (1, 3):  # the sweep's parent run, and a trial's run
            raise requests.exceptions.ConnectionError(
                "('Connection aborted.', RemoteDisconnected('Remote end closed connection without response'))")
        return run

    name = "lost-answer"
    data = tiny_sweep(name, tmp_path / "cache", mode="grid", budget={}, space={"erase_axis": ["key", "value"]},
                      tracking={"uri": mlflow_server.uri})
    monkeypatch.setattr(MlflowClient, "create_run", created_but_unanswered)
    summary = run_sweep(load_sweep(data), tmp_path)
    monkeypatch.undo()
    assert calls["n"] >= 3
    LEDGER.faults_injected += 2

    a = audit(name, summary.storage, mlflow_server.uri, tmp_path / name,
              [point_key({"erase_axis": v}, 0) for v in ("key", "value")])
    account(a)
    assert not a.lost and not a.duplicates and not a.problems, a
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name(name)
    every = client.search_runs([exp.experiment_id], "")
    assert len(every) == 3, [(r.info.run_name, r.info.status) for r in every]  # 1 parent + 2 trials
    report = check_sweep(name, tmp_path)
    assert report.consistent, report.text()
    LEDGER.faults_survived += 2
