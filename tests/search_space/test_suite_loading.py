"""A sweep's ``suite:`` key: the ``suite`` parameter of the points, the trial config of each
setting, and the refusals."""
import pytest

from carvelab.search_space.points import grid_points, point_config
from carvelab.search_space.sweep_loading import load_sweep
from carvelab.search_space.yaml_io import ConfigError
from carvelab.search_space.points import planned
from carvelab.trials.tasks.mad import MAD_SETTINGS
from carvelab.trials.tasks.suites import SUITES, Suite, get_suite, register_suite


def sweep(suite, **extra):
    data = {"name": "s", "mode": "grid", "seeds": [0, 1],
            "base": {"preset": "gdn2", "model": {"d_model": 16, "n_heads": 2}, "task": {"val_examples": 32}},
            "suite": suite, "space": {"content_gate": ["off", "on"]}}
    data.update(extra)
    return data


def test_a_grid_crosses_every_setting_with_the_other_axes_and_the_seeds():
    spec = load_sweep(sweep("mad"))
    points = grid_points(spec)
    assert len(points) == 66 * 2 and len(planned(spec)) == 66 * 2 * 2
    assert {p["suite"] for p in points} == set(get_suite("mad").selected("all"))
    baseline = load_sweep(sweep({"name": "mad", "settings": "baseline"}))
    assert [p["suite"] for p in grid_points(baseline)][::2] == list(MAD_SETTINGS)


def test_a_list_of_labels_selects_those_settings_in_its_order():
    labels = ["mad_noisy_recall:frac_noise=0.8", "mad_fuzzy_recall", "mad_memorization:vocab_size=8192"]
    spec = load_sweep(sweep({"name": "mad", "settings": labels}))
    assert spec.params[0].choices == labels and list(spec.suite_settings) == labels
    assert len(grid_points(spec)) == 3 * 2
    noisy = point_config(spec, {"suite": labels[0], "content_gate": False}, 0).task
    assert (noisy.name, noisy.frac_noise, noisy.seq_len) == ("mad_noisy_recall", 0.8, type(noisy)().seq_len)
    assert spec.base["task"]["name"] == "mad_noisy_recall"             # the first listed is the base's task


def test_a_setting_sets_its_keys_and_leaves_the_rest_at_its_tasks_defaults():
    spec = load_sweep(sweep("mad"))
    task = point_config(spec, {"suite": "mad_selective_copying:num_tokens_to_copy=64", "content_gate": True}, 1).task
    defaults = type(task)()
    assert task.name == "mad_selective_copying" and task.num_tokens_to_copy == 64
    assert task.seq_len == defaults.seq_len == 256 and task.vocab_size == defaults.vocab_size == 16
    assert task.val_examples == 32                                     # the base's key reaches every task
    memo = point_config(spec, {"suite": "mad_memorization:vocab_size=1024", "content_gate": False}, 0).task
    assert (memo.name, memo.vocab_size, memo.seq_len, memo.val_examples) == ("mad_memorization", 1024, 32, 32)


def test_a_setting_does_not_inherit_keys_from_the_first_setting():
    zoo = load_sweep(sweep("zoology_mqar"))
    assert zoo.base["task"]["seq_len"] == 64                           # the first setting is the base's task
    task = point_config(zoo, {"suite": "mqar:seq_len=256,num_kv_pairs=64", "content_gate": False}, 0).task
    assert (task.seq_len, task.num_kv_pairs) == (256, 64)
    st = load_sweep(sweep("state_tracking"))
    plain = point_config(st, {"suite": "modular_arithmetic", "content_gate": False}, 0).task
    bracketed = point_config(st, {"suite": "modular_arithmetic:brackets=true", "content_gate": False}, 0).task
    assert (plain.brackets, bracketed.brackets) == (False, True)


def test_every_bundled_suite_loads_in_grid_and_search_mode():
    for name in SUITES:
        for mode in ("grid", "search"):
            spec = load_sweep(sweep(name, mode=mode, budget={"trials": 4}))
            assert spec.suite == name and spec.params[0].choices == list(get_suite(name).selected("all"))
            for label in spec.params[0].choices:
                assert point_config(spec, {"suite": label, "content_gate": False}, 0).task.name == \
                    spec.suite_settings[label]["name"]


@pytest.mark.parametrize("change, message", [
    ({"suite": "nope"}, "suite.name='nope' is not a registered suite"),
    ({"suite": {"name": "mad", "settings": "some"}}, "suite.settings='some' is not allowed"),
    ({"suite": {"name": "mad", "extra": 1}}, "unknown key 'extra'"),
    ({"suite": 3}, "must be a suite name"),
    ({"suite": {"name": "mad", "settings": ["mad_fuzzy_recall:seq_len=999"]}},
     "suite: settings: 'mad_fuzzy_recall:seq_len=999' is not a setting of the suite 'mad'; its labels are listed by "
     "`carvelab suites mad`"),
    ({"suite": {"name": "mad", "settings": ["mad_fuzzy_recall", "mad_fuzzy_recall"]}},
     "settings: 'mad_fuzzy_recall' is listed twice"),
    ({"suite": {"name": "mad", "settings": []}}, "settings=[]: name at least one setting"),
    ({"suite": {"name": "mad", "settings": [{"name": "mad_fuzzy_recall"}]}},
     "suite.settings: {'name': 'mad_fuzzy_recall'} is not a setting label"),
    ({"space": {"task.vocab_size": [16, 32]}}, "space.task.vocab_size: the suite 'mad' sets the task"),
    ({"tune": {"task.train_examples": [100, 200]}}, "tune.task.train_examples: the suite 'mad' sets the task"),
    ({"base": {"preset": "gdn2", "task": {"name": "mqar"}}}, "base.task.name='mqar': the suite 'mad' names the tasks"),
    ({"base": {"preset": "gdn2", "task": {"seq_len": 64}}}, "base.task.seq_len: the suite 'mad' sets seq_len"),
    ({"base": {"preset": "gdn2", "task": {"num_kv_pairs": 4}}}, "base.task.num_kv_pairs: no task of the suite"),
    ({"mode": "ablation", "space": {}, "ablation": {"changes": [{"content_gate": "on"}]}},
     "mode 'ablation' takes its points from ablation.changes"),
])
def test_bad_suite_input_is_refused_naming_the_key(change, message):
    change = dict(change)
    with pytest.raises(ConfigError) as info:
        load_sweep(sweep(change.pop("suite", "mad"), **change))
    assert message in str(info.value)


def test_a_point_whose_label_is_not_in_the_suite_is_refused():
    spec = load_sweep(sweep("needle"))
    with pytest.raises(ConfigError, match="not a setting of the sweep's suite 'needle'"):
        point_config(spec, {"suite": "needle:num_needles=9", "content_gate": False}, 0)


def test_a_registered_suite_is_swept_like_a_bundled_one():
    register_suite(Suite("tiny_recall", "two MQAR sizes",
                         ({"name": "mqar", "num_kv_pairs": 2}, {"name": "mqar", "num_kv_pairs": 4})))
    try:
        spec = load_sweep(sweep("tiny_recall"))
        assert [p["suite"] for p in grid_points(spec)][::2] == ["mqar:num_kv_pairs=2", "mqar:num_kv_pairs=4"]
        assert point_config(spec, {"suite": "mqar:num_kv_pairs=4", "content_gate": False}, 0).task.num_kv_pairs == 4
    finally:
        SUITES.pop("tiny_recall")
