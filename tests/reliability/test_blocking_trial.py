"""A trial that really hangs (a deadlock, a blocking system call) is killed at its timeout, its
worker process ends, and the next trials get fresh workers."""
from __future__ import annotations

import os
import select
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import optuna

from carvelab.search_space.sweep_loading import load_sweep
from carvelab.trials.sweep.driver import run_sweep
from carvelab.trials.tasks import Task, TaskConfig, register_task
from tests.reliability.helpers import FAIL, alive, wait_for
from tests.reliability.ledger import LEDGER
from tests.trials.sweep_helpers import study_of, tiny_sweep


@dataclass
class BlockingConfig(TaskConfig):
    name: str = "test_blocking"
    block: str = "deadlock"        # deadlock | syscall
    seq_len: int = 8
    vocab_size: int = 16


@register_task
class BlockingTask(Task):
    """Writes its worker's pid under ``cache_dir``, then never returns a batch."""

    name = "test_blocking"
    quality_metric = "accuracy"
    Config = BlockingConfig

    def __init__(self, cfg: BlockingConfig):
        self.cfg, self.vocab_size, self.seq_len = cfg, cfg.vocab_size, cfg.seq_len

    def train_batch(self, step: int, batch_size: int):
        Path(self.cfg.cache_dir, f"{self.cfg.block}.pid").write_text(str(os.getpid()))
        if self.cfg.block == "deadlock":
            lock = threading.Lock()
            lock.acquire()
            lock.acquire()              # never returns: the lock is held by this very thread
        r, _ = os.pipe()
        select.select([r], [], [])      # never returns: nothing writes to the pipe
        raise AssertionError("unreachable")

    def val_batches(self, batch_size: int, max_batches: int = 0) -> Iterator:
        return iter(())

    def test_batches(self, batch_size: int, max_batches: int = 0) -> Iterator:
        return iter(())


def test_blocked_trials_are_killed_at_their_timeout_and_their_workers_replaced(tmp_path, local_ray):
    cache = tmp_path / "cache"
    cache.mkdir()
    data = tiny_sweep("blocking", cache, mode="grid", budget={}, space={"task.block": ["deadlock", "syscall"]},
                      resources={"cpus_per_trial": 1, "concurrency": 2, "trial_timeout_s": 30, "max_retries": 0})
    data["base"]["task"] = {"name": "test_blocking", "cache_dir": str(cache)}
    summary = run_sweep(load_sweep(data), tmp_path)
    LEDGER.faults_injected += 2
    study = study_of(summary)
    assert sorted((t.params["task.block"], t.state, t.user_attrs["reason"]) for t in study.trials) == [
        ("deadlock", FAIL, "timeout"), ("syscall", FAIL, "timeout")]
    pids = [int((cache / f"{b}.pid").read_text()) for b in ("deadlock", "syscall")]
    wait_for(lambda: not any(alive(p) for p in pids), 60, "the blocked workers to end")
    # the next trials run in new workers
    normal = tiny_sweep("after-blocking", tmp_path / "cache2", mode="grid", budget={},
                        space={"erase_axis": ["key", "value"]}, resources={"cpus_per_trial": 1, "concurrency": 2})
    after = run_sweep(load_sweep(normal), tmp_path)
    assert after.counts["completed"] == 2
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study_of(after).trials)
    LEDGER.faults_survived += 2
