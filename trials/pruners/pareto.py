"""``pruner: {name: pareto}``: multi-objective pruning (ours).

At a report step a trial is stopped when its intermediate quality, together with its
cost objectives known before training (params, FLOPs/token, state bytes), is dominated
by at least ``min_dominators`` other trials' reports at the same step — after
``warmup_steps`` and with at least ``min_peers`` peers at that step. Finished trials'
reports stay: they are the peers of later trials.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from carvelab.search_space.sweep_spec import COST_METRICS, ObjectiveSpec
from carvelab.trials.pruners.base import PrunerSpec, at_least, dominates, metric_direction, register
from carvelab.trials.reporting import CONTINUE, STOP


@dataclass
class ParetoSpec(PrunerSpec):
    min_peers: int = 3        # other trials with a report at that step
    min_dominators: int = 1   # how many of them must dominate

    def check(self) -> None:
        super().check()
        at_least(self, "min_peers", 1)
        at_least(self, "min_dominators", 1)


@register("pareto", ParetoSpec)
class ParetoPruner:
    """Multi-objective pruning on (intermediate quality, pre-training cost objectives)."""

    def __init__(self, spec: ParetoSpec, objectives: list[ObjectiveSpec], seed: int = 0):
        self.spec = spec
        self.quality_sign = 1.0 if metric_direction(spec.metric, objectives) == "maximize" else -1.0
        self.costs = [(o.metric, 1.0 if o.direction == "maximize" else -1.0)
                      for o in objectives if o.metric in COST_METRICS]
        self.reports: dict[int, dict[int, list[float]]] = {}

    def vector(self, metrics: dict[str, float]) -> Optional[list[float]]:
        values = [self.quality_sign * float(metrics.get(self.spec.metric, math.nan))]
        values += [sign * float(metrics.get(name, math.nan)) for name, sign in self.costs]
        return None if any(math.isnan(v) for v in values) else values

    def decide(self, trial: int, step: int, metrics: dict[str, float]) -> str:
        vec = self.vector(metrics)
        if vec is None:
            return CONTINUE
        self.reports.setdefault(trial, {})[step] = vec
        if step < self.spec.warmup_steps:
            return CONTINUE
        peers = [r[step] for t, r in self.reports.items() if t != trial and step in r]
        if len(peers) < self.spec.min_peers:
            return CONTINUE
        dominators = sum(dominates(p, vec) for p in peers)
        return STOP if dominators >= self.spec.min_dominators else CONTINUE

    def complete(self, trial: int, state: str, value: Optional[float]) -> None:
        pass  # a finished trial's reports stay peers, however it ended

    def state_dict(self) -> dict:
        return {"reports": [[t, [[s, v] for s, v in r.items()]] for t, r in self.reports.items()]}

    def load_state_dict(self, state: dict) -> None:
        self.reports = {int(t): {int(s): list(v) for s, v in r} for t, r in state["reports"]}
