"""Trial-config loading: YAML + overrides -> TrialConfig, errors naming the key path."""
import pytest

from carvelab.search_space.loading import load_trial_config, trial_config_to_dict
from carvelab.search_space.yaml_io import ConfigError, parse_overrides, parse_yaml_text


def test_preset_is_the_base_and_fields_override_it():
    cfg = load_trial_config({"preset": "kda", "model": {"d_model": 48}}, ["train.lr=1e-3"])
    assert cfg.model.tie_gates is True and cfg.model.d_model == 48
    assert cfg.train.lr == pytest.approx(1e-3)


def test_resolved_config_round_trips():
    cfg = load_trial_config({"preset": "carve", "task": {"num_kv_pairs": 4}})
    assert load_trial_config(trial_config_to_dict(cfg)) == cfg


def test_ratio_without_quotes_stays_a_string():
    assert parse_yaml_text("r: 3:1")["r"] == "3:1"
    assert load_trial_config({}, ["model.hybrid_ratio=3:1", "model.n_layers=4"]).model.hybrid_ratio == "3:1"


def test_on_off_are_booleans():
    assert parse_yaml_text("g: [off, on]")["g"] == [False, True]


@pytest.mark.parametrize("data, needle", [
    ({"model": {"d_modl": 3}}, "model.d_modl"),
    ({"model": {"d_model": "wide"}}, "model.d_model"),
    ({"model": {"hybrid_ratio": "3:x"}}, "model.hybrid_ratio"),
    ({"model": {"erase_axis": "diagonal"}}, "model.erase_axis"),
    ({"model": {"d_model": 30, "n_heads": 4}}, "model.n_heads"),
    ({"model": {"n_layers": -1}}, "model.n_layers"),
    ({"train": {"steps": 0}}, "train.steps"),
    ({"task": {"name": "sorting"}}, "task.name"),
    ({"preset": "mamba"}, "mamba"),
    ({"extra": 1}, "extra"),
], ids=["typo", "type", "ratio", "axis", "heads", "negative", "steps", "task", "preset", "top-level"])
def test_bad_trial_configs_name_the_key(data, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_trial_config(data)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_overrides(["train.lr"])


def test_loads_through_the_schema_cache_give_fresh_configs_and_still_refuse_bad_keys():
    first = load_trial_config({"preset": "gdn2", "model": {"d_model": 48}})
    first.train.steps = 12345  # a loaded config is the caller's own: nothing of it is shared
    second = load_trial_config({"preset": "gdn2", "model": {"d_model": 48}})
    assert second.train.steps != 12345 and second is not first and second.model == first.model
    for _ in range(2):  # the second time from the cached schema
        with pytest.raises(ConfigError, match="d_modle"):
            load_trial_config({"preset": "gdn2", "model": {"d_modle": 48}})
        with pytest.raises(ConfigError, match="d_model"):
            load_trial_config({"preset": "gdn2", "model": {"d_model": "wide"}})


def test_two_classes_of_one_name_are_two_schemas():
    import dataclasses

    from carvelab.search_space.loading import to_dataclass

    def make(field_type, default):
        return dataclasses.make_dataclass("Same", [("x", field_type, dataclasses.field(default=default))])

    ints, strs = make(int, 1), make(str, "a")
    assert to_dataclass(ints(), {"x": 2}, "<a>").x == 2
    assert to_dataclass(strs(), {"x": "b"}, "<b>").x == "b"
    with pytest.raises(ConfigError, match="x"):
        to_dataclass(ints(), {"x": "not an int"}, "<a>")
    # values of one class differing only in type are two schemas as well
    assert to_dataclass(make(float, 1.0)(), {}, "<c>").x == 1.0
