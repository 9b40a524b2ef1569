"""The exclusive timing slot: one holder at a time, precedence over new training blocks, and,
with real Ray, no trial's training block or timing window overlapping another's window."""
import itertools
import threading
import time

import pytest
import torch

from carvelab.search_space.sweep_loading import load_sweep
from carvelab.trials.timing_slot import DeviceSlot, TimedWindow


def _later(fn):
    """Run ``fn`` in a thread; returns (thread, a list that gets the time it returned)."""
    done = []
    thread = threading.Thread(target=lambda: (fn(), done.append(time.time())))
    thread.start()
    return thread, done


def test_a_training_block_waits_for_the_exclusive_holder(tmp_path):
    timer, trainer = DeviceSlot(torch.device("cpu"), tmp_path), DeviceSlot(torch.device("cpu"), tmp_path)
    timer.acquire_exclusive()
    thread, done = _later(trainer.hold_shared)
    time.sleep(0.3)
    assert not done  # blocked while the device is exclusively held
    released = timer.release_exclusive()
    thread.join(5)
    assert done and done[0] >= released
    trainer.close(), timer.close()


def test_a_waiting_window_goes_before_new_training_blocks(tmp_path):
    a, b, c = (DeviceSlot(torch.device("cpu"), tmp_path) for _ in range(3))
    a.hold_shared()                       # a trial trains
    tb, b_in = _later(b.acquire_exclusive)  # another wants to time: waits for a's block
    time.sleep(0.3)
    tc, c_in = _later(c.hold_shared)      # a third wants to train: must wait behind the window
    time.sleep(0.3)
    assert not b_in and not c_in
    a.release_shared()
    tb.join(5)
    time.sleep(0.3)
    assert b_in and not c_in              # the window runs alone
    b.release_exclusive()
    tc.join(5)
    assert c_in and c_in[0] >= b_in[0]
    for s in (a, b, c):
        s.close()


def test_the_window_times_only_its_steps_and_reports_them(tmp_path):
    window = TimedWindow(DeviceSlot(torch.device("cpu"), tmp_path), start=2, length=3)
    for step in range(8):
        window.before_step(step)
        if window.active:
            time.sleep(0.01)
        window.after_step(step, tokens=100)
    m = window.metrics()
    assert window.steps == 3 and window.tokens == 300
    assert m["step_ms"] >= 10 and m["tokens_per_s"] == pytest.approx(300 / (3 * m["step_ms"] / 1000))
    assert window.record()["slot"][1] >= window.record()["slot"][0]


@pytest.fixture
def ray_with_slots(tmp_path, monkeypatch):
    from carvelab.trials.sweep import scheduler

    monkeypatch.setenv("CARVELAB_SLOT_DIR", str(tmp_path / "slots"))
    scheduler.start_ray(num_cpus=2)
    yield
    scheduler.stop_ray()


def _overlap(a, b) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_trials_sharing_a_node_never_overlap_another_trials_window(tmp_path, ray_with_slots):
    from carvelab.search_space.sweep_dir import SweepDir
    from carvelab.trials.sweep.driver import run_sweep
    from tests.trials.sweep_helpers import tiny_sweep

    data = tiny_sweep("slots", tmp_path / "cache", mode="grid", budget={}, seeds=[0, 1],
                      space={"erase_axis": ["key", "value"]},
                      objectives=[{"metric": "val_accuracy", "direction": "maximize"},
                                  {"metric": "tokens_per_s", "direction": "maximize"}])
    data["base"]["train"].update(steps=200, timing_steps=10, eval_every=100)
    summary = run_sweep(load_sweep(data), tmp_path)
    assert summary.counts["completed"] == 4
    results = list(SweepDir(tmp_path, "slots").all_results().values())
    timings = [r["timing"] for r in results]
    assert all(t["steps"] == 10 and t["device"] == "cpu" for t in timings)
    assert all(r["metrics"]["tokens_per_s"] > 0 and r["metrics"]["step_ms"] > 0 for r in results)
    assert all("tokens_per_s_contended" in r["metrics"] for r in results)
    # trials did run at the same time (two workers; 200 steps outlast a worker's start-up), yet no
    # window overlaps another trial's window or block
    spans = [(min(b[0] for b in t["shared_blocks"]), max(b[1] for b in t["shared_blocks"])) for t in timings]
    assert any(_overlap(x, y) for x, y in itertools.combinations(spans, 2))
    for a, b in itertools.permutations(timings, 2):
        assert not _overlap(a["slot"], b["slot"])
        assert not any(_overlap(a["slot"], block) for block in b["shared_blocks"])


def test_the_wait_for_the_slot_and_the_window_stay_out_of_the_contended_figure(tmp_path, monkeypatch):
    """A window opening while the throughput meter's window is open (as on a GPU, after the CUDA
    graph's capture): the wait for the exclusive slot counts in neither figure's tokens, so it must
    not count in the contended figure's time either."""
    from carvelab.trials import trial as trial_mod
    from carvelab.trials.reporting import NullReporter
    from carvelab.trials.tasks import build_task
    from tests.trials.test_trial import tiny

    monkeypatch.setenv("CARVELAB_SLOT_DIR", str(tmp_path / "slots"))
    slow = DeviceSlot.acquire_exclusive

    def slow_acquire(self):
        time.sleep(1.0)  # a neighbour holds the slot for a second
        return slow(self)

    monkeypatch.setattr(DeviceSlot, "acquire_exclusive", slow_acquire)
    run = trial_mod._Run(tiny(tmp_path, steps=8, compile_steps=1), NullReporter(), build_task)
    run.open_slot()
    run.window = TimedWindow(run.slot, start=4, length=2)  # opens after the meter's window has opened
    try:
        started = time.perf_counter()
        while run.step < 8:
            run.train_step()
            run.synced()
            run.step += 1
        run.meter.flush()
        elapsed = time.perf_counter() - started
    finally:
        run.slot.close()
    assert run.window.steps == 2 and elapsed > 1.0
    assert run.meter.seconds < elapsed - 1.0  # the second of waiting is not in the contended time
    assert run.meter.tokens == 5 * 4 * 40     # steps 1-3 and 6-7, batch 4, T=40
