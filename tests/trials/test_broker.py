"""The pruning broker's journal, without Ray: a broker built on the journal of one that died
decides as that one would have, and the calls Ray retries after a restart are not applied twice."""
import json

from carvelab.search_space.sweep_spec import ObjectiveSpec
from carvelab.trials.sweep.broker import PruningBroker
from carvelab.trials.pruners.optuna_shadow import MedianSpec
from carvelab.trials.reporting import CONTINUE, STOP

OBJ = [ObjectiveSpec("val_loss", "minimize")]
SPEC = MedianSpec(name="median", metric="val_loss", min_peers=2)


def broker(journal):
    return PruningBroker(SPEC, OBJ, 0, (), str(journal))


def good_trials(b):
    """Two trials that reach a low loss and complete: the peers a bad trial is judged against."""
    b.rebuild([])
    for trial in (0, 1):
        b.started(trial)
        for step in (2, 4, 6):
            b.report(trial, step, {"val_loss": 1.0 / step})
        b.complete(trial, "completed", 1.0 / 6)


def test_a_broker_on_a_dead_brokers_journal_decides_as_it_would_have(tmp_path):
    journal = tmp_path / "journal.jsonl"
    first = broker(journal)
    good_trials(first)
    reborn = broker(journal)  # what Ray's restart builds: the same arguments, the journal on disk
    bad = [(2, step, {"val_loss": 5.0}) for step in (2, 4)]
    assert [first.report(*r) for r in bad] == [STOP, STOP]
    assert [reborn.report(*r) for r in bad] == [STOP, STOP]
    # a fresh broker without the journal has no peers and would let the bad trial run
    assert [PruningBroker(SPEC, OBJ, 0, (), None).report(*r) for r in bad] == [CONTINUE, CONTINUE]


def test_after_a_restart_the_driver_gets_the_journaled_reports_and_starts_again(tmp_path):
    journal = tmp_path / "journal.jsonl"
    first = broker(journal)
    good_trials(first)
    reports, started, restarted = first.drain()
    assert len(reports) == 6 and started == [0, 1] and not restarted
    again, started_again, restarted = broker(journal).drain()
    assert restarted and again == reports and started_again == [0, 1]


def test_calls_retried_after_a_restart_are_not_applied_twice(tmp_path):
    journal = tmp_path / "journal.jsonl"
    first = broker(journal)
    good_trials(first)
    lines = journal.read_text().splitlines()
    reborn = broker(journal)
    assert reborn.report(1, 6, {"val_loss": 1.0 / 6}) == CONTINUE  # decided before the death
    reborn.complete(1, "completed", 1.0 / 6)
    reborn.rebuild([])
    assert journal.read_text().splitlines() == lines  # nothing journaled, nothing re-applied


def test_a_journal_line_cut_off_by_the_death_is_left_to_the_retried_call(tmp_path):
    journal = tmp_path / "journal.jsonl"
    good_trials(broker(journal))
    with journal.open("a") as f:
        f.write(json.dumps({"op": "decide", "trial": 2, "step": 2, "metrics": {"val_loss": 5.0}})[:25])
    reborn = broker(journal)
    assert (2, 2) not in reborn.decided
    assert reborn.report(2, 2, {"val_loss": 5.0}) == STOP
    assert broker(journal).decided[(2, 2)] == STOP  # journaled on a line of its own


def test_without_a_journal_the_broker_keeps_no_file(tmp_path):
    b = PruningBroker(SPEC, OBJ, 0, (), None)
    good_trials(b)
    assert not list(tmp_path.iterdir()) and not b.drain()[2]
