"""The Pareto front as a researcher sees it: MLflow's own UI in headless Chromium.

A real ``mlflow server`` on 127.0.0.1 over a finished tiny sweep; Chromium (Debian's
``chromium``, installed by .ci/run) driven by Playwright opens the runs page filtered to
``tags.on_front = 'true'`` and the parent run's artifacts. A screenshot of each page is
kept under ``test-artifacts/`` (or $CARVELAB_TEST_ARTIFACTS).
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest

from carvelab.dashboards.frame import front_table, open_sweep
from carvelab.search_space.sweep_loading import load_sweep
from carvelab.trials.sweep import scheduler
from carvelab.trials.sweep.driver import run_sweep
from tests.trials.sweep_helpers import tiny_sweep

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("CARVELAB_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    scheduler.start_ray(num_cpus=2)
    try:
        data = tiny_sweep("browser", root / "cache", mode="grid", budget={},
                          space={"erase_axis": ["key", "value"], "write_gate": ["scalar", "per_value"]})
        summary = run_sweep(load_sweep(data), root)
    finally:
        scheduler.stop_ray()
    return summary


@pytest.fixture(scope="module")
def server(sweep):
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", sweep.tracking_uri],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).read() == b"OK":
                    break
            except OSError:
                pass
            assert proc.poll() is None, "mlflow server exited"
            assert time.monotonic() < deadline, "mlflow server did not answer /health within 90 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def page():
    playwright = pytest.importorskip("playwright.sync_api")
    assert Path(CHROMIUM).exists(), "Chromium is missing: install Debian's chromium package (.ci/run does)"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser.new_page(viewport={"width": 1400, "height": 900})
        browser.close()


def test_front_filter_lists_exactly_the_front_and_parent_shows_the_plot(sweep, server, page):
    data = open_sweep("browser", Path(sweep.sweep_dir).parent)
    table = front_table(data)
    front = {f"trial-{n}" for n in table.filter(pl.col("pareto_rank") == 0)["number"].to_list()}
    others = {f"trial-{n}" for n in table.filter(pl.col("pareto_rank") > 0)["number"].to_list()}
    assert front and others  # the check would be empty otherwise
    exp_id = data.store.experiment_id()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    page.goto(f"{server}/#/experiments/{exp_id}/runs?searchFilter=tags.on_front%20%3D%20%27true%27")
    page.get_by_text("matching runs").wait_for(timeout=60_000)
    page.locator("button[data-component-id*=runnamecellrenderer]").first.click()  # expand the sweep's children
    page.locator("a[href*='/runs/']", has_text="trial-").first.wait_for(timeout=30_000)
    listed = {t.strip() for t in page.locator("a[href*='/runs/']").all_inner_texts() if t.strip().startswith("trial-")}
    page.screenshot(path=str(ARTIFACTS / "mlflow_front_filter.png"))
    assert listed == front

    page.goto(f"{server}/#/experiments/{exp_id}/runs/{data.parent_run_id}/artifacts")
    page.get_by_text("pareto", exact=True).first.click(timeout=60_000)
    page.get_by_text("pareto.html").first.wait_for(timeout=30_000)
    page.get_by_text("pareto.html").first.click()
    page.wait_for_timeout(2000)
    page.screenshot(path=str(ARTIFACTS / "mlflow_pareto_artifact.png"))
    assert page.get_by_text("pareto.png").count() >= 1
