"""A sampler wrapper that never proposes a point already trained.

Training is deterministic per (point, seed, tune values), so a second run of a trained point
would only repeat the first. A model-based sampler that has converged keeps proposing the
same point; ``UntrainedSampler`` wraps the sweep's sampler, lets it propose a whole point (its
relative sampling, then its independent sampling of every remaining name), and where that
point is already trained (or running) proposes instead an untrained one drawn at random: from
the untrained grid points of a finite space, else from ``RandomSampler`` draws. Only where no
untrained point is found does the proposal stand (the driver then records the trial as a
``duplicate`` and treats the space as exhausted). Enqueued trials (fixed params: replicates,
grid and ablation runs, re-queued trials) pass through untouched.

Optuna asks ``sample_relative`` for every name of ``infer_relative_search_space``; the wrapper
declares the whole space there, so the point it returns is the trial's point.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Optional, Sequence

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

RANDOM_TRIES = 100  # random draws tried for an untrained point of an infinite space


def single_value(dist: BaseDistribution) -> Any:
    """The one value of a distribution whose ``single()`` is true."""
    return dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low


class UntrainedSampler(BaseSampler):
    """``inner``, proposing untrained points (module docstring).

    space: the distributions of a trial's point; key: a point -> the identity of its sampled run
    (the first seed and tune values); trained_key: a trial -> that identity where the trial
    trained or is training, else None; candidates: every point of a finite space (None: infinite).
    """

    def __init__(self, inner: BaseSampler, space: dict[str, BaseDistribution], key: Callable[[dict], str],
                 trained_key: Callable[[FrozenTrial], Optional[str]], seed: int,
                 candidates: Optional[Callable[[], Sequence[dict]]] = None):
        self.inner, self.space, self.key, self.trained_key = inner, dict(space), key, trained_key
        self.seed, self.candidates = seed, candidates
        self._keys: dict[int, Optional[str]] = {}  # finished trial number -> trained_key
        self.replaced = 0  # proposals replaced by an untrained point
        self.repeats: set[int] = set()  # trials whose proposal is a trained point (none untrained was found)

    # ------------------------------------------------------------------ what the wrapper adds
    def trained(self, study: optuna.Study, exclude: int = -1, trials: Optional[list] = None) -> set[str]:
        """Identities of the runs trained or training (``exclude``: a trial number left out)."""
        out = set()
        for t in study.get_trials(deepcopy=False) if trials is None else trials:
            if t.number == exclude or t.state == TrialState.WAITING:
                continue
            if t.number in self._keys:
                key = self._keys[t.number]
            else:
                key = self.trained_key(t)
                if t.state.is_finished():  # its point, seed and tune values are fixed for good
                    self._keys[t.number] = key
            if key is not None:
                out.add(key)
        return out

    def _untrained(self, study: optuna.Study, trial: FrozenTrial, trained: set[str]) -> Optional[dict]:
        rng = random.Random(self.seed * 1_000_003 + trial.number)
        if self.candidates is not None:
            options = [p for p in self.candidates() if self.key(p) not in trained]
            return rng.choice(options) if options else None
        draws = RandomSampler(seed=rng.randrange(2**31))
        for _ in range(RANDOM_TRIES):
            point = {name: single_value(d) if d.single() else draws.sample_independent(study, trial, name, d)
                     for name, d in self.space.items()}
            if self.key(point) not in trained:
                return point
        return None

    # ------------------------------------------------------------------ BaseSampler
    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return dict(self.space)

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        fixed = trial.system_attrs.get("fixed_params", {})
        if all(name in fixed for name in self.space):
            return {}
        trials = study.get_trials(deepcopy=False)
        # Optuna hands over the trial as it was before ``before_trial`` (which may have given it
        # system attributes the inner sampler needs, e.g. GridSampler's grid id): read it again.
        trial = next((t for t in reversed(trials) if t.number == trial.number), trial)
        inner_space = self.inner.infer_relative_search_space(study, trial)
        point = dict(self.inner.sample_relative(study, trial, inner_space)) if inner_space else {}
        for name, dist in self.space.items():
            if name in fixed:
                point[name] = fixed[name]
            elif dist.single():
                point[name] = single_value(dist)
            elif name not in point:
                point[name] = self.inner.sample_independent(study, trial, name, dist)
        trained = self.trained(study, exclude=trial.number, trials=trials)
        if self.key(point) in trained:
            fresh = self._untrained(study, trial, trained)
            if fresh is not None:
                self.replaced += 1
                point = fresh
            else:
                self.repeats.add(trial.number)
        return {name: value for name, value in point.items() if name not in fixed}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        try:
            self.inner.after_trial(study, trial, state, values)
        except RuntimeError as exc:
            # GridSampler calls ``study.stop()`` once its grid is visited, which Optuna refuses
            # outside ``optimize``; the driver ends a sweep whose space is exhausted itself.
            if "Study.stop" not in str(exc):
                raise

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()
