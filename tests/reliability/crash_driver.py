"""Run a sweep in this process and SIGKILL this process at a chosen instant.

    python -m tests.reliability.crash_driver SWEEP.yaml ROOT TARGET N [before|after]

``TARGET`` names a call of the real code (see ``TARGETS``); on its ``N``-th call the
process kills itself with SIGKILL, either on entry (``before``: the real code has run up
to that instant) or right after the call returned (``after``). Nothing is cleaned up:
the local Ray this process started keeps running until the caller ends the process group
(start this script with ``start_new_session=True``). Exits 0 if the sweep finished
without reaching the N-th call.
"""
from __future__ import annotations

import functools
import os
import signal
import sys


def _targets() -> dict:
    import optuna
    from optuna.storages._rdb.storage import RDBStorage

    from carvelab.search_space.sweep_dir import SweepDir
    from carvelab.trials.tracking import MlflowTracker

    return {
        "ask": (optuna.study.Study, "ask"),                           # before a trial exists
        "set_param": (RDBStorage, "_set_trial_param"),               # inside ask: trial RUNNING, params partial
        "tell": (optuna.study.Study, "tell"),                         # MLflow done, Optuna not told
        "state_values": (RDBStorage, "set_trial_state_values"),       # inside tell
        "log_metrics": (MlflowTracker, "log_metrics"),                # streaming or final metrics
        "set_tags": (MlflowTracker, "set_tags"),
        "finish": (MlflowTracker, "finish"),                          # run's terminal status
        "start_child": (MlflowTracker, "start_child"),                # trial asked, no run yet
        "save_result": (SweepDir, "save_result"),                     # result file write
    }


def arm(target: str, n: int, when: str = "before") -> None:
    owner, name = _targets()[target]
    real = getattr(owner, name)
    calls = {"n": 0}

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        out = real(*args, **kwargs)
        if calls["n"] == n and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(owner, name, wrapper)


def main(argv: list[str]) -> int:
    path, root, target, n = argv[:4]
    when = argv[4] if len(argv) > 4 else "before"
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from carvelab.search_space.sweep_loading import load_sweep
    from carvelab.trials.sweep.driver import run_sweep

    arm(target, int(n), when)
    run_sweep(load_sweep(path), root)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
