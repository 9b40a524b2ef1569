"""Pruning decisions for running trials: ``decide(trial, step, metrics) -> CONTINUE | STOP``.

- ``ParetoPruner`` (multi-objective, ours): at a report step a trial is stopped when its
  intermediate quality, together with its cost objectives known before training
  (params, FLOPs/token, state bytes), is dominated by at least ``min_dominators`` other
  trials' reports at the same step — after ``warmup_steps`` and with at least
  ``min_peers`` peers at that step.
- ``OptunaPruner``: Optuna's median / successive-halving / hyperband pruners on one
  metric, driven through an in-memory single-objective "shadow" study (Optuna refuses
  ``report`` in multi-objective studies, so intermediate values are kept here; MLflow's
  metric history is the durable copy and rebuilds this state on resume).
- ``NoPruner``.

All are plain Python objects; the scheduler hosts one inside a Ray actor.
"""
from __future__ import annotations

import math
from typing import Optional

from carvelab.search_space.sweep_spec import COST_METRICS, ObjectiveSpec, PrunerSpec
from carvelab.trials.reporting import CONTINUE, STOP


def metric_direction(metric: str, objectives: list[ObjectiveSpec]) -> str:
    for obj in objectives:
        if obj.metric == metric:
            return obj.direction
    return "maximize" if metric == "val_accuracy" else "minimize"


def dominates(a: list[float], b: list[float]) -> bool:
    """a dominates b (all coordinates already oriented so that larger is better)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


class NoPruner:
    def decide(self, trial: int, step: int, metrics: dict[str, float]) -> str:
        return CONTINUE

    def complete(self, trial: int, state: str, value: Optional[float]) -> None:
        pass


class ParetoPruner:
    """Multi-objective pruning on (intermediate quality, pre-training cost objectives)."""

    def __init__(self, spec: PrunerSpec, objectives: list[ObjectiveSpec]):
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
        pass  # finished trials' reports stay: they are the peers of later trials


class OptunaPruner:
    """One of Optuna's single-objective pruners over an in-memory shadow study."""

    def __init__(self, spec: PrunerSpec, objectives: list[ObjectiveSpec], seed: int = 0):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.spec = spec
        # A fixed name keeps hyperband's hash-based bracket assignment reproducible.
        self.study = optuna.create_study(
            study_name="carvelab-pruner-shadow",
            direction=metric_direction(spec.metric, objectives), pruner=self._make(spec),
            sampler=optuna.samplers.RandomSampler(seed=seed),
        )
        self.trials: dict[int, "optuna.Trial"] = {}

    @staticmethod
    def _make(spec: PrunerSpec):
        import optuna.pruners as P

        if spec.name == "median":
            return P.MedianPruner(n_startup_trials=spec.min_peers, n_warmup_steps=spec.warmup_steps)
        if spec.name == "successive_halving":
            return P.SuccessiveHalvingPruner(min_resource=spec.min_resource,
                                             reduction_factor=spec.reduction_factor)
        if spec.name == "hyperband":
            return P.HyperbandPruner(min_resource=spec.min_resource, reduction_factor=spec.reduction_factor)
        raise ValueError(f"pruner.name={spec.name!r} is not an Optuna pruner")

    def _trial(self, trial: int):
        if trial not in self.trials:
            self.trials[trial] = self.study.ask()
        return self.trials[trial]

    def decide(self, trial: int, step: int, metrics: dict[str, float]) -> str:
        value = metrics.get(self.spec.metric)
        if value is None or math.isnan(float(value)):
            return CONTINUE
        shadow = self._trial(trial)
        shadow.report(float(value), step)
        if step < self.spec.warmup_steps:
            return CONTINUE
        return STOP if shadow.should_prune() else CONTINUE

    def complete(self, trial: int, state: str, value: Optional[float]) -> None:
        """Tell the shadow study how ``trial`` ended (median pruning compares with COMPLETE trials)."""
        import optuna

        shadow = self.trials.get(trial)
        if shadow is None:
            return
        if state == "completed" and value is not None and not math.isnan(value):
            self.study.tell(shadow, value)
        elif state == "pruned":
            self.study.tell(shadow, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(shadow, state=optuna.trial.TrialState.FAIL)


def make_pruner(spec: PrunerSpec, objectives: list[ObjectiveSpec], seed: int = 0):
    if spec.name == "none":
        return NoPruner()
    if spec.name == "pareto":
        return ParetoPruner(spec, objectives)
    return OptunaPruner(spec, objectives, seed)
