"""Named presets and their overrides."""
import pytest

from carvelab.carve_models import PRESETS, ModelConfig, preset_config


def test_preset_points():
    assert set(PRESETS) == {"deltanet", "gdn", "kda", "gdn2", "carve", "bayes"}
    assert preset_config("deltanet").decay == "none" and preset_config("deltanet").tie_gates
    assert preset_config("gdn").decay == "scalar" and preset_config("gdn").erase_gate == "head"
    kda = preset_config("kda")
    assert (kda.decay, kda.erase_gate, kda.write_gate, kda.tie_gates) == ("channel", "head", "scalar", True)
    gdn2 = preset_config("gdn2")
    assert (gdn2.decay, gdn2.erase_axis, gdn2.erase_gate, gdn2.write_gate, gdn2.tie_gates, gdn2.covariance) == (
        "channel", "key", "channel", "per_value", False, "reset")
    carve = preset_config("carve")
    assert carve.content_gate and carve.content_target == "erase"
    assert {**carve.__dict__, "content_gate": False} == gdn2.__dict__
    bayes = preset_config("bayes")
    assert (bayes.covariance, bayes.tie_gates, bayes.erase_gate, bayes.decay) == ("propagate", True, "head", "channel")


def test_presets_fix_every_mixer_axis_whatever_the_defaults():
    for name in PRESETS:
        fixed = set(PRESETS[name])
        assert {"decay", "erase_axis", "erase_gate", "write_gate", "tie_gates", "covariance", "content_gate"} <= fixed


def test_overrides_apply():
    cfg = preset_config("gdn2", d_model=48, n_heads=3, hybrid_ratio="3:1", chunk_size=32)
    assert isinstance(cfg, ModelConfig)
    assert (cfg.d_model, cfg.n_heads, cfg.hybrid_ratio, cfg.chunk_size, cfg.decay) == (48, 3, "3:1", 32, "channel")


def test_unknown_preset_names_it_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r"preset 'mamba' is not allowed; choose one of \['bayes', 'carve', 'deltanet', 'gdn', 'gdn2', 'kda'\]"):
        preset_config("mamba")


def test_unknown_override_names_it():
    with pytest.raises(ValueError, match=r"model.d_modle is not a model field .*allowed: \[.*'d_model'"):
        preset_config("gdn", d_modle=32)


def test_conflicting_override_is_rejected_by_validation():
    with pytest.raises(ValueError, match=r"model.tie_gates=true needs model.erase_gate='head' and model.write_gate='scalar'"):
        preset_config("kda", write_gate="per_value")
