"""A node of a real 3-node Ray cluster (all on 127.0.0.1) removed mid-sweep: its trials finish elsewhere."""
import threading

import pytest
from mlflow.tracking import MlflowClient

from carvelab.search_space.sweep_loading import load_sweep
from carvelab.trials.sweep.driver import run_sweep
from tests.reliability.helpers import (
    COMPLETE, account, audit, child_runs, cmdline, descendants, point_key, wait_for,
)
from tests.reliability.ledger import LEDGER
from tests.trials.sweep_helpers import local_cluster, tiny_sweep


@pytest.fixture
def cluster():
    import ray

    c = local_cluster(3)
    ray.init(address=c.address)
    yield c
    ray.shutdown()
    c.shutdown()  # ends every process of the cluster by its PID


def node_workers(node) -> list[str]:
    """Titles of the worker processes of one node (children of its raylet)."""
    raylet = node.all_processes["raylet"][0].process.pid
    return [cmdline(p) for p in descendants(raylet)]


def test_removed_node_trials_finish_on_the_other_nodes(cluster, tmp_path):
    import ray

    space = {"erase_axis": ["key", "value"], "write_gate": ["scalar", "per_value"]}
    data = tiny_sweep("node-loss", tmp_path / "cache", mode="grid", budget={}, space=space,
                      resources={"cpus_per_trial": 1, "concurrency": 3, "max_retries": 1})
    data["base"]["train"].update(steps=60, eval_every=20)  # long enough to be mid-training when the node goes
    storage = f"sqlite:///{tmp_path / 'node-loss' / 'optuna.db'}"
    ours = ray._private.worker.global_worker.node._raylet_socket_name
    removed: dict = {}

    def remove_a_busy_node():
        import optuna

        def busy_node():
            nodes = [n for n in cluster.worker_nodes if n._raylet_socket_name != ours]
            titles = {n: node_workers(n) for n in nodes}
            # A node executing a trial and not hosting the pruning broker (the sweep needs that actor).
            busy = [n for n, ts in titles.items() if any(t.startswith("ray::_run_remote") for t in ts)
                    and not any(t.startswith("ray::PruningBroker") for t in ts)]
            return busy[0] if busy else None

        try:
            node = wait_for(busy_node, 240, "a node executing a trial")
            study = optuna.load_study(study_name="node-loss", storage=storage)
            removed["done_before"] = [t.number for t in study.trials if t.state == COMPLETE]
            removed["node_id"] = node.node_id
            cluster.remove_node(node, allow_graceful=False)
        except BaseException as exc:  # reported by the main thread
            removed["error"] = exc

    remover = threading.Thread(target=remove_a_busy_node, daemon=True)
    remover.start()
    summary = run_sweep(load_sweep(data), tmp_path, address=cluster.address)
    remover.join(60)
    assert "error" not in removed, f"could not remove a node: {removed.get('error')!r}"
    LEDGER.faults_injected += 1

    expected = [point_key({"erase_axis": a, "write_gate": w}, 0) for a in space["erase_axis"]
                for w in space["write_gate"]]
    a = audit("node-loss", summary.storage, summary.tracking_uri, tmp_path / "node-loss", expected)
    account(a)
    assert summary.counts["failed"] == 0, summary.counts  # the lost trial was retried, not failed
    assert not a.lost and not a.duplicates and not a.problems, a
    runs = child_runs(MlflowClient(summary.tracking_uri), "node-loss", "node-loss")
    on_removed = [int(r.data.tags["optuna_trial_number"]) for r in runs if r.data.tags["node"] == removed["node_id"]]
    # Only trials that had already finished when the node went may say they ran there.
    assert set(on_removed) <= set(removed["done_before"]), (on_removed, removed["done_before"])
    assert len({r.data.tags["node"] for r in runs}) >= 2
    LEDGER.faults_survived += 1
