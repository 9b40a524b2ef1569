"""The Optuna side of a sweep: study, sampler, distributions, recovery (the planned points
of grid and ablation modes: ``search_space.points.planned``).

Only the driver writes the study (ask-and-tell). Each Optuna trial is one training run of
one point of the space with one replicate seed and one combination of the tune values;
its params are the point's (what the sampler models), the seed, the tune values and the
(ablation) label are user attributes, so a trial can be re-queued exactly.
"""
from __future__ import annotations

import json
import logging
import warnings
from typing import Any, Optional

import optuna
from optuna.distributions import (
    BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution,
)
from optuna.trial import TrialState

from carvelab.search_space.points import base_value, grid_points, planned, runs_of_point
from carvelab.search_space.sweep_spec import SweepSpec
from carvelab.trials.sweep.sampling import UntrainedSampler
from carvelab.trials.tracking.records import finite_number as finite  # a value that can be ranked

logger = logging.getLogger(__name__)

# Failure reasons that are not a verdict on the point: such trials are re-queued.
REQUEUE_REASONS = ("driver_died", "unschedulable")
# Failures that never consumed a training run.
NO_TRAINING_REASONS = ("infeasible", "driver_died", "duplicate", "unschedulable")


def tell_finished(study: optuna.Study, trial, status: str, reason: Optional[str], steps: int,
                  values: list) -> tuple[str, Optional[str]]:
    """Record a finished trial in Optuna; returns the (status, reason) recorded.

    A completed trial is told its objective values; one missing an objective (None, NaN,
    Inf) is recorded as failed with reason ``missing_objective``, never ranked."""
    if status == "completed" and not all(finite(v) for v in values):
        status, reason = "failed", "missing_objective"
    trial.set_user_attr("state", status)
    trial.set_user_attr("steps", int(steps))
    if reason:
        trial.set_user_attr("reason", reason)
    if status == "completed":
        study.tell(trial, [float(v) for v in values])
    else:
        study.tell(trial, state=TrialState.PRUNED if status == "pruned" else TrialState.FAIL)
    return status, reason



def point_key(point: dict, seed: int, tune: Optional[dict] = None) -> str:
    """One training run's identity: point, seed and tune values (none: the key of a sweep without tune)."""
    key = {"point": point, "seed": seed, **({"tune": tune} if tune else {})}
    return json.dumps(key, sort_keys=True, default=str)


def tune_of(trial) -> dict:
    """The tune values a trial ran with ({} without ``tune:``)."""
    return dict(trial.user_attrs.get("tune") or {})


def distributions(spec: SweepSpec) -> dict[str, BaseDistribution]:
    out: dict[str, BaseDistribution] = {}
    for p in spec.params:
        if p.type == "categorical":
            out[p.name] = CategoricalDistribution(p.choices)
        elif p.type == "int":
            out[p.name] = IntDistribution(int(p.low), int(p.high), step=int(p.step or 1))
        else:
            out[p.name] = FloatDistribution(float(p.low), float(p.high), log=p.type == "log_float",
                                            step=None if p.type == "log_float" else p.step)
    return out


