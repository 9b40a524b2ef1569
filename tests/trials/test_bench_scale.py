"""The scale benchmark at 200 trials (the 2,000-trial run is the benchmark itself,
``python -m carvelab.trials.bench_sweep scale``): every trial is completed exactly once in
Optuna, MLflow and the result files, every trial after the first is in one of the
overhead windows, and the commands and the HTML front it times work. No timing is asserted."""
import shutil
from pathlib import Path

from carvelab.trials.sweep import scheduler
from carvelab.trials.bench_scale import Clock, per_trial_windows, scale
from tests.reliability.helpers import audit


def test_two_hundred_trials_are_each_recorded_once_and_measured(tmp_path):
    scheduler.start_ray(num_cpus=2)
    try:
        r = scale(200, tmp_path, browser=shutil.which("chromium") is not None)
    finally:
        scheduler.stop_ray()
    assert r["counts"]["completed"] == 200 and r["counts"]["failed"] == 0
    a = audit(r["name"], f"sqlite:///{Path(r['sweep_dir']) / 'optuna.db'}", r["tracking_uri"], Path(r["sweep_dir"]))
    assert a.ok and len(a.complete) == 200, str(a)
    assert sum(w["n"] for w in r["windows"]) == 199 and len(r["windows"]) == 10
    assert all(w["overhead_ms"] > 0 and w["parts_ms"]["tracker writes"] > 0 for w in r["windows"])
    assert {k: v["exit"] for k, v in r["commands"].items()} == {"pareto": 0, "sweep status": 0}
    assert r["html_bytes"] > 0


def test_overhead_windows_leave_out_the_waits_and_the_set_up():
    clock = Clock()
    # trial marks at t = 10, 12, 15, 21 s with 0, 1, 1, 4 s of waiting: busy 1, 3 - 0, 6 - 3 s
    clock.marks = [(10.0, 0.0, {}), (12.0, 1.0, {"optuna tell": 0.5}), (15.0, 1.0, {"optuna tell": 0.5}),
                   (21.0, 4.0, {"optuna tell": 2.0})]
    windows = per_trial_windows(clock, start=0.0, windows=3)
    assert [w["overhead_ms"] for w in windows] == [1000.0, 3000.0, 3000.0]
    assert [w["parts_ms"]["optuna tell"] for w in windows] == [500.0, 0.0, 1500.0]
    assert [w["trials"] for w in windows] == ["2-2", "3-3", "4-4"]
