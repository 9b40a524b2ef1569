"""Safe defaults: what carvelab starts listens on 127.0.0.1 only; credentials in URIs are
redacted before they reach MLflow params and tags, printed output and logs."""
import contextlib
import io
import logging
import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from carvelab.trials.cli import main
from carvelab.trials.tracking import redact
from tests.reliability.helpers import cmdline, listening, local_ray_pids, write_sweep
from tests.trials.sweep_helpers import tiny_sweep

SECRET = "pa55-w0rd"


def loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1")


def test_local_ray_listens_on_loopback_only(local_ray):
    pids = local_ray_pids() + [os.getpid()]  # this process is the Ray driver: its core worker listens too
    sockets = listening(pids)
    assert len(sockets) >= 3, f"expected the local Ray's listeners, found {sockets}"
    exposed = [(addr, pid, cmdline(pid)[:60]) for addr, pid in sockets if not loopback(addr)]
    assert not exposed, f"listening beyond 127.0.0.1: {exposed}"


def test_mlflow_server_started_by_the_tests_listens_on_loopback_only(mlflow_server):
    sockets = listening(mlflow_server.pids())
    assert sockets and all(loopback(addr) for addr, _ in sockets), sockets


@pytest.mark.parametrize("uri, shown", [
    ("postgresql://bob:s3cret@db.example:5432/optuna", "postgresql://bob:***@db.example:5432/optuna"),
    ("postgresql+psycopg2://bob:s3cret@127.0.0.1/optuna", "postgresql+psycopg2://bob:***@127.0.0.1/optuna"),
    ("http://alice:p%40ss@127.0.0.1:5000", "http://alice:***@127.0.0.1:5000"),
    ("mlflow at https://alice:s3cret@tracking.example/ now", "mlflow at https://alice:***@tracking.example/ now"),
    ("sqlite:////tmp/x/optuna.db", "sqlite:////tmp/x/optuna.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("http://alice@127.0.0.1:5000", "http://alice@127.0.0.1:5000"),  # a user name alone is not a secret
    ("postgresql://:s3cret@db/optuna", "postgresql://:***@db/optuna"),
    ("postgresql://db/optuna?password=s3cret", "postgresql://db/optuna?password=***"),
])
def test_redact(uri, shown):
    assert redact(uri) == shown
    assert "s3cret" not in redact(uri)


@pytest.fixture(scope="module")
def credentialed_sweep(mlflow_server, tmp_path_factory):
    """A tiny sweep run through the command line with a password in its tracking URI; its
    printed output and log records are kept."""
    from carvelab.trials.sweep import scheduler

    scheduler.start_ray(num_cpus=2)
    folder = tmp_path_factory.mktemp("credentials")
    uri = mlflow_server.uri.replace("http://", f"http://bob:{SECRET}@")
    data = tiny_sweep("credentials", folder / "cache", mode="grid", budget={}, space={"erase_axis": ["key"]},
                      tracking={"uri": uri})
    path = write_sweep(data, folder)
    out, err, records = io.StringIO(), io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(records)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.DEBUG)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["sweep", "run", str(path), "--root", str(folder / "sweeps"), "-q"])
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert code == 0, err.getvalue()
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("credentials")
    return client, exp, out.getvalue() + err.getvalue(), records.getvalue(), folder


def test_credentials_stay_out_of_params_tags_and_logs(credentialed_sweep):
    client, exp, printed, logs, _ = credentialed_sweep
    runs = client.search_runs([exp.experiment_id], "")
    assert len(runs) == 2  # the sweep's parent run and its one trial
    assert logs.strip(), "expected log records from the sweep"
    for r in runs:
        for key, value in {**r.data.params, **r.data.tags}.items():
            assert SECRET not in value, (r.info.run_name, key)
    assert SECRET not in logs
    assert "bob:***@" in printed  # carvelab's own summary names the tracking URI, redacted


def test_credentials_stay_out_of_logged_artifacts(credentialed_sweep):
    client, exp, _, _, folder = credentialed_sweep
    parent = client.search_runs([exp.experiment_id], "tags.`carvelab.role` = 'sweep'")[0]
    local = Path(client.download_artifacts(parent.info.run_id, "", str(folder / "artifacts")))
    texts = {p.name: p.read_text(errors="replace") for p in local.rglob("*") if p.is_file()}
    assert "sweep.yaml" in texts, sorted(texts)
    assert "bob:***@" in texts["sweep.yaml"]
    assert not [name for name, text in texts.items() if SECRET in text]


def test_credentials_stay_out_of_printed_output(credentialed_sweep):
    _, _, printed, _, _ = credentialed_sweep
    assert SECRET not in printed
