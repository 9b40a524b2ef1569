"""The task-suite registry: labels, MAD's grid and its baselines, registering a suite."""
import pytest

from carvelab.trials.tasks.mad import MAD_SETTINGS
from carvelab.trials.tasks.suites import SUITES, Suite, get_suite, register_suite, setting_label


def test_labels_name_the_task_and_the_keys_that_depart_from_its_defaults():
    assert setting_label({"name": "mad_fuzzy_recall"}) == "mad_fuzzy_recall"
    assert setting_label({"name": "mqar", "seq_len": 256, "num_kv_pairs": 16}) == "mqar:seq_len=256,num_kv_pairs=16"
    assert setting_label({"name": "modular_arithmetic", "brackets": True}) == "modular_arithmetic:brackets=true"


def test_the_mad_suite_is_mads_grid_of_66_settings_with_six_baselines():
    mad = get_suite("mad")
    assert len(mad.selected("all")) == 66 == sum(len(v) for v in MAD_SETTINGS.values())
    assert list(mad.selected("baseline")) == list(MAD_SETTINGS)      # a baseline's label is its task
    assert mad.selected("all")["mad_noisy_recall:frac_noise=0.8"] == {"name": "mad_noisy_recall", "frac_noise": 0.8}
    with pytest.raises(ValueError, match="settings='some' is not allowed"):
        mad.selected("some")
    picked = mad.selected(("mad_memorization:vocab_size=512", "mad_in_context_recall"))
    assert picked == {"mad_memorization:vocab_size=512": {"name": "mad_memorization", "vocab_size": 512},
                      "mad_in_context_recall": {"name": "mad_in_context_recall"}}


def test_every_bundled_suite_lists_each_tasks_baseline_first():
    for suite in SUITES.values():
        baselines = suite.selected("baseline")
        assert [s["name"] for s in baselines.values()] == suite.tasks()
        firsts = {}
        for s in suite.settings:
            firsts.setdefault(s["name"], s)
        assert list(baselines.values()) == list(firsts.values())


def test_a_suite_is_registered_once_with_registered_tasks_and_distinct_settings():
    suite = Suite("tiny_recall", "two MQAR sizes", ({"name": "mqar", "num_kv_pairs": 2}, {"name": "mqar", "num_kv_pairs": 4}))
    register_suite(suite)
    try:
        assert get_suite("tiny_recall") is suite
        with pytest.raises(ValueError, match="already registered"):
            register_suite(suite)
        with pytest.raises(ValueError, match="task.name='no_such_task' is not allowed"):
            register_suite(Suite("bad", "", ({"name": "no_such_task"},)))
        with pytest.raises(ValueError, match="lists a setting twice"):
            register_suite(Suite("dup", "", ({"name": "mqar"}, {"name": "mqar"})))
        with pytest.raises(TypeError, match="at least one setting"):
            register_suite(Suite("empty", "", ()))
    finally:
        SUITES.pop("tiny_recall")
    assert not {"bad", "dup", "empty"} & set(SUITES)
    with pytest.raises(ValueError, match="not registered; registered: "):
        get_suite("tiny_recall")
