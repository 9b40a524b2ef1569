"""Tiny sweeps and MLflow/Optuna read-backs shared by the sweep tests."""
import copy

import optuna
from mlflow.tracking import MlflowClient

TINY_BASE = {
    "preset": "gdn2",
    "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "chunk_size": 16, "backend": "torch"},
    "task": {"name": "mqar", "seq_len": 32, "num_kv_pairs": 4, "vocab_size": 32, "train_examples": 128,
             "val_examples": 16},
    "train": {"steps": 4, "batch_size": 4, "eval_every": 2, "warmup_steps": 1, "compile_steps": 1,
              "device": "cpu"},
}


def tiny_sweep(name, cache_dir, **changes):
    base = copy.deepcopy(TINY_BASE)
    base["task"]["cache_dir"] = str(cache_dir)
    data = {
        "name": name, "base": base, "mode": "search",
        "space": {"erase_axis": ["key", "value"], "write_gate": ["scalar", "per_value"]},
        "objectives": [{"metric": "val_accuracy", "direction": "maximize"},
                       {"metric": "params", "direction": "minimize"}],
        "sampler": {"name": "random", "seed": 0},
        "budget": {"trials": 3},
        "resources": {"cpus_per_trial": 1, "concurrency": 2},
    }
    for key, value in changes.items():
        node = data
        parts = key.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return data


def study_of(summary):
    return optuna.load_study(study_name=summary.name, storage=summary.storage)


def child_runs(summary):
    client = MlflowClient(summary.tracking_uri)
    exp = client.get_experiment_by_name(summary.name)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`carvelab.role` = 'trial'",
                              max_results=10000)
    return client, runs


def assert_exactly_once(summary):
    """Every COMPLETE Optuna trial has exactly one FINISHED MLflow child run, cross-referenced."""
    study = study_of(summary)
    _, runs = child_runs(summary)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    by_number = {}
    for r in finished:
        by_number.setdefault(int(r.data.tags["optuna_trial_number"]), []).append(r)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(by_number) == sorted(t.number for t in complete)
    for t in complete:
        assert len(by_number[t.number]) == 1
        assert by_number[t.number][0].info.run_id == t.user_attrs["mlflow_run_id"]
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    return study, runs


def local_cluster(nodes: int = 3):
    """A real multi-node Ray cluster on 127.0.0.1: a head with no CPUs and ``nodes`` 1-CPU nodes.

    The caller shuts it down (``cluster.shutdown()`` ends its processes by PID).
    """
    import os

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(nodes):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    return cluster
