"""The tiny sweep against a team set-up: PostgreSQL as the Optuna storage and as the backend
store of a real ``mlflow server`` (tracking over HTTP). Everything binds to 127.0.0.1.

The test starts its own PostgreSQL server from the binaries of the Debian ``postgresql``
package (``/usr/lib/postgresql/<version>/bin``) and its own ``mlflow server``, and stops both
by PID. Without those binaries (or without ``psycopg2``) it fails; set
``CARVELAB_SKIP_POSTGRES=1`` to skip it on a machine without PostgreSQL.
"""
import dataclasses
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import optuna
import pytest

from carvelab.search_space.sweep_loading import load_sweep
from carvelab.trials.sweep import scheduler
from carvelab.trials.sweep.driver import run_sweep
from tests.trials.sweep_helpers import assert_exactly_once, child_runs, tiny_sweep

SKIP_ENV = "CARVELAB_SKIP_POSTGRES"
DB_USER = "carvelab"
START_TIMEOUT_S = 180


def _missing(what: str, fix: str):
    message = f"{what}: {fix}, or set {SKIP_ENV}=1 to skip this test"
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


def _pg_bindir() -> Path:
    """The directory holding initdb and postgres: on PATH, else the newest Debian version."""
    found = shutil.which("initdb")
    candidates = [Path(found).parent] if found else []
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += [Path(p) for p in sorted(versions, key=lambda p: [int(n) for n in re.findall(r"\d+", p)],
                                           reverse=True)]
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    _missing("PostgreSQL server binaries (initdb, postgres) not found on PATH or in /usr/lib/postgresql/*/bin",
             "install them (Debian: apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(proc: subprocess.Popen, sig: int, timeout: float = 30.0) -> None:
    """Signal the process group led by ``proc`` (started with a new session), then make sure it is gone."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + 10
    while True:  # children of the leader may outlive it for a moment
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
        time.sleep(0.2)
    if proc.poll() is None:
        proc.wait(10)


def _log_tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@dataclasses.dataclass
class Postgres:
    port: int
    password: str

    def url(self, db: str, password: bool = True) -> str:
        secret = f":{self.password}" if password else ""
        return f"postgresql+psycopg2://{DB_USER}{secret}@127.0.0.1:{self.port}/{db}"

    def connect(self, db: str):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=DB_USER, password=self.password,
                                dbname=db)


@pytest.fixture
def postgres():
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1")
    try:
        import psycopg2
    except ImportError:
        _missing("the Python package psycopg2 is not installed", "pip install -e '.[test]' (psycopg2-binary)")
    bindir = _pg_bindir()
    # PostgreSQL refuses to run as root: then its files belong to, and it runs as, the postgres user.
    as_user = {}
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            _missing("running as root but there is no 'postgres' user to run PostgreSQL as",
                     "create one (Debian's postgresql package does)")
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    # Outside pytest's tmp_path (private to the current user) and short (socket path limit).
    base = Path(tempfile.mkdtemp(prefix="carvelab-pg-", dir="/tmp" if as_user else None))
    data, sockets, log = base / "data", base / "sockets", base / "postgres.log"
    sockets.mkdir()
    log.touch()
    if as_user:
        for p in (base, sockets, log):
            os.chown(p, as_user["user"], as_user["group"])
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    proc = None
    try:
        init = subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--no-locale", "-E", "UTF8",
             "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"],
            cwd=base, env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S, **as_user)
        assert init.returncode == 0, f"initdb failed:\n{init.stdout}\n{init.stderr}"
        port = _free_port()
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [str(bindir / "postgres"), "-D", str(data), "-k", str(sockets), "-h", "127.0.0.1",
                 "-p", str(port), "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off"],
                cwd=base, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, **as_user)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # the superuser over the Unix socket (trust); everyone else over TCP with a password
            assert proc.poll() is None, f"postgres exited with {proc.returncode}:\n{_log_tail(log)}"
            try:
                admin = psycopg2.connect(host=str(sockets), port=port, user="postgres", dbname="postgres")
                break
            except psycopg2.OperationalError:
                assert time.monotonic() < deadline, f"postgres did not accept connections:\n{_log_tail(log)}"
                time.sleep(0.3)
        db = Postgres(port, secrets.token_hex(16))
        try:
            admin.autocommit = True
            with admin.cursor() as cur:
                cur.execute(f"CREATE ROLE {DB_USER} LOGIN PASSWORD %s", (db.password,))
                for name in ("optuna", "mlflow"):
                    cur.execute(f"CREATE DATABASE {name} OWNER {DB_USER}")
        finally:
            admin.close()
        yield db
    finally:
        if proc is not None:
            _stop_group(proc, signal.SIGINT)  # SIGINT: PostgreSQL's "fast" shutdown
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def mlflow_server(postgres, tmp_path):
    port = _free_port()
    log = tmp_path / "mlflow-server.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(key, None)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", postgres.url("mlflow"),
             "--artifacts-destination", str(tmp_path / "mlflow-artifacts")],
            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        uri = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"mlflow server exited with {proc.returncode}:\n{_log_tail(log)}"
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"mlflow server did not answer on {uri}:\n{_log_tail(log)}"
            time.sleep(0.5)
        yield uri
    finally:
        _stop_group(proc, signal.SIGTERM)


@pytest.fixture
def local_ray():
    started = scheduler.start_ray(num_cpus=2)
    try:
        yield
    finally:
        if started:
            scheduler.stop_ray()


def test_tiny_sweep_on_postgres_and_an_mlflow_server(postgres, mlflow_server, local_ray, tmp_path):
    storage = postgres.url("optuna")
    data = tiny_sweep("postgres", tmp_path / "cache", storage=storage, tracking={"uri": mlflow_server})
    summary = run_sweep(load_sweep(data), tmp_path / "sweeps")

    # The summary carries the redacted storage URL; read the study back with the real one.
    redacted = f"postgresql+psycopg2://{DB_USER}:***@127.0.0.1:{postgres.port}/optuna"
    assert summary.storage == redacted and summary.tracking_uri == mlflow_server
    study, runs = assert_exactly_once(dataclasses.replace(summary, storage=storage))
    assert summary.counts["completed"] == 3 and len(study.trials) == 3
    run = [r for r in runs if r.info.status == "FINISHED"][0]
    assert "model.erase_axis" in run.data.params and "val_accuracy" in run.data.metrics
    client, _ = child_runs(summary)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [2, 4]
    assert run.data.tags["mlflow.parentRunId"] == summary.parent_run_id

    # The study and the runs really live in PostgreSQL.
    loaded = optuna.load_study(study_name="postgres", storage=storage)
    assert [t.number for t in loaded.trials] == [t.number for t in study.trials]
    with closing(postgres.connect("optuna")) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                    "WHERE s.study_name = %s", ("postgres",))
        assert cur.fetchone()[0] == 3
    with closing(postgres.connect("mlflow")) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
                    "WHERE e.name = %s", ("postgres",))
        assert cur.fetchone()[0] == 1 + len(runs)

    # The database password never reaches MLflow params or tags.
    parent = client.get_run(summary.parent_run_id)
    assert parent.data.tags["carvelab.storage"] == redacted
    for r in [parent, *runs]:
        for key, value in {**r.data.params, **r.data.tags}.items():
            assert postgres.password not in value, f"run {r.info.run_id}: {key} holds the password"
    # ... nor its artifacts: the logged sweep.yaml is the redacted copy.
    logged = client.download_artifacts(summary.parent_run_id, "sweep.yaml", str(tmp_path))
    text = open(logged).read()
    assert postgres.password not in text and f"{DB_USER}:***@" in text
