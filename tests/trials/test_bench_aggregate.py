"""The aggregate-throughput benchmark's CPU-checkable parts: the sampled points, the variants'
configs, the aggregate figures, and one real (tiny) variant run on the CPU."""
import pytest

from carvelab.search_space.sweep_loading import load_sweep
from carvelab.trials import bench_aggregate as agg

TINY = ["base.train.device=cpu", "base.train.dtype=float32", "base.train.steps=3", "base.train.batch_size=4",
        "base.train.eval_every=3", "base.model.d_model=32", "base.model.n_layers=1", "base.model.n_heads=2",
        "base.task.seq_len=32", "base.task.num_kv_pairs=4", "base.task.train_examples=256",
        "base.task.val_examples=32", "base.task.vocab_size=64"]


def test_the_sample_is_fixed_distinct_and_bounded_by_the_grid():
    spec = load_sweep("quickstart_gpu")
    a, b = agg.sample_points(spec, 16, 0), agg.sample_points(spec, 16, 0)
    assert a == b and len({tuple(sorted(p.items())) for p in a}) == 16
    assert agg.sample_points(spec, 16, 1) != a
    with pytest.raises(ValueError, match=r"--trials 65: the sweep 'quickstart_gpu' has only 64 grid points"):
        agg.sample_points(spec, 65, 0)


def test_before_is_exact_and_eager_after_keeps_the_sweeps_precision_and_graphs():
    spec = load_sweep("quickstart_gpu")
    points = agg.sample_points(spec, 3, 0)
    before, after = (agg.variant_configs(spec, points, v) for v in ("before", "after"))
    assert all(c["model"]["precision"] == "exact" and c["train"]["cuda_graph"] is False for c in before)
    assert all(c["model"]["precision"] == spec_precision(spec) and c["train"]["cuda_graph"] is True for c in after)
    for b, a, point in zip(before, after, points):  # the same point in both, otherwise unchanged
        assert b["model"]["chunk_size"] == a["model"]["chunk_size"] == point["chunk_size"]
        b["model"]["precision"], b["train"]["cuda_graph"] = a["model"]["precision"], a["train"]["cuda_graph"]
        assert b == a
    assert len({(c["model"]["content_gate"], c["model"]["erase_axis"], c["model"]["chunk_size"]) for c in after}) > 1


def spec_precision(spec):
    from carvelab.search_space.points import point_config

    return point_config(spec, {}, 0, {}).model.precision


def test_the_aggregate_counts_every_trials_tokens_over_the_shared_wall_time():
    configs = [{"train": {"batch_size": 4}, "task": {"seq_len": 10}}] * 2
    results = [{"status": "completed", "metrics": {"step": 5.0}, "started_at": 100.0, "finished_at": 110.0},
               {"status": "failed", "metrics": {}, "steps": 2, "started_at": 105.0, "finished_at": 120.0}]
    samples = [(99.0, 0, 1.0), (101.0, 50, 2.0), (115.0, 70, 3.0), (121.0, 10, 4.0)]
    s = agg.summarise(configs, results, samples)
    assert s["wall_s"] == 20.0 and s["tokens"] == (5 + 2) * 40 and s["tokens_per_s"] == 14.0
    assert s["completed"] == 1 and s["trials_per_hour"] == 360.0
    assert s["gpu_util_mean_pct"] == 60.0 and s["gpu_mem_peak_mb"] == 4.0  # only samples while a trial ran


def test_a_variant_trains_every_config_in_worker_processes():
    spec = load_sweep("quickstart_gpu", TINY)
    points = agg.sample_points(spec, 2, 0)
    out = agg.run_variant(agg.variant_configs(spec, points, "before"), "before", workers=2)
    assert out["completed"] == 2 and out["tokens"] == 2 * 3 * 4 * 32
    assert {t["precision"] for t in out["per_trial"]} == {"exact"}
    assert out["tokens_per_s"] > 0 and out["gpu_util_mean_pct"] is None
