"""A task and a pruner added through the registries alone, here in a test, then used by a
real sweep (local Ray, Optuna, MLflow): the registrations reach the Ray workers because
the scheduler imports this module in each of them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pytest

from carvelab.search_space.loading import load_trial_config
from carvelab.search_space.sweep_loading import load_sweep
from carvelab.search_space.yaml_io import ConfigError
from carvelab.trials.sweep import scheduler
from carvelab.trials.sweep.driver import run_sweep
from carvelab.trials.pruners import PrunerSpec, build_pruner, register
from carvelab.trials.pruners.pareto import ParetoPruner
from carvelab.trials.reporting import CONTINUE, STOP
from carvelab.trials.tasks import IGNORE_INDEX, Task, TaskConfig, build_task, register_task
from carvelab.trials.tasks.base import Batch, batch_ranges, stream_rng, to_long
from tests.trials.sweep_helpers import study_of


@dataclass
class FirstTokenConfig(TaskConfig):
    name: str = "test_first_token"
    seq_len: int = 8
    vocab_size: int = 16


@register_task
class FirstTokenTask(Task):
    """Recall the first token at the last position (every other position unscored)."""

    name = "test_first_token"
    quality_metric = "accuracy"
    Config = FirstTokenConfig

    def __init__(self, cfg: FirstTokenConfig):
        self.cfg, self.vocab_size, self.seq_len = cfg, cfg.vocab_size, cfg.seq_len

    def _examples(self, rng: np.random.Generator, n: int) -> Batch:
        inputs = rng.integers(0, self.vocab_size, size=(n, self.seq_len))
        targets = np.full_like(inputs, IGNORE_INDEX)
        targets[:, -1] = inputs[:, 0]
        return to_long(inputs), to_long(targets)

    def train_batch(self, step: int, batch_size: int) -> Batch:
        return self._examples(stream_rng(self.cfg.data_seed, "train", step), batch_size)

    def val_batches(self, batch_size: int, max_batches: int = 0) -> Iterator[Batch]:
        inputs, targets = self._examples(stream_rng(self.cfg.data_seed, "val"), self.cfg.val_examples)
        for start, stop in batch_ranges(len(inputs), batch_size, max_batches):
            yield inputs[start:stop], targets[start:stop]

    def test_batches(self, batch_size: int, max_batches: int = 0) -> Iterator[Batch]:
        inputs, targets = self._examples(stream_rng(self.cfg.data_seed, "test"), self.cfg.test_examples)
        for start, stop in batch_ranges(len(inputs), batch_size, max_batches):
            yield inputs[start:stop], targets[start:stop]


@dataclass
class OddTrialsSpec(PrunerSpec):
    after_step: int = 2


@register("test_odd_trials", OddTrialsSpec)
class OddTrialsPruner:
    """Stops odd-numbered trials at their first report from ``after_step`` on."""

    def __init__(self, spec, objectives, seed=0):
        self.spec = spec

    def decide(self, trial, step, metrics):
        return STOP if trial % 2 and step >= self.spec.after_step else CONTINUE

    def complete(self, trial, state, value):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def base(tmp_path):
    return {"preset": "gdn2", "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "chunk_size": 16, "backend": "torch"},
            "task": {"name": "test_first_token", "val_examples": 16, "cache_dir": str(tmp_path / "cache")},
            "train": {"steps": 4, "batch_size": 4, "eval_every": 2, "warmup_steps": 1, "compile_steps": 1,
                      "device": "cpu"}}


def test_a_registered_pruner_is_built_by_name_and_names_are_not_taken_twice():
    p = build_pruner(OddTrialsSpec(name="test_odd_trials", metric="val_loss", after_step=3), [])
    assert [p.decide(t, 3, {}) for t in range(4)] == [CONTINUE, STOP, CONTINUE, STOP]
    assert p.decide(1, 2, {}) == CONTINUE
    with pytest.raises(ValueError, match="already registered"):
        register("test_odd_trials", OddTrialsSpec)(ParetoPruner)
    with pytest.raises(ValueError, match="already registered"):
        register_task(type("Other", (FirstTokenTask,), {}))


def test_a_registered_task_is_typed_by_its_own_config(tmp_path):
    cfg = load_trial_config(base(tmp_path))
    assert isinstance(cfg.task, FirstTokenConfig) and cfg.task.seq_len == 8
    inputs, targets = build_task(cfg.task).train_batch(0, 3)
    assert (targets[:, -1] == inputs[:, 0]).all() and (targets[:, :-1] == IGNORE_INDEX).all()
    bad = base(tmp_path)
    bad["task"]["num_kv_pairs"] = 4  # an MQAR key
    with pytest.raises(ConfigError, match="unknown key 'task.num_kv_pairs'"):
        load_trial_config(bad)


def test_a_sweep_runs_a_registered_task_with_a_registered_pruner(tmp_path):
    sweep = {"name": "registries", "base": base(tmp_path), "mode": "grid",
             "space": {"train.lr": [3e-3, 1e-2, 3e-2, 1e-1], "task.seq_len": [8]},
             "objectives": [{"metric": "val_accuracy", "direction": "maximize"},
                            {"metric": "params", "direction": "minimize"}],
             "pruner": {"name": "test_odd_trials", "after_step": 2},
             "sampler": {"name": "grid", "seed": 0}, "budget": {},
             "resources": {"cpus_per_trial": 1, "concurrency": 1}}
    spec = load_sweep(sweep)
    assert isinstance(spec.pruner, OddTrialsSpec)
    assert "tests.trials.test_registries" in scheduler.extension_modules()
    summary = run_sweep(spec, tmp_path / "sweeps")
    states = {t.number: (t.user_attrs["state"], t.user_attrs["steps"]) for t in study_of(summary).trials}
    assert states == {0: ("completed", 4), 1: ("pruned", 2), 2: ("completed", 4), 3: ("pruned", 2)}
