"""The pruning broker: the one pruner of a sweep, as a Ray actor every trial reports to.

Trials on any node send their evaluations (``report``) and get the pruner's decision; the
driver drains the reports (to log them) and tells the broker how each trial ended
(``complete``). The actor lives on the driver's node (``scheduler.RayExecutor``).

It survives its own death. Every call that changes the pruner's state is first appended to
a journal (``SweepDir.broker_journal``, JSON lines on the driver's node): the state rebuilt
at start (``rebuild``), each decision with its metrics, each trial's end, each start. Ray
restarts a dead broker (``max_restarts=-1``) and retries the calls that were in flight
(``max_task_retries=-1``); the new actor replays the journal through a fresh pruner before
it takes any call, so it decides as the broker that died would have. The calls are
idempotent: a retried ``report`` of a (trial, step) already decided returns the journaled
decision, a retried ``complete`` or ``rebuild`` is not applied twice. After a restart the
journaled reports and starts are delivered to the driver again (it skips what it has). A
driver run starts a new journal: a resumed sweep rebuilds from the saved results
(``pruners.rebuild``), not from an earlier driver's broker.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Optional


def import_extensions(names: list[str]) -> None:
    for name in names:
        importlib.import_module(name)


class PruningBroker:
    """Actor body: the pruner, its journal, and the reports and starts not yet drained."""

    def __init__(self, pruner_spec, objectives, seed: int = 0, extensions: tuple = (),
                 journal: Optional[str] = None):
        from carvelab.trials.pruners import build_pruner

        import_extensions(list(extensions))
        self.pruner = build_pruner(pruner_spec, objectives, seed)
        self.pending: list[tuple[int, int, dict, str]] = []
        self.started_trials: list[int] = []
        self.decided: dict[tuple[int, int], str] = {}
        self.completed: set[int] = set()
        self.rebuilt = False
        self.journal = Path(journal) if journal else None
        self.restarted = False
        if self.journal is not None and self.journal.exists():
            self._replay()

    # ------------------------------------------------------------------ journal
    def _replay(self) -> None:
        kept = []
        for line in self.journal.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # the last line, cut off by the death: its call is retried
                self.journal.write_text("".join(k + "\n" for k in kept))  # so new entries start clean
                break
            kept.append(line)
            self._apply(entry)
        self.restarted = True

    def _write(self, entry: dict) -> None:
        if self.journal is not None:
            with self.journal.open("a") as f:
                f.write(json.dumps(entry) + "\n")

    def _apply(self, entry: dict) -> Optional[str]:
        from carvelab.trials.pruners import rebuild

        op = entry["op"]
        if op == "rebuild":
            rebuild(self.pruner, entry["finished"])
            self.rebuilt = True
        elif op == "decide":
            trial, step = entry["trial"], entry["step"]
            decision = self.pruner.decide(trial, step, entry["metrics"])
            self.decided[(trial, step)] = decision
            self.pending.append((trial, step, entry["metrics"], decision))
            return decision
        elif op == "complete":
            self.pruner.complete(entry["trial"], entry["state"], entry["value"])
            self.completed.add(entry["trial"])
        elif op == "started":
            self.started_trials.append(entry["trial"])
        return None

    # ------------------------------------------------------------------ calls
    def report(self, trial: int, step: int, metrics: dict) -> str:
        if (trial, step) in self.decided:  # a call retried after a restart: decided already
            return self.decided[(trial, step)]
        entry = {"op": "decide", "trial": trial, "step": step, "metrics": metrics}
        decision = self.pruner.decide(trial, step, metrics)
        self._write({**entry, "decision": decision})
        self.decided[(trial, step)] = decision
        self.pending.append((trial, step, metrics, decision))
        return decision

    def rebuild(self, finished: list) -> None:
        """Pruner state as an uninterrupted sweep would have it after these trials (resume)."""
        if self.rebuilt:
            return
        self._write({"op": "rebuild", "finished": finished})
        self._apply({"op": "rebuild", "finished": finished})

    def complete(self, trial: int, state: str, value: Optional[float]) -> None:
        if trial in self.completed:
            return
        entry = {"op": "complete", "trial": trial, "state": state, "value": value}
        self._write(entry)
        self._apply(entry)

    def started(self, trial: int) -> None:
        self._write({"op": "started", "trial": trial})
        self.started_trials.append(trial)

    def drain(self) -> tuple[list, list, bool]:
        """(the reports since the last drain, the trials that started since then, whether the
        broker restarted since then: its journaled reports and starts come again)."""
        out, self.pending = self.pending, []
        started, self.started_trials = self.started_trials, []
        restarted, self.restarted = self.restarted, False
        return out, started, restarted

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def pid(self) -> int:
        import os

        return os.getpid()
