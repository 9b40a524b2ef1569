"""The sweep folder's snapshot reads back as the typed spec it was written from."""
import dataclasses

import yaml

from carvelab.search_space.sweep_dir import SweepDir
from carvelab.search_space.sweep_loading import load_sweep
from carvelab.trials.pruners.optuna_shadow import MedianSpec
from carvelab.trials.pruners.pareto import ParetoSpec
from tests.trials.sweep_helpers import tiny_sweep


def test_the_snapshot_reads_back_as_the_spec(tmp_path):
    data = tiny_sweep("snap", tmp_path / "cache", mode="grid", budget={}, seeds=[0, 1],
                      space={"task.name": ["mqar", "lm"], "train.lr": [1e-3, 3e-3]},
                      pruner={"name": "pareto", "min_peers": 2, "warmup_steps": 4})
    spec = load_sweep(data)
    folder = SweepDir(tmp_path / "sweeps", "snap")
    assert folder.bind(spec) is False
    back = folder.spec()
    assert isinstance(back.pruner, ParetoSpec) and back.pruner.min_peers == 2
    assert dataclasses.asdict(back) == dataclasses.asdict(spec)
    assert back.task_keys == spec.task_keys and back.params[1].choices == [1e-3, 3e-3]


def test_a_snapshot_with_keys_this_version_dropped_still_reads(tmp_path):
    spec = load_sweep(tiny_sweep("old", tmp_path / "cache", pruner={"name": "median"}))
    folder = SweepDir(tmp_path / "sweeps", "old")
    folder.bind(spec)
    snapshot = folder.path / "sweep.yaml"
    stored = yaml.safe_load(snapshot.read_text())
    stored["pruner"].update(min_dominators=1, reduction_factor=3)  # the flat pruner keys of earlier snapshots
    stored.pop("task_keys")
    snapshot.write_text(yaml.safe_dump(stored))
    back = folder.spec()
    assert isinstance(back.pruner, MedianSpec) and back.task_keys == {}


def test_a_suite_sweep_reads_back_and_a_resume_with_other_settings_is_refused(tmp_path):
    import pytest

    from carvelab.search_space.yaml_io import ConfigError

    def suite_sweep(settings):
        data = tiny_sweep("suite", tmp_path / "cache", mode="grid", budget={}, suite={"name": "mad", "settings": settings},
                          space={"erase_axis": ["key"]})
        data["base"]["task"] = {"val_examples": 8}
        return load_sweep(data)

    spec = suite_sweep("baseline")
    folder = SweepDir(tmp_path / "sweeps", "suite")
    folder.bind(spec)
    back = folder.spec()
    assert dataclasses.asdict(back) == dataclasses.asdict(spec) and back.suite == "mad"
    assert list(back.suite_settings) == list(spec.suite_settings) and len(back.suite_settings) == 6
    assert folder.bind(spec) is True
    with pytest.raises(ConfigError, match="different params, suite_settings"):
        folder.bind(suite_sweep("all"))
