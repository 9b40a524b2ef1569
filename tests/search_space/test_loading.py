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
