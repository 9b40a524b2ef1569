"""Trials spread over the nodes of a real 3-node Ray cluster (all on 127.0.0.1)."""
import pytest

from carvelab.search_space.sweep_loading import load_sweep
from carvelab.search_space.sweep_spec import ObjectiveSpec, ResourcesSpec
from carvelab.trials.sweep.driver import run_sweep
from carvelab.trials.pruners.optuna_shadow import MedianSpec
from carvelab.trials.sweep.scheduler import RayExecutor
from tests.trials.sweep_helpers import assert_exactly_once, child_runs, local_cluster, tiny_sweep


@pytest.fixture
def cluster():
    import ray

    c = local_cluster(3)
    yield c
    ray.shutdown()
    c.shutdown()


def test_trials_spread_over_three_nodes(cluster, tmp_path):
    data = tiny_sweep("cluster", tmp_path / "cache", mode="grid", budget={},
                      space={"erase_axis": ["key", "value"], "write_gate": ["scalar", "per_value"],
                             "chunk_size": [16, 32]},
                      resources={"cpus_per_trial": 1, "concurrency": 3})
    summary = run_sweep(load_sweep(data), tmp_path, address=cluster.address)
    assert_exactly_once(summary)
    _, runs = child_runs(summary)
    nodes = {r.data.tags["node"] for r in runs}
    assert len(nodes) == 3


def test_pruning_broker_lives_on_the_drivers_node(cluster):
    import ray

    ray.init(address=cluster.address)
    executor = RayExecutor(ResourcesSpec(), MedianSpec(name="median", metric="val_accuracy"), [ObjectiveSpec("val_accuracy", "maximize")])
    assert ray.get(executor.broker.node.remote()) == ray.get_runtime_context().get_node_id()
