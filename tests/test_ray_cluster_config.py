"""ray_cluster.yaml: valid against the cluster-launcher schema that ships with Ray, and
consistent with what carvelab expects of a node (its checkout installed, the Triton cache
where the workers look for it)."""
import copy
import importlib.resources
import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from carvelab.trials.sweep.scheduler import triton_cache_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def schema():
    return json.loads((importlib.resources.files("ray.autoscaler") / "ray-schema.json").read_text())


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def _errors(schema, config):
    return [f"{'.'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}"
            for e in jsonschema.Draft7Validator(schema).iter_errors(config)]


def test_the_cluster_config_is_valid_against_rays_schema(schema, config):
    assert _errors(schema, config) == []


@pytest.mark.parametrize("key, value", [("max_workers", "four"), ("setup_command", ["pip install carvelab"]),
                                        ("provider", {"region": "us-east-1"})])
def test_the_schema_check_catches_a_broken_config(schema, config, key, value):
    broken = copy.deepcopy(config)
    broken[key] = value
    assert _errors(schema, broken), f"{key}={value!r} should not validate"


def test_node_types_and_worker_counts_agree(config):
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert workers and all(t["max_workers"] <= config["max_workers"] for t in workers)
    assert types[config["head_node_type"]]["resources"].get("CPU") == 0  # trials never land on the head


def test_every_node_installs_the_mounted_checkout_and_makes_the_triton_cache(config, monkeypatch):
    mounted = [remote for remote, local in config["file_mounts"].items() if local == "."]
    assert len(mounted) == 1
    setup = config["setup_commands"]
    assert any(re.search(rf"pip install (-e )?{re.escape(mounted[0])}\b", c) for c in setup)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    home = os.path.expanduser("~")
    cache = "~" + triton_cache_dir()[len(home):]  # where a worker on that node compiles into
    assert any(f"mkdir -p {cache}" in c for c in setup), (cache, setup)


def test_the_header_shows_how_to_run_a_sweep_on_it():
    head = (REPO / "ray_cluster.yaml").read_text().split("cluster_name:")[0]
    assert "ray up ray_cluster.yaml" in head and "carvelab sweep run" in head and "--address auto" in head
