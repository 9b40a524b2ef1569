"""study.tell_finished: the one rule by which the driver and `sweep check --repair` record a result."""
import math

import optuna
from optuna.trial import TrialState

from carvelab.trials.sweep.study import tell_finished


def new_trial():
    study = optuna.create_study(directions=["maximize", "minimize"])
    return study, study.ask()


def test_completed_trial_is_told_its_values():
    study, trial = new_trial()
    assert tell_finished(study, trial, "completed", None, 7, [0.5, 3]) == ("completed", None)
    t = study.trials[0]
    assert t.state == TrialState.COMPLETE and t.values == [0.5, 3.0]
    assert t.user_attrs == {"state": "completed", "steps": 7}


def test_completed_trial_missing_an_objective_is_failed_not_ranked():
    for missing in (None, math.nan, math.inf):
        study, trial = new_trial()
        assert tell_finished(study, trial, "completed", None, 3, [0.5, missing]) == ("failed", "missing_objective")
        t = study.trials[0]
        assert t.state == TrialState.FAIL and t.user_attrs["reason"] == "missing_objective"


def test_pruned_and_failed_trials_keep_their_reason():
    for status, state in (("pruned", TrialState.PRUNED), ("failed", TrialState.FAIL)):
        study, trial = new_trial()
        assert tell_finished(study, trial, status, "why", 2, [None, None]) == (status, "why")
        t = study.trials[0]
        assert t.state == state and t.user_attrs == {"state": status, "steps": 2, "reason": "why"}
