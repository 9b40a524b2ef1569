"""``pruner: {name: median | successive_halving | hyperband}``: Optuna's own pruners.

They decide on one metric, through an in-memory single-objective "shadow" study: Optuna
refuses ``report`` in multi-objective studies, so intermediate values are reported here
instead (MLflow's metric history is the durable copy; on resume the driver rebuilds this
state from the saved results, see ``base.rebuild``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from carvelab.search_space.sweep_spec import ObjectiveSpec
from carvelab.trials.pruners.base import PrunerSpec, at_least, metric_direction, register
from carvelab.trials.reporting import CONTINUE, STOP


@dataclass
class MedianSpec(PrunerSpec):
    min_peers: int = 3        # finished trials needed before anything is pruned

    def check(self) -> None:
        super().check()
        at_least(self, "min_peers", 1)


@dataclass
class HalvingSpec(PrunerSpec):
    reduction_factor: int = 3
    min_resource: int = 1     # in evaluations

    def check(self) -> None:
        super().check()
        at_least(self, "min_resource", 1)
        at_least(self, "reduction_factor", 2)


class ShadowPruner:
    """One of Optuna's single-objective pruners over an in-memory shadow study.

    The shadow study's trials are asked in the order trials first report; ``state_dict``
    keeps that order, so a restored pruner numbers (and, for hyperband, brackets) alike."""

    def __init__(self, spec: PrunerSpec, objectives: list[ObjectiveSpec], seed: int = 0):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.spec, self.seed = spec, seed
        self.direction = metric_direction(spec.metric, objectives)
        self._reset()

    def _reset(self) -> None:
        import optuna

        # A fixed name keeps hyperband's hash-based bracket assignment reproducible.
        self.study = optuna.create_study(
            study_name="carvelab-pruner-shadow", direction=self.direction, pruner=self.optuna_pruner(),
            sampler=optuna.samplers.RandomSampler(seed=self.seed))
        self.trials: dict[int, "optuna.Trial"] = {}
        self.log: dict[int, dict] = {}  # per trial, in first-report order: its reports and its end

    def optuna_pruner(self):
        raise NotImplementedError

    def decide(self, trial: int, step: int, metrics: dict[str, float]) -> str:
        value = metrics.get(self.spec.metric)
        if value is None or math.isnan(float(value)) or "end" in self.log.get(trial, {}):
            return CONTINUE
        self._report(trial, step, float(value))
        if step < self.spec.warmup_steps:
            return CONTINUE
        return STOP if self.trials[trial].should_prune() else CONTINUE

    def _report(self, trial: int, step: int, value: float) -> None:
        if trial not in self.trials:
            self.trials[trial] = self.study.ask()
            self.log[trial] = {"reports": []}
        self.trials[trial].report(value, step)
        self.log[trial]["reports"].append([step, value])

    def complete(self, trial: int, state: str, value: Optional[float]) -> None:
        """Tell the shadow study how ``trial`` ended (median pruning compares with COMPLETE trials).
        A trial that never reported is no peer of anyone; a second call is ignored."""
        from optuna.trial import TrialState

        if trial not in self.trials or "end" in self.log[trial]:
            return
        shadow = self.trials[trial]
        if state == "completed" and value is not None and not math.isnan(value):
            self.study.tell(shadow, value)
        elif state == "pruned":
            self.study.tell(shadow, state=TrialState.PRUNED)
        else:
            self.study.tell(shadow, state=TrialState.FAIL)
        self.log[trial]["end"] = [state, value]

    def state_dict(self) -> dict:
        return {"trials": [[t, entry["reports"], entry.get("end")] for t, entry in self.log.items()]}

    def load_state_dict(self, state: dict) -> None:
        self._reset()
        for trial, reports, end in state["trials"]:
            for step, value in reports:  # through decide: Optuna's pruners mark rungs as they decide
                self.decide(int(trial), int(step), {self.spec.metric: float(value)})
            if end is not None:
                self.complete(int(trial), end[0], end[1])


@register("median", MedianSpec)
class MedianPruner(ShadowPruner):
    def optuna_pruner(self):
        import optuna

        return optuna.pruners.MedianPruner(n_startup_trials=self.spec.min_peers, n_warmup_steps=self.spec.warmup_steps)


@register("successive_halving", HalvingSpec)
class SuccessiveHalvingPruner(ShadowPruner):
    def optuna_pruner(self):
        import optuna

        return optuna.pruners.SuccessiveHalvingPruner(min_resource=self.spec.min_resource,
                                                      reduction_factor=self.spec.reduction_factor)


@register("hyperband", HalvingSpec)
class HyperbandPruner(ShadowPruner):
    def optuna_pruner(self):
        import optuna

        return optuna.pruners.HyperbandPruner(min_resource=self.spec.min_resource,
                                              reduction_factor=self.spec.reduction_factor)
