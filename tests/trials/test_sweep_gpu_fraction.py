"""Fractional GPUs stay fractional: 0.25 GPU per trial runs four trials at once on one GPU.

Ray is started with one (logical) GPU; the trials themselves train on the CPU here.
"""
import json
from pathlib import Path

import pytest

from carvelab.search_space.sweep_loading import load_sweep
from carvelab.trials.sweep import scheduler
from carvelab.trials.sweep.driver import run_sweep
from tests.trials.sweep_helpers import assert_exactly_once, tiny_sweep


@pytest.fixture
def ray_with_one_gpu():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    scheduler.start_ray(num_cpus=2, num_gpus=1)
    yield
    scheduler.stop_ray()


def max_overlap(spans):
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    level = best = 0
    for _, delta in events:
        level += delta
        best = max(best, level)
    return best


def test_quarter_gpu_trials_run_four_at_a_time(ray_with_one_gpu, tmp_path):
    data = tiny_sweep("gpu-fraction", tmp_path / "cache", mode="grid", budget={},
                      space={"erase_axis": ["key", "value"], "write_gate": ["scalar", "per_value"]},
                      resources={"cpus_per_trial": 0.5, "gpus_per_trial": 0.25, "concurrency": 4})
    data["base"]["train"]["steps"] = 30
    summary = run_sweep(load_sweep(data), tmp_path)
    assert_exactly_once(summary)
    results = [json.loads(p.read_text()) for p in (Path(summary.sweep_dir) / "results").glob("*.json")]
    assert len(results) == 4
    assert all(r["gpu_ids"] == ["0"] for r in results)  # every trial got a share of GPU 0
    assert max_overlap([(r["started_at"], r["finished_at"]) for r in results]) == 4
    # every worker compiled into the node's persistent Triton cache
    assert {r["triton_cache"] for r in results} == {scheduler.triton_cache_dir()}