def make_sampler(spec: SweepSpec, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The declared sampler; ``seed_offset`` keeps a resumed sweep from replaying its start."""
    s = spec.sampler
    seed = s.seed + seed_offset
    if spec.mode != "search":
        return optuna.samplers.RandomSampler(seed=seed)  # every trial is enqueued
    if s.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials)
    if s.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=s.population_size)
    if s.name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=s.n_startup_trials)
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    from carvelab.search_space.points import grid_values

    return optuna.samplers.GridSampler({p.name: grid_values(p) for p in spec.params}, seed=seed)


def untrained_sampler(spec: SweepSpec, inner: optuna.samplers.BaseSampler) -> UntrainedSampler:
    """``inner`` wrapped so that a search never proposes a trained point (trials/sweep/sampling.py)."""
    dists = space_distributions(spec)
    seed, tune = runs_of_point(spec)[0]  # what a sampled trial runs itself

    def trained_key(t) -> Optional[str]:
        return point_key(dict(t.params), seed_of(t, spec), tune_of(t)) if consumed_training(t) else None

    size = space_size(dists)
    return UntrainedSampler(inner, dists, lambda point: point_key(point, seed, tune), trained_key, spec.sampler.seed,
                            (lambda: grid_points(spec)) if size is not None and size <= 100_000 else None)


def space_size(dists: dict[str, BaseDistribution]) -> Optional[int]:
    """Number of points of a finite (categorical / stepped int) space, else None."""
    size = 1
    for dist in dists.values():
        if isinstance(dist, CategoricalDistribution):
            size *= len(dist.choices)
        elif isinstance(dist, IntDistribution):
            size *= (dist.high - dist.low) // dist.step + 1
        else:
            return None
    return size


def stored_trial_count(name: str, storage: str) -> int:
    """How many trials a study named ``name`` holds in ``storage`` (0: no such study, or a
    SQLite file that does not exist; the file is not created)."""
    if storage.startswith("sqlite:///"):
        from pathlib import Path

        if not Path(storage[len("sqlite:///"):]).exists():
            return 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if summary.study_name == name:
            return summary.n_trials
    return 0


def open_study(spec: SweepSpec, storage: str) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = [o.direction for o in spec.objectives]
    try:
        existing = optuna.load_study(study_name=spec.name, storage=storage)
    except KeyError:
        existing = None
    offset = len(existing.trials) if existing is not None else 0
    study = optuna.create_study(
        study_name=spec.name, storage=storage, directions=directions, load_if_exists=True,
        sampler=(untrained_sampler(spec, make_sampler(spec, offset)) if spec.mode == "search"
                 else make_sampler(spec, offset)),
    )
    if study.directions and [d.name.lower() for d in study.directions] != directions:
        raise ValueError(
            f"the Optuna study {spec.name!r} in {storage} has directions "
            f"{[d.name.lower() for d in study.directions]}, the sweep declares {directions}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o.metric for o in spec.objectives])
    return study


def space_distributions(spec: SweepSpec) -> dict[str, BaseDistribution]:
    """Distributions of every param a trial of this sweep carries.

    Ablation: each changed name gets a categorical over its base value and its changes,
    so every ablation trial records the full point (base values for unchanged names).
    """
    if spec.mode != "ablation":
        return distributions(spec)
    values: dict[str, list] = {}
    for change in spec.changes:
        for name, value in change.items():
            values.setdefault(name, [base_value(spec, name)])
            if value not in values[name]:
                values[name].append(value)
    return {name: CategoricalDistribution(v) for name, v in values.items()}


def live_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> optuna.trial.Trial:
    """A trial of ``study`` that can still take user attributes and ``tell``, from its frozen
    copy (a RUNNING trial a dead driver left behind). Optuna offers no public way from a trial's
    number to its ``Trial``; this is the one place that reads the frozen trial's id."""
    return optuna.trial.Trial(study, trial._trial_id)


def seed_of(trial, spec: SweepSpec) -> int:
    return int(trial.user_attrs.get("seed", spec.seeds[0]))


def enqueue(study: optuna.Study, point: dict, seed: int, label: str = "", tune: Optional[dict] = None,
            **extra: Any) -> None:
    attrs = {"seed": seed, "label": label, **({"tune": dict(tune)} if tune else {}), **extra}
    study.enqueue_trial(dict(point), user_attrs=attrs, skip_if_exists=False)


def reason(trial) -> Optional[str]:
    return trial.user_attrs.get("reason")


def consumed_training(trial) -> bool:
    """Whether this trial counts against budget.trials."""
    if trial.state == TrialState.FAIL:
        return reason(trial) not in NO_TRAINING_REASONS
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def _fixed_point(trial) -> dict:
    """Params of a finished/running trial, or the fixed params of a waiting (enqueued) one."""
    if trial.state == TrialState.WAITING:
        return dict(trial.system_attrs.get("fixed_params", {}))
    return dict(trial.params)


def plan_remaining(study: optuna.Study, spec: SweepSpec) -> int:
    """Enqueue the planned (point, seed, tune) runs that are neither done nor waiting. Returns how many."""
    seen = set()
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.FAIL and reason(t) in REQUEUE_REASONS:
            continue
        seen.add(point_key(_fixed_point(t), seed_of(t, spec), tune_of(t)))
    count = 0
    for point, seed, label, tune in planned(spec):
        key = point_key(point, seed, tune)
        if key not in seen:
            enqueue(study, point, seed, label, tune)
            seen.add(key)
            count += 1
    return count
