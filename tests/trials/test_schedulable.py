"""Resources no node can provide: refused before anything is created; a cluster that shrinks
mid-sweep leaves trials waiting, then failed as unschedulable, and the sweep ends cleanly."""
import time

import optuna
import pytest
import yaml

from carvelab.search_space.sweep_loading import load_sweep
from carvelab.search_space.sweep_spec import ResourcesSpec
from carvelab.trials.sweep.scheduler import unschedulable
from tests.trials.sweep_helpers import tiny_sweep

NODES = [{"CPU": 2.0, "memory": 8 * 2**30}, {"CPU": 16.0, "GPU": 1.0, "memory": 64 * 2**30, "special": 2.0}]


@pytest.mark.parametrize("res, needle", [
    (ResourcesSpec(cpus_per_trial=1), None),
    (ResourcesSpec(gpus_per_trial=0.3), None),
    (ResourcesSpec(cpus_per_trial=32), "resources.cpus_per_trial=32: no node of the Ray cluster has that much; "
                                       "the largest node has 16 CPU"),
    (ResourcesSpec(gpus_per_trial=2), "resources.gpus_per_trial=2: .* the largest node has 1 GPU"),
    (ResourcesSpec(memory_mb=100_000), "resources.memory_mb=100000: .* the largest node has 65536 MB memory"),
    (ResourcesSpec(custom={"tpu": 1}), "resources.custom.tpu=1: .* the largest node has 0 tpu"),
    # each amount exists somewhere, but never on one node together
    (ResourcesSpec(cpus_per_trial=1, custom={"special": 1}), None),
])
def test_unschedulable_names_the_resource_and_the_largest_node(res, needle):
    import re

    why = unschedulable(res, NODES)
    assert (why is None) if needle is None else re.search(needle, why), why


def test_a_combination_no_single_node_has_is_refused():
    nodes = [{"CPU": 8.0}, {"CPU": 1.0, "GPU": 1.0}]
    why = unschedulable(ResourcesSpec(cpus_per_trial=4, gpus_per_trial=1), nodes)
    assert why.startswith("resources: no node of the Ray cluster has 4 CPU, 1 GPU at once")
    assert "the Ray cluster has no live node" in unschedulable(ResourcesSpec(), [])


def test_a_gpu_sweep_on_a_machine_without_gpus_exits_2_at_once_and_creates_nothing(tmp_path, capsys):
    from carvelab.trials.cli import main

    data = tiny_sweep("gpuless", tmp_path / "cache", resources={"gpus_per_trial": 0.3, "concurrency": 2})
    path = tmp_path / "gpuless.yaml"
    path.write_text(yaml.safe_dump(data))
    started = time.monotonic()
    assert main(["sweep", "run", str(path), "--root", str(tmp_path / "sweeps"), "--quiet"]) == 2
    assert time.monotonic() - started <= 10
    ours = [line for line in capsys.readouterr().err.splitlines() if "gpuless.yaml" in line]  # Ray logs its own
    assert len(ours) == 1 and "resources.gpus_per_trial=0.3" in ours[0] and "the largest node has 0 GPU" in ours[0]
    assert not (tmp_path / "sweeps").exists()


def test_trials_waiting_for_a_lost_node_fail_as_unschedulable_and_the_sweep_ends(tmp_path):
    import os

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray.cluster_utils import Cluster

    from carvelab.trials.sweep.driver import run_sweep

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    special = cluster.add_node(num_cpus=1, resources={"special": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)

    class LoseTheNode:  # the only node with `special` goes away as the loop starts
        def on_sweep_start(self, sweep):
            cluster.remove_node(special)

        def on_trial_recorded(self, sweep, number, status):
            pass

        def on_tick(self, sweep):
            pass

        def on_sweep_end(self, sweep):
            pass

    data = tiny_sweep("shrunk", tmp_path / "cache", budget={"trials": 4},
                      resources={"cpus_per_trial": 1, "concurrency": 2, "custom": {"special": 1},
                                 "pending_timeout_s": 1})
    try:
        started = time.monotonic()
        summary = run_sweep(load_sweep(data), tmp_path, address=cluster.address, callbacks=[LoseTheNode()])
        elapsed = time.monotonic() - started
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert elapsed < 60 and summary.counts["failed"] == 2 and summary.counts["completed"] == 0
    study = optuna.load_study(study_name="shrunk", storage=summary.storage)
    assert [t.user_attrs["reason"] for t in study.trials] == ["unschedulable", "unschedulable"]
