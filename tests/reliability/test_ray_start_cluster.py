"""A sweep on a real ``ray start`` cluster: a head and worker nodes as separate process trees
(``ray_start.py``, ``cluster_scenario.py``), joined with ``carvelab sweep run --address``, in
a network namespace that has only the loopback interface. Faults: a worker's raylet killed
mid-trial, a worker added mid-sweep, the head killed. Each ends with every trial completed
exactly once, read back from Optuna, MLflow and the result files."""
import json
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.reliability.helpers import ROOT, account, audit, point_key, write_sweep
from tests.reliability.ledger import LEDGER
from tests.reliability.ray_start import netns_available, netns_command
from tests.trials.sweep_helpers import tiny_sweep

WHY_NOT = netns_available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"needs a network namespace: {WHY_NOT}")

SPACE = {"erase_axis": ["key", "value"], "write_gate": ["scalar", "per_value"]}


def expected(seeds):
    return [point_key({"erase_axis": a, "write_gate": w}, s) for a in SPACE["erase_axis"]
            for w in SPACE["write_gate"] for s in seeds]


def run_scenario(scenario: str, tmp_path, steps: int, seeds: list) -> tuple[dict, object]:
    name = f"raystart-{scenario}"
    data = tiny_sweep(name, tmp_path / "cache", mode="grid", budget={}, space=SPACE, seeds=seeds,
                      resources={"cpus_per_trial": 1, "concurrency": 2, "max_retries": 2})
    data["base"]["train"].update(steps=steps, eval_every=steps // 3)  # long enough to be mid-trial at a fault
    sweep = write_sweep(data, tmp_path)
    folder = tmp_path / "scenario"
    argv = netns_command([sys.executable, "-m", "tests.reliability.cluster_scenario", scenario, str(sweep),
                          str(folder)])
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((folder / "report.json").read_text())
    sweep_dir = folder / "root" / name
    a = audit(name, f"sqlite:///{sweep_dir / 'optuna.db'}", f"sqlite:///{sweep_dir / 'mlflow.db'}", sweep_dir,
              expected=expected(seeds))
    account(a)
    return report, a


def _loopback_only(report):
    assert report["listeners"], "the cluster's processes listen somewhere"
    assert all(address.rsplit(":", 1)[0] in ("127.0.0.1", "[::ffff:127.0.0.1]") for address in report["listeners"]), \
        report["listeners"]


def _runs(tmp_path, name):
    sweep_dir = tmp_path / "scenario" / "root" / name
    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], filter_string="tags.`carvelab.role` = 'trial'", max_results=1000)


def test_a_killed_worker_raylet_and_an_added_worker_lose_nothing(tmp_path):
    LEDGER.faults_injected += 2
    # 16 trials: enough left after the fault for the node added then to get some. Trials of 300
    # steps (about 2 s each) keep the rest of the sweep running well past the new node's start
    # (about 5 s): at 90 steps (about 0.6 s) the surviving worker once finished all 14 trials
    # left, one after another, before the new node took one
    report, a = run_scenario("nodes", tmp_path, steps=300, seeds=[0, 1, 2, 3])
    _loopback_only(report)
    assert report["driver_rc"] == 0
    assert a.ok, str(a)
    runs = [r for r in _runs(tmp_path, "raystart-nodes") if r.info.status == "FINISHED"]
    ran_on = {r.data.tags["node"] for r in runs}
    nodes, killed = report["nodes"], report["killed"]
    assert {nodes["w1"], nodes["w2"]} <= ran_on  # trials spread over the nodes
    # nothing started on the killed node after its raylet died. A trial it was running may still
    # finish there (a Ray worker outlives its raylet by a moment, and its result reaches the
    # driver directly) or be retried elsewhere: recorded once either way (the audit above)
    results = [json.loads(f.read_text()) for f in (tmp_path / "scenario" / "root" / "raystart-nodes" / "results").glob("*.json")]
    late = [r for r in results if r.get("node") == killed["node"] and r["started_at"] > killed["at"]]
    assert not late, late
    assert any(r.get("node") != killed["node"] and r["started_at"] > killed["at"] for r in results)
    assert nodes["w3"] in ran_on, "the worker added mid-sweep got no trial"
    LEDGER.faults_survived += 2


def test_a_killed_head_stops_the_driver_and_a_fresh_cluster_resumes(tmp_path):
    LEDGER.faults_injected += 1
    report, a = run_scenario("head", tmp_path, steps=90, seeds=[0, 1])
    _loopback_only(report)
    assert report["driver1_rc"] is not None, "the driver did not stop after the head died"
    assert report["driver1_rc"] != 0 and report["driver1_exit_s"] < 120
    assert report["driver2_rc"] == 0
    assert a.ok, str(a)
    LEDGER.faults_survived += 1
