"""UntrainedSampler: the sweep's sampler, never proposing a trained point while an untrained one exists."""
import json

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.samplers import BaseSampler
from optuna.trial import TrialState

from carvelab.trials.sweep.sampling import UntrainedSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


class Stuck(BaseSampler):
    """A converged sampler: always the same value of every name."""

    def __init__(self, values):
        self.values, self.calls = values, 0

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, name, dist):
        self.calls += 1
        return self.values[name]


def key(point):
    return json.dumps(point, sort_keys=True)


def trained_key(t):
    ran = t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return key(dict(t.params)) if ran and t.params else None


def run(sampler, space, n):
    study = optuna.create_study(sampler=sampler)
    for _ in range(n):
        trial = study.ask(space)
        study.tell(trial, 0.0)
    return study


SPACE = {"a": CategoricalDistribution(["x", "y", "z"]), "b": CategoricalDistribution([1, 2])}
GRID = [{"a": a, "b": b} for a in ("x", "y", "z") for b in (1, 2)]


def test_a_stuck_sampler_still_visits_every_point_of_a_finite_space_once():
    inner = Stuck({"a": "x", "b": 1})
    sampler = UntrainedSampler(inner, SPACE, key, trained_key, seed=0, candidates=lambda: GRID)
    study = run(sampler, SPACE, 6)
    points = [key(t.params) for t in study.trials]
    assert sorted(points) == sorted(key(p) for p in GRID)  # each of the 6 points once
    assert points[0] == key({"a": "x", "b": 1})  # the inner sampler's own proposal stands while untrained
    assert sampler.replaced == 5 and inner.calls >= 12


def test_an_exhausted_space_lets_the_repeat_through():
    sampler = UntrainedSampler(Stuck({"a": "x", "b": 1}), SPACE, key, trained_key, seed=0, candidates=lambda: GRID)
    study = run(sampler, SPACE, 7)
    assert key(study.trials[6].params) in {key(p) for p in GRID}
    assert len({key(t.params) for t in study.trials}) == 6  # the seventh is a repeat: nothing was left
    assert sampler.repeats == {6}


def test_an_infinite_space_draws_untrained_points_with_optunas_random_sampler():
    space = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "a": CategoricalDistribution(["x"])}
    sampler = UntrainedSampler(Stuck({"lr": 1e-3}), space, key, trained_key, seed=3)
    study = run(sampler, space, 5)
    values = [t.params["lr"] for t in study.trials]
    assert values[0] == 1e-3 and len(set(values)) == 5
    assert all(1e-4 <= v <= 1e-1 for v in values) and all(t.params["a"] == "x" for t in study.trials)


def test_enqueued_trials_pass_through_even_when_trained():
    inner = Stuck({"a": "x", "b": 1})
    sampler = UntrainedSampler(inner, SPACE, key, trained_key, seed=0, candidates=lambda: GRID)
    study = run(sampler, SPACE, 1)
    study.enqueue_trial({"a": "x", "b": 1})  # a replicate of the trained point, at another seed
    calls = inner.calls
    trial = study.ask(SPACE)
    assert trial.params == {"a": "x", "b": 1} and inner.calls == calls


def test_a_failed_or_running_trial_counts_only_while_it_runs():
    sampler = UntrainedSampler(Stuck({"a": "x", "b": 1}), SPACE, key, trained_key, seed=0, candidates=lambda: GRID)
    study = optuna.create_study(sampler=sampler)
    first = study.ask(SPACE)
    assert sampler.trained(study) == {key(first.params)}  # running: its point is taken
    study.tell(first, state=TrialState.FAIL)  # e.g. its driver died: it trained nothing
    assert sampler.trained(study) == set()
    assert study.ask(SPACE).params == first.params  # so the point is proposed again


# (GridSampler's after_trial stops an optimize loop once its grid is done: outside one, at the
# sixth tell, Optuna raises; five trials show the wrapper keeps its grid ids.)
@pytest.mark.parametrize("inner, n", [(optuna.samplers.TPESampler(seed=0, n_startup_trials=2), 6),
                                      (optuna.samplers.NSGAIISampler(seed=0, population_size=4), 6),
                                      (optuna.samplers.GridSampler({"a": ["x", "y", "z"], "b": [1, 2]}, seed=0), 5)])
def test_real_samplers_cover_a_small_space_without_repeats(inner, n):
    sampler = UntrainedSampler(inner, SPACE, key, trained_key, seed=0, candidates=lambda: GRID)
    study = run(sampler, SPACE, n)
    assert len({key(t.params) for t in study.trials}) == n
