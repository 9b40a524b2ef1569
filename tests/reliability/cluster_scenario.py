"""Fault scenarios on a ``ray start`` cluster, run inside a loopback-only network namespace.

    unshare --net -- sh -c 'ip link set lo up && exec python -m tests.reliability.cluster_scenario
        SCENARIO SWEEP.yaml FOLDER'

(``ray_start.netns_command`` builds that line.) The scenario starts the nodes, runs the real
sweep driver (``carvelab sweep run SWEEP --address ...``) as its own process, injects its
faults while trials run, and writes ``FOLDER/report.json``: what it did, when, and which node
ran what. The test that started it audits the sweep (Optuna, MLflow, result files) from
outside the namespace.

Scenarios:
    nodes   two 1-CPU workers; a worker's raylet is killed while it runs a trial (the trial
            is retried on another node); a third worker joins mid-sweep (it gets trials)
    head    the head is killed mid-sweep (the driver must stop by itself, within a bound);
            then a fresh cluster, and the same command again resumes the sweep
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import optuna

from tests.reliability.helpers import COMPLETE, RUNNING, end_session, wait_for
from tests.reliability.ray_start import RayStartCluster

DRIVER_EXIT_LIMIT_S = 120  # after the head dies, the driver must be gone within this


def driver(sweep: Path, root: Path, address: str, env: dict, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "carvelab.trials.cli", "sweep", "run", str(sweep), "--address", address,
            "--root", str(root), "-q"]
    return subprocess.Popen(argv, stdout=log.open("a"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def trial_states(storage: str, name: str) -> dict[str, list[int]]:
    """Trial numbers by state; empty until the driver has made its study."""
    if not Path(storage.removeprefix("sqlite:///")).exists():
        return {}
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return {}
    out: dict[str, list[int]] = {}
    for t in study.trials:
        out.setdefault(t.state.name, []).append(t.number)
    return out


def finished_on(sweep_dir: Path) -> set[str]:
    """Ids of the nodes that finished a trial of the sweep (its saved results)."""
    nodes = set()
    for f in (sweep_dir / "results").glob("trial-*.json"):
        try:
            nodes.add(json.loads(f.read_text()).get("node"))
        except (OSError, json.JSONDecodeError):  # being written
            continue
    return nodes


def nodes_scenario(sweep: Path, folder: Path, root: Path, storage: str, name: str) -> dict:
    cluster = RayStartCluster(folder / "cluster")
    report: dict = {"events": []}
    try:
        cluster.start_head()
        w1, w2 = cluster.add_worker("w1"), cluster.add_worker("w2")
        report["listeners"] = cluster.listeners()
        proc = driver(sweep, root, cluster.address, cluster.env, folder / "driver.log")
        # trials spread over both workers first, then the fault: a worker running a trial, and
        # not the one holding the pruning broker (the sweep needs it)
        wait_for(lambda: {w1.id, w2.id} <= finished_on(root / name), 240, "a trial finished on each worker")
        victim = wait_for(lambda: next((n for n in (w1, w2) if n.running_trials() and not n.hosts_broker()), None),
                          240, "a worker node running a trial")
        running = trial_states(storage, name).get(RUNNING.name, [])
        report["killed"] = {"node": victim.id, "at": time.time(), "running": running,
                            "raylet": cluster.kill_raylet(victim)}
        report["events"].append(f"killed the raylet of {victim.name} while trials {running} ran")
        w3 = cluster.add_worker("w3")
        report["added"] = {"node": w3.id, "at": time.time()}
        report["events"].append("added w3")
        report["driver_rc"] = proc.wait(timeout=600)
        report["nodes"] = {n.name: n.id for n in (w1, w2, w3)}
    finally:
        cluster.end_all()
    return report


def head_scenario(sweep: Path, folder: Path, root: Path, storage: str, name: str) -> dict:
    report: dict = {"events": []}
    first = RayStartCluster(folder / "cluster1")
    try:
        first.start_head()
        first.add_worker("w1")
        first.add_worker("w2")
        report["listeners"] = first.listeners()
        proc = driver(sweep, root, first.address, first.env, folder / "driver1.log")
        wait_for(lambda: (s := trial_states(storage, name)) and s.get(COMPLETE.name) and s.get(RUNNING.name),
                 240, "a completed trial and a running one")
        report["before_kill"] = trial_states(storage, name)
        killed = time.monotonic()
        first.end(first.nodes[0])  # the head's whole process group: GCS, its raylet, its workers
        report["events"].append(f"killed the head while trials {report['before_kill'].get(RUNNING.name)} ran")
        try:
            report["driver1_rc"] = proc.wait(timeout=DRIVER_EXIT_LIMIT_S)
        except subprocess.TimeoutExpired:
            report["driver1_rc"] = None
            first.end_all()
            end_session(proc)  # the driver's own process group
        report["driver1_exit_s"] = time.monotonic() - killed
    finally:
        first.end_all()
    second = RayStartCluster(folder / "cluster2")
    try:
        second.start_head()
        second.add_worker("w1")
        report["after_restart"] = trial_states(storage, name)
        proc = driver(sweep, root, second.address, second.env, folder / "driver2.log")
        report["driver2_rc"] = proc.wait(timeout=600)
        report["events"].append("re-ran the sweep on a fresh cluster")
    finally:
        second.end_all()
    return report


SCENARIOS = {"nodes": nodes_scenario, "head": head_scenario}


def main(argv: list[str]) -> int:
    scenario, sweep, folder = argv[0], Path(argv[1]), Path(argv[2])
    import yaml

    name = yaml.safe_load(sweep.read_text())["name"]
    root = folder / "root"
    storage = f"sqlite:///{root / name / 'optuna.db'}"
    report = SCENARIOS[scenario](sweep, folder, root, storage, name)
    (folder / "report.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
