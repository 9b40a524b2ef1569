"""Sweep files: validation before launch, grid/ablation expansion, points -> trial configs."""
import copy

import pytest

from carvelab.search_space.points import ablation_points, grid_points, point_config
from carvelab.search_space.sweep_loading import bundled_sweeps, load_sweep
from carvelab.search_space.yaml_io import ConfigError

BASE = {
    "name": "t",
    "base": {"preset": "gdn2", "model": {"d_model": 32, "n_heads": 2}, "task": {"seq_len": 64}},
    "space": {"erase_axis": ["key", "value"], "content_gate": ["off", "on"]},
    "objectives": [{"metric": "val_accuracy", "direction": "maximize"}],
    "budget": {"trials": 4},
}


def sweep(**changes):
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        node = data
        parts = key.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if value is _DELETE:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return data


_DELETE = object()


def test_bundled_quickstart_is_valid():
    assert "quickstart" in bundled_sweeps()
    spec = load_sweep("quickstart")
    axes = {p.name for p in spec.params}
    assert {"erase_axis", "content_gate", "write_gate", "hybrid_ratio", "chunk_size", "covariance"} <= axes
    assert len(spec.objectives) >= 2 and spec.pruner.name == "pareto"


def test_every_bundled_sweep_loads():
    names = bundled_sweeps()
    assert {"quickstart", "mad_suite_gpu", "mad_hard_gpu"} <= set(names)
    for name in names:
        assert load_sweep(name).name == name


def test_the_hard_mad_sweep_takes_one_non_baseline_setting_of_each_mad_task():
    from carvelab.trials.tasks.mad import MAD_SETTINGS

    spec = load_sweep("mad_hard_gpu")
    assert [s["name"] for s in spec.suite_settings.values()] == list(MAD_SETTINGS)
    assert all(":" in label for label in spec.suite_settings)          # none of them a baseline
    assert spec.base["model"] == load_sweep("mad_suite_gpu").base["model"]


def test_bundled_gpu_quickstart_shares_one_gpu_four_ways():
    spec = load_sweep("quickstart_gpu")
    assert {p.name for p in spec.params} == {p.name for p in load_sweep("quickstart").params}
    assert spec.resources.gpus_per_trial == 0.25 and spec.resources.concurrency == 4
    assert spec.base["train"]["device"] == "cuda"


def test_chunk_128_stays_allowed_where_trials_run_the_torch_path():
    assert load_sweep(sweep(space={"chunk_size": [64, 128]})).params[0].choices == [64, 128]
    on_cpu = sweep(space={"chunk_size": [128]}, resources={"gpus_per_trial": 1})
    on_cpu["base"]["train"] = {**on_cpu["base"].get("train", {}), "device": "cpu"}
    assert load_sweep(on_cpu).params[0].choices == [128]


def test_on_off_axis_values_become_booleans():
    spec = load_sweep(sweep())
    gate = [p for p in spec.params if p.name == "content_gate"][0]
    assert gate.choices == [False, True]


def test_dotted_paths_and_ranges():
    spec = load_sweep(sweep(space={"train.lr": {"type": "log_float", "low": 1e-4, "high": 1e-2},
                                   "model.d_model": {"type": "int", "low": 32, "high": 64, "step": 32}}))
    kinds = {p.name: p.type for p in spec.params}
    assert kinds == {"train.lr": "log_float", "model.d_model": "int"}


def test_grid_mode_points_times_seeds():
    spec = load_sweep(sweep(mode="grid", seeds=[0, 1], space={
        "erase_axis": ["key", "value"], "chunk_size": [16, 32, 64]}))
    points = grid_points(spec)
    assert len(points) == 6 and len(spec.seeds) == 2
    assert {(p["erase_axis"], p["chunk_size"]) for p in points} == {
        (a, c) for a in ("key", "value") for c in (16, 32, 64)}


def test_ablation_mode_is_baseline_plus_one_factor_changes():
    spec = load_sweep(sweep(mode="ablation", space={}, ablation={"changes": [
        {"erase_axis": "value"}, {"content_gate": "on"}, {"covariance": "propagate"}]}))
    labels = [label for label, _ in ablation_points(spec)]
    assert labels == ["baseline", "erase_axis=value", "content_gate=True", "covariance=propagate"]


def test_point_config_applies_axes_and_seed():
    spec = load_sweep(sweep())
    cfg = point_config(spec, {"erase_axis": "value", "content_gate": True}, seed=7)
    assert cfg.model.erase_axis == "value" and cfg.model.content_gate is True
    assert cfg.train.seed == 7 and cfg.model.seed == 7


def test_infeasible_point_is_reported_not_trained():
    spec = load_sweep(sweep(base={"preset": "kda"}, space={"write_gate": ["scalar", "per_value"]}))
    with pytest.raises(ConfigError, match="tie_gates"):
        point_config(spec, {"write_gate": "per_value"}, seed=0)


def test_interpolation_is_resolved():
    data = sweep()
    data["base"]["train"] = {"steps": 40, "eval_every": "${base.train.steps}"}
    spec = load_sweep(data)
    assert point_config(spec, {}, 0).train.eval_every == 40


