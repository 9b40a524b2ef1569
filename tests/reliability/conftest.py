"""Reliability tests: real local Ray on 127.0.0.1, real SQLite Optuna, real MLflow.

Every process a test starts is ended by its PID or its process group. At the end of the
session one line sums up what the tests counted (see ``ledger.py``).
"""
import os

import pytest

from tests.reliability.ledger import LEDGER

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(LEDGER.line())


@pytest.fixture
def local_ray():
    """The local Ray of ``scheduler.start_ray`` (2 CPUs), started once and reused until a test
    that needs another Ray shuts it down; ended (``ray.shutdown``) after the last test here."""
    from carvelab.trials.sweep import scheduler

    scheduler.start_ray(num_cpus=2)
    yield
    # left running for the next test; _end_ray ends it


@pytest.fixture(scope="package", autouse=True)
def _end_ray():
    yield
    from carvelab.trials.sweep import scheduler

    scheduler.stop_ray()


@pytest.fixture(scope="package")
def mlflow_server(tmp_path_factory):
    """``mlflow server --host 127.0.0.1`` (SQLite backend, job execution off), ended by its process group."""
    from tests.reliability.helpers import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.kill()
