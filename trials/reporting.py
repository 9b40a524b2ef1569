"""The tiny decision interface between a running trial and whoever watches it.

A trial calls ``reporter.report(step, metrics)`` after every evaluation; the answer is
``CONTINUE`` or ``STOP`` (the trial is then ended with status ``pruned``). The scheduler
implements it over a Ray actor; tests and ``carvelab train`` use the ones below.
"""
from __future__ import annotations

from typing import Callable, Protocol

CONTINUE = "continue"
STOP = "stop"


class Reporter(Protocol):
    def report(self, step: int, metrics: dict[str, float]) -> str:
        """Receive intermediate metrics at ``step``; answer CONTINUE or STOP."""


class NullReporter:
    """Never stops a trial; keeps nothing."""

    def report(self, step: int, metrics: dict[str, float]) -> str:
        return CONTINUE


class RecordingReporter:
    """Keeps every report; stops at the first step where ``stop_when(step, metrics)`` holds."""

    def __init__(self, stop_when: Callable[[int, dict], bool] | None = None):
        self.history: list[tuple[int, dict[str, float]]] = []
        self._stop_when = stop_when

    def report(self, step: int, metrics: dict[str, float]) -> str:
        self.history.append((step, dict(metrics)))
        if self._stop_when is not None and self._stop_when(step, metrics):
            return STOP
        return CONTINUE