def test_overrides_on_the_command_line():
    spec = load_sweep(sweep(), ["budget.trials=9", "base.train.steps=11"])
    assert spec.budget.trials == 9 and point_config(spec, {}, 0).train.steps == 11


MALFORMED = [
    ("unknown-top-key", dict(colour="red"), "colour"),
    ("no-name", dict(name=""), "name"),
    ("bad-name", dict(name="a b/c"), "name"),
    ("no-base", dict(base=_DELETE), "base"),
    ("bad-preset", dict(base={"preset": "mamba"}), "mamba"),
    ("bad-base-field", dict(base={"model": {"d_modl": 3}}), "model.d_modl"),
    ("bad-mode", dict(mode="evolve"), "mode"),
    ("unknown-axis", dict(space={"erase_direction": ["key"]}), "space.erase_direction"),
    ("unknown-dotted-path", dict(space={"model.depth": [1, 2]}), "space.model.depth"),
    ("bad-axis-value", dict(space={"erase_axis": ["key", "diagonal"]}), r"space.erase_axis\[1\]"),
    ("bad-chunk", dict(space={"chunk_size": [16, 48]}), r"space.chunk_size\[1\]"),
    ("eigen-range-as-list", dict(space={"eigen_range": [[0, 1], [-1, 1]]}), r"space.eigen_range\[0\]"),
    ("eigen-range-propagate", dict(space={"eigen_range": ["[-1,1]"], "covariance": ["propagate"]}),
     r"every point is infeasible.*eigen_range='\[-1,1\]' needs model.covariance='reset'"),
    ("bad-ratio", dict(space={"hybrid_ratio": ["1:0", "3:x"]}), r"space.hybrid_ratio\[1\]"),
    ("empty-choices", dict(space={"erase_axis": []}), "space.erase_axis"),
    ("duplicate-choices", dict(space={"chunk_size": [16, 16]}), "space.chunk_size"),
    ("bad-param-type", dict(space={"train.lr": {"type": "gaussian", "low": 0, "high": 1}}), "space.train.lr.type"),
    ("low-above-high", dict(space={"train.lr": {"type": "float", "low": 1e-2, "high": 1e-4}}), "space.train.lr"),
    ("log-nonpositive", dict(space={"train.lr": {"type": "log_float", "low": 0.0, "high": 1.0}}), "space.train.lr.low"),
    ("range-invalid-endpoint", dict(space={"train.steps": {"type": "int", "low": -5, "high": 10}}), "space.train.steps.low"),
    ("bad-metric", dict(objectives=[{"metric": "bleu", "direction": "maximize"}]), r"objectives\[0\].metric"),
    ("bad-direction", dict(objectives=[{"metric": "val_accuracy", "direction": "up"}]), r"objectives\[0\].direction"),
    ("duplicate-objective", dict(objectives=[{"metric": "val_accuracy"}, {"metric": "val_accuracy"}]), r"objectives\[1\]"),
    ("cost-only-objectives", dict(objectives=[{"metric": "params", "direction": "minimize"}]), "objectives"),
    ("bad-sampler", dict(sampler={"name": "cmaes"}), "sampler.name"),
    ("bad-pruner", dict(pruner={"name": "asha"}), "pruner.name"),
    ("pruner-cost-metric", dict(pruner={"name": "median", "metric": "params"}), "pruner.metric"),
    # each pruner takes its own keys: a key of another pruner is not silently ignored
    ("pruner-foreign-key", dict(pruner={"name": "median", "min_dominators": 2}), "'pruner.min_dominators'"),
    ("pruner-not-mapping", dict(pruner="median"), "pruner='median' must be a mapping"),
    ("pruner-bad-factor", dict(pruner={"name": "hyperband", "reduction_factor": 1}), "pruner.reduction_factor=1 must be >= 2"),
    ("negative-budget", dict(budget={"trials": -3}), "budget.trials"),
    # trials on GPUs run the Triton kernels, whose WY chunks stop at 64 tokens
    ("triton-chunk-in-space", dict(space={"chunk_size": [64, 128]}, resources={"gpus_per_trial": 0.5}),
     r"space.chunk_size: chunk_size=128 is not allowed on the Triton backend.*gpus_per_trial=0.5"),
    ("triton-chunk-in-change", dict(mode="ablation", space={}, ablation={"changes": [{"chunk_size": 128}]},
                                    resources={"gpus_per_trial": 1}), r"ablation.changes\[0\].chunk_size: chunk_size=128"),
    ("huge-budget", dict(budget={"trials": 10**9}), "budget.trials"),
    ("no-budget", dict(budget={}), "budget"),
    ("bad-gpus", dict(resources={"gpus_per_trial": 1.5}), "resources.gpus_per_trial"),
    ("zero-concurrency", dict(resources={"concurrency": 0}), "resources.concurrency"),
    ("string-concurrency", dict(resources={"concurrency": "many"}), "resources.concurrency"),
    ("no-seeds", dict(seeds=[]), "seeds"),
    ("duplicate-seeds", dict(seeds=[1, 1]), "seeds"),
    ("grid-with-float", dict(mode="grid", space={"train.lr": {"type": "float", "low": 0.1, "high": 0.2}}), "grid"),
    ("ablation-without-changes", dict(mode="ablation", space={}), "ablation.changes"),
    ("ablation-bad-change", dict(mode="ablation", space={}, ablation={"changes": [{"erase_axis": "up"}]}),
     r"ablation.changes\[0\]"),
    ("changes-outside-ablation", dict(ablation={"changes": [{"erase_axis": "value"}]}), "ablation.changes"),
    ("content-rank-without-gate", dict(space={"content_rank": [2, 4]}), "space.content_rank"),
    ("space-not-mapping", dict(space=["erase_axis"]), "space"),
    ("bad-interpolation", dict(budget={"trials": "${nowhere}"}), "interpolation"),
    # tune: nuisance hyperparameters only, finite lists of valid values
    ("tune-not-mapping", dict(tune=["train.lr"]), "tune must be a mapping"),
    ("tune-empty-values", dict(tune={"train.lr": []}), "tune.train.lr=.*non-empty list"),
    ("tune-range", dict(tune={"train.lr": {"type": "log_float", "low": 1e-4, "high": 1e-2}}), "tune.train.lr=.*ranges belong in space"),
    ("tune-an-axis", dict(tune={"erase_axis": ["key", "value"]}), "tune.erase_axis: 'erase_axis' is an axis"),
    ("tune-a-seed", dict(tune={"train.seed": [0, 1]}), "tune.train.seed cannot be tuned.*seeds:"),
    ("tune-also-swept", dict(space={"train.lr": [1e-3, 1e-2]}, tune={"train.lr": [1e-3]}), "tune.train.lr is also swept"),
    ("tune-bad-value", dict(tune={"train.weight_decay": [0.1, -1.0]}), r"tune.train.weight_decay\[1\]"),
    ("tune-unknown-path", dict(tune={"train.learning_rate": [0.1]}), "tune.train.learning_rate: unknown"),
    ("tune-duplicates", dict(tune={"train.lr": [0.1, 0.1]}), "duplicates"),
    ("test-metric-objective", dict(objectives=[{"metric": "test_accuracy"}]), "never optimised.*'val_accuracy'"),
]


