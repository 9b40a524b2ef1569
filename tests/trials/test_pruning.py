"""Pruning decisions, without Ray: Pareto-aware and Optuna's pruners over a shadow study."""
import random

import pytest

from carvelab.search_space.sweep_spec import ObjectiveSpec, PrunerSpec
from carvelab.trials.pruning import OptunaPruner, ParetoPruner, dominates
from carvelab.trials.reporting import CONTINUE, STOP

OBJ = [ObjectiveSpec("val_accuracy", "maximize"), ObjectiveSpec("params", "minimize")]


def test_dominates_matches_a_brute_force_definition():
    rng = random.Random(0)
    for _ in range(500):
        a = [rng.choice([0, 1, 2]) for _ in range(3)]
        b = [rng.choice([0, 1, 2]) for _ in range(3)]
        weakly = all(x >= y for x, y in zip(a, b))
        strictly = any(x > y for x, y in zip(a, b))
        assert dominates(a, b) == (weakly and strictly)


def pareto(**kw):
    spec = PrunerSpec(name="pareto", metric="val_accuracy", warmup_steps=0, min_peers=2, min_dominators=2)
    for k, v in kw.items():
        setattr(spec, k, v)
    return ParetoPruner(spec, OBJ)


def test_pareto_stops_a_trial_dominated_by_enough_peers_at_the_same_step():
    p = pareto()
    assert p.decide(0, 10, {"val_accuracy": 0.8, "params": 100}) == CONTINUE  # no peers yet
    assert p.decide(1, 10, {"val_accuracy": 0.7, "params": 100}) == CONTINUE  # one peer < min_peers
    # dominated by both (lower accuracy, same params)
    assert p.decide(2, 10, {"val_accuracy": 0.5, "params": 100}) == STOP


def test_pareto_keeps_a_trial_that_is_cheaper():
    p = pareto()
    p.decide(0, 10, {"val_accuracy": 0.8, "params": 100})
    p.decide(1, 10, {"val_accuracy": 0.7, "params": 100})
    # worse quality but fewer parameters: not dominated, a different trade-off
    assert p.decide(2, 10, {"val_accuracy": 0.5, "params": 50}) == CONTINUE


def test_pareto_compares_only_reports_at_the_same_step_and_respects_warmup():
    p = pareto(warmup_steps=20)
    p.decide(0, 10, {"val_accuracy": 0.9, "params": 100})
    p.decide(1, 10, {"val_accuracy": 0.9, "params": 100})
    assert p.decide(2, 10, {"val_accuracy": 0.1, "params": 100}) == CONTINUE  # warm-up
    p2 = pareto()
    p2.decide(0, 10, {"val_accuracy": 0.9, "params": 100})
    p2.decide(1, 10, {"val_accuracy": 0.9, "params": 100})
    assert p2.decide(2, 20, {"val_accuracy": 0.1, "params": 100}) == CONTINUE  # no peers at step 20


def test_pareto_with_loss_minimised():
    spec = PrunerSpec(name="pareto", metric="val_loss", min_peers=1, min_dominators=1)
    p = ParetoPruner(spec, [ObjectiveSpec("val_loss", "minimize")])
    p.decide(0, 5, {"val_loss": 1.0})
    assert p.decide(1, 5, {"val_loss": 2.0}) == STOP
    assert p.decide(2, 5, {"val_loss": 0.5}) == CONTINUE


@pytest.mark.parametrize("name", ["median", "successive_halving"])
def test_optuna_pruner_stops_a_clearly_worse_trial(name):
    spec = PrunerSpec(name=name, metric="val_loss", warmup_steps=0, min_peers=1, min_resource=1,
                      reduction_factor=2)
    p = OptunaPruner(spec, [ObjectiveSpec("val_loss", "minimize"), ObjectiveSpec("params", "minimize")])
    for trial, base in ((0, 1.0), (1, 1.1)):
        for step in (1, 2, 3, 4):
            assert p.decide(trial, step, {"val_loss": base / step}) == CONTINUE or trial > 0
        p.complete(trial, "completed", base / 4)
    decisions = [p.decide(2, step, {"val_loss": 10.0}) for step in (1, 2, 3, 4)]
    assert STOP in decisions


def test_optuna_pruner_keeps_a_better_trial():
    spec = PrunerSpec(name="median", metric="val_loss", min_peers=1)
    p = OptunaPruner(spec, [ObjectiveSpec("val_loss", "minimize")])
    for step in (1, 2, 3):
        p.decide(0, step, {"val_loss": 1.0})
    p.complete(0, "completed", 1.0)
    assert all(p.decide(1, step, {"val_loss": 0.5}) == CONTINUE for step in (1, 2, 3))
