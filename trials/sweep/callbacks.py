"""Sweep callbacks: what happens around the driver's loop without being part of it.

A callback has ``on_sweep_start(sweep)`` (the loop begins), ``on_trial_recorded(sweep, number, status)`` (a trial's end was recorded:
result file, tracker, Optuna), ``on_tick(sweep)`` (once per pass of the loop) and
``on_sweep_end(sweep)``; ``sweep`` is the running ``SweepDriver`` (its study, tracker,
parent run and folder). ``FrontPublisher`` keeps the Pareto front in MLflow current, and
the sweep's front count (``counts["front"]``) equal to the published front's size.
"""
from __future__ import annotations

import logging
import time
from typing import Protocol

logger = logging.getLogger(__name__)

PUBLISH_EVERY_S = 20.0  # live Pareto refreshes in MLflow at most this often
# ... and at most this share of the driver's time: a refresh reads every run, so it grows
# with the sweep; the interval grows with it and the driver keeps launching and recording.
PUBLISH_SHARE = 0.1


class SweepCallback(Protocol):
    def on_sweep_start(self, sweep) -> None: ...

    def on_trial_recorded(self, sweep, number: int, status: str) -> None: ...

    def on_tick(self, sweep) -> None: ...

    def on_sweep_end(self, sweep) -> None: ...


class FrontPublisher:
    """Refreshes the front's tags and artifacts in MLflow: at most every ``every_s`` while
    trials end (the first refresh ``every_s`` after the loop starts), never taking more than
    ``share`` of the time (after a refresh that took d seconds the next waits at least
    d / share - d), and once at the end."""

    def __init__(self, every_s: float = PUBLISH_EVERY_S, share: float = PUBLISH_SHARE):
        self.every_s, self.share = every_s, share
        self.dirty = False
        self.published_at = time.monotonic()
        self.took_s = 0.0  # the last refresh's duration

    def due(self, now: float) -> bool:
        wait = max(self.every_s, self.took_s / self.share - self.took_s)
        return self.dirty and now - self.published_at >= wait

    def on_sweep_start(self, sweep) -> None:
        self.published_at = time.monotonic()

    def on_trial_recorded(self, sweep, number: int, status: str) -> None:
        self.dirty = True

    def on_tick(self, sweep) -> None:
        if self.due(time.monotonic()):
            self.publish(sweep)

    def on_sweep_end(self, sweep) -> None:
        if self.dirty:
            self.publish(sweep)

    def publish(self, sweep) -> None:
        from carvelab.dashboards.frame import SweepData
        from carvelab.dashboards.report import publish

        started = time.monotonic()
        data = SweepData(sweep.spec.name, sweep.dir.path, sweep.dir.spec(), sweep.study, sweep.tracking_uri,
                         sweep.recorder.store, sweep.parent, tracker=sweep.tracker)
        try:
            # The sweep's front count is the published front's (one definition: the dashboards').
            sweep.counts["front"] = publish(data)["front"]
        except Exception:  # a report is not worth stopping a sweep for; the traceback goes to the log
            logger.exception("could not refresh the Pareto report in MLflow")
        self.published_at = time.monotonic()
        self.took_s = self.published_at - started
        self.dirty = False
