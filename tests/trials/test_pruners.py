"""Pruning decisions, without Ray: the registry, Pareto-aware and Optuna's pruners over a
shadow study, their saved state, and the rebuild a resumed sweep relies on."""
import json
import random

import pytest

from carvelab.search_space.sweep_spec import ObjectiveSpec
from carvelab.trials import pruners
from carvelab.trials.pruners import build_pruner, dominates, rebuild
from carvelab.trials.pruners.optuna_shadow import HalvingSpec, MedianSpec
from carvelab.trials.pruners.pareto import ParetoPruner, ParetoSpec
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
    spec = ParetoSpec(name="pareto", metric="val_accuracy", warmup_steps=0, min_peers=2, min_dominators=2)
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
    spec = ParetoSpec(name="pareto", metric="val_loss", min_peers=1, min_dominators=1)
    p = ParetoPruner(spec, [ObjectiveSpec("val_loss", "minimize")])
    p.decide(0, 5, {"val_loss": 1.0})
    assert p.decide(1, 5, {"val_loss": 2.0}) == STOP
    assert p.decide(2, 5, {"val_loss": 0.5}) == CONTINUE


def shadow(name, **kw):
    spec = (MedianSpec if name == "median" else HalvingSpec)(name=name, metric="val_loss", **kw)
    return build_pruner(spec, [ObjectiveSpec("val_loss", "minimize"), ObjectiveSpec("params", "minimize")])


@pytest.mark.parametrize("name, kw", [("median", dict(min_peers=1)),
                                      ("successive_halving", dict(min_resource=1, reduction_factor=2))])
def test_optuna_pruner_stops_a_clearly_worse_trial(name, kw):
    p = shadow(name, **kw)
    first = [p.decide(0, step, {"val_loss": 1.0 / step}) for step in (1, 2, 3, 4)]
    assert first == [CONTINUE] * 4  # no finished peer yet
    p.complete(0, "completed", 1.0 / 4)
    # worse than the only finished peer at its first report: in the bottom half at rung 0 / above the median
    assert p.decide(1, 1, {"val_loss": 1.1}) == STOP
    p.complete(1, "pruned", 1.1)
    decisions = [p.decide(2, step, {"val_loss": 10.0}) for step in (1, 2, 3, 4)]
    assert STOP in decisions


def test_optuna_pruner_keeps_a_better_trial():
    p = shadow("median", min_peers=1)
    for step in (1, 2, 3):
        p.decide(0, step, {"val_loss": 1.0})
    p.complete(0, "completed", 1.0)
    assert all(p.decide(1, step, {"val_loss": 0.5}) == CONTINUE for step in (1, 2, 3))


def test_complete_twice_is_ignored_and_an_unreported_trial_is_no_peer():
    p = shadow("median", min_peers=1)
    p.complete(7, "completed", 0.1)  # never reported: nothing to tell
    p.decide(0, 1, {"val_loss": 1.0})
    p.complete(0, "completed", 1.0)
    p.complete(0, "failed", None)     # a second end (a retried record) changes nothing
    assert [t.state.name for t in p.study.trials] == ["COMPLETE"]


# ----------------------------------------------------------------------------- registry
def test_registry_lists_the_built_in_pruners_with_their_own_specs():
    assert set(pruners.names()) >= {"none", "median", "successive_halving", "hyperband", "pareto"}
    assert pruners.entry("pareto").spec is ParetoSpec
    assert pruners.entry("hyperband").spec is HalvingSpec
    with pytest.raises(ValueError, match=r"pruner.name='asha' is not allowed; choose one of \[.*'median'"):
        pruners.entry("asha")


# ----------------------------------------------------------------------------- saved state and resume
SPECS = [
    ParetoSpec(name="pareto", metric="val_loss", min_peers=1, min_dominators=1),
    MedianSpec(name="median", metric="val_loss", min_peers=1),
    HalvingSpec(name="successive_halving", metric="val_loss", min_resource=1, reduction_factor=2),
    HalvingSpec(name="hyperband", metric="val_loss", min_resource=1, reduction_factor=2),
]
OBJ_LOSS = [ObjectiveSpec("val_loss", "minimize"), ObjectiveSpec("params", "minimize")]


def trial_histories(n=8, steps=(1, 2, 3, 4), seed=0):
    rng = random.Random(seed)
    return [[(s, {"val_loss": rng.uniform(0.5, 2.0) / s, "params": rng.choice([100, 200])}) for s in steps]
            for _ in range(n)]


def play(pruner, histories, start=0):
    """Trials one after another, as a sweep with concurrency 1 runs them: decisions, then the end."""
    decisions = []
    for offset, history in enumerate(histories):
        trial, state = start + offset, "completed"
        for step, metrics in history:
            decision = pruner.decide(trial, step, metrics)
            decisions.append((trial, step, decision))
            if decision == STOP:
                state = "pruned"
                break
        pruner.complete(trial, state, history[-1][1]["val_loss"])
    return decisions


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_state_dict_restores_a_pruner_that_decides_alike(spec):
    histories = trial_histories()
    original = build_pruner(spec, OBJ_LOSS)
    play(original, histories[:4])
    restored = build_pruner(spec, OBJ_LOSS)
    restored.load_state_dict(json.loads(json.dumps(original.state_dict())))
    assert play(restored, histories[4:], start=4) == play(original, histories[4:], start=4)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_rebuild_from_finished_trials_prunes_as_the_uninterrupted_pruner(spec):
    histories = trial_histories(seed=1)
    uninterrupted = build_pruner(spec, OBJ_LOSS)
    before = play(uninterrupted, histories[:4])
    finished = []
    for trial in range(4):  # what the driver reads back from the saved results
        steps = [s for t, s, _ in before if t == trial]
        stopped = any(d == STOP for t, _, d in before if t == trial)
        history = [h for h in histories[trial] if h[0] in steps]
        finished.append((trial, history, "pruned" if stopped else "completed", histories[trial][-1][1]["val_loss"]))
    resumed = build_pruner(spec, OBJ_LOSS)
    rebuild(resumed, finished)
    assert play(resumed, histories[4:], start=4) == play(uninterrupted, histories[4:], start=4)


def test_replaying_reports_without_the_ends_leaves_median_without_peers():
    """The resume bug this rebuild fixes: reports alone leave the shadow trials RUNNING."""
    spec = MedianSpec(name="median", metric="val_loss", min_peers=2)
    good = [(s, {"val_loss": 1.0 / s}) for s in (1, 2, 3)]
    bad = {"val_loss": 5.0}
    rebuilt, reports_only = build_pruner(spec, OBJ_LOSS), build_pruner(spec, OBJ_LOSS)
    rebuild(rebuilt, [(0, good, "completed", 1 / 3), (1, good, "completed", 1 / 3)])
    for trial in (0, 1):
        for step, metrics in good:
            reports_only.decide(trial, step, metrics)
    assert rebuilt.decide(2, 1, bad) == STOP
    assert reports_only.decide(2, 1, bad) == CONTINUE
