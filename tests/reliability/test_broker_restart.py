"""The pruning broker killed mid-sweep (SIGKILL of its actor process): Ray restarts it, it
replays its journal, and the sweep prunes exactly as an uninterrupted one does."""
import logging
import os
import signal

from carvelab.search_space.sweep_loading import load_sweep
from carvelab.trials.sweep import driver as driver_module
from carvelab.trials.sweep.driver import run_sweep
from tests.reliability.helpers import alive, wait_for
from tests.reliability.ledger import LEDGER
from tests.reliability.test_driver_kill import decisions, pruning_sweep, uninterrupted_decisions


def test_a_killed_broker_restarts_and_prunes_as_an_uninterrupted_one(tmp_path, local_ray, monkeypatch, caplog):
    import ray

    expected = uninterrupted_decisions(tmp_path, "broker-whole")

    killed = tmp_path / "killed"
    killed.mkdir()
    record, recorded, pids = driver_module.SweepDriver._record, [], []

    def record_then_kill_the_broker(self, number, payload):
        record(self, number, payload)
        recorded.append(number)
        if len(recorded) == 2:  # both good trials told: the pruner's peers live only in the broker now
            pid = ray.get(self.executor.broker.pid.remote())
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not alive(pid), 30, "the broker's process to die")
            pids.append(pid)

    monkeypatch.setattr(driver_module.SweepDriver, "_record", record_then_kill_the_broker)
    with caplog.at_level(logging.WARNING, logger="carvelab.trials.sweep.scheduler"):
        run_sweep(load_sweep(pruning_sweep("broker-killed", killed)), killed / "sweeps")
    LEDGER.faults_injected += 1
    assert pids, "the broker was not killed"
    assert decisions(killed / "sweeps", "broker-killed") == expected
    assert any("pruning broker died and was restarted" in r.message for r in caplog.records)
    LEDGER.faults_survived += 1