@pytest.mark.parametrize("changes, needle", [(c, n) for _, c, n in MALFORMED], ids=[i for i, _, _ in MALFORMED])
def test_malformed_sweeps_fail_before_launch_naming_the_key(changes, needle, tmp_path):
    with pytest.raises(ConfigError, match=needle) as info:
        load_sweep(sweep(**changes))
    assert "Traceback" not in str(info.value)


def test_malformed_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nspace: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml.*not valid YAML"):
        load_sweep(path)


def test_unknown_bundled_name_lists_the_bundled_ones():
    with pytest.raises(ConfigError, match="quickstart"):
        load_sweep("no-such-sweep")


def test_a_task_axis_takes_each_swept_tasks_keys_from_the_base():
    data = sweep(mode="grid", space={"task.name": ["mqar", "lm"]})
    data["base"]["task"] = {"name": "mqar", "num_kv_pairs": 4, "data_path": "corpus.txt", "seq_len": 40}
    spec = load_sweep(data)
    assert spec.task_keys["lm"] == {"data_path": "corpus.txt"}
    mqar, lm = point_config(spec, {"task.name": "mqar"}, 0).task, point_config(spec, {"task.name": "lm"}, 0).task
    assert (type(mqar).__name__, mqar.num_kv_pairs, mqar.seq_len) == ("MQARConfig", 4, 40)
    assert (type(lm).__name__, lm.data_path, lm.seq_len) == ("LMConfig", "corpus.txt", 40)
    data["base"]["task"]["num_updates"] = 2  # a key of a task this sweep does not train
    with pytest.raises(ConfigError, match="unknown key 'task.num_updates'"):
        load_sweep(data)


def test_a_swept_task_key_is_not_replaced_by_the_base_value_on_another_task():
    data = sweep(mode="grid", space={"task.name": ["mqar", "lm"], "task.seq_len": [40, 64]})
    data["base"]["task"] = {"name": "mqar", "num_kv_pairs": 4, "data_path": "corpus.txt", "seq_len": 40}
    spec = load_sweep(data)
    for name in ("mqar", "lm"):
        assert point_config(spec, {"task.name": name, "task.seq_len": 64}, 0).task.seq_len == 64


def test_tune_values_are_trained_at_every_point_and_set_the_config():
    from carvelab.search_space.points import tune_points

    spec = load_sweep(sweep(tune={"train": {"lr": [1e-3, 1e-2]}, "train.weight_decay": [0.0, 0.1]}))
    assert tune_points(spec) == [{"train.lr": a, "train.weight_decay": b} for a in (1e-3, 1e-2) for b in (0.0, 0.1)]
    cfg = point_config(spec, {"erase_axis": "value"}, 3, {"train.lr": 1e-2, "train.weight_decay": 0.0})
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.model.erase_axis, cfg.train.seed) == (1e-2, 0.0, "value", 3)
    assert tune_points(load_sweep(sweep())) == [{}]
