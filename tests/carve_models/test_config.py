"""ModelConfig validation: every error names the field, the value and what is allowed."""
import pytest

from carvelab.carve_models import ModelConfig

BAD = [
    (dict(hybrid_ratio="3:x"), r"model.hybrid_ratio='3:x' must look like 'H:A'"),
    (dict(hybrid_ratio="0:0"), r"model.hybrid_ratio='0:0' has no layers"),
    (dict(d_model=30, n_heads=4), r"model.d_model \* model.expand_k = 30.0 must be an integer divisible by model.n_heads=4"),
    (dict(d_model=36, n_heads=4, expand_v=0.5), r"model.d_model \* model.expand_v = 18.0 must be an integer divisible by model.n_heads=4"),
    (dict(d_model=-8), r"model.d_model=-8 must be a positive integer"),
    (dict(n_layers=0), r"model.n_layers=0 must be a positive integer"),
    (dict(vocab_size=-1), r"model.vocab_size=-1 must be a positive integer"),
    (dict(window=-3), r"model.window=-3 must be a positive integer"),
    (dict(expand_k=-1.0), r"model.expand_k=-1.0 must be a positive number"),
    (dict(decay="linear"), r"model.decay='linear' is not allowed; choose one of \['channel', 'scalar', 'none'\]"),
    (dict(chunk_size=48), r"model.chunk_size=48 is not allowed; choose one of \[16, 32, 64, 128\]"),
    (dict(chunk_size=128, backend="triton"), r"model.chunk_size=128 is not allowed on the Triton backend"),
    (dict(d_model=6, n_heads=2, hybrid_ratio="1:1"), r"model.d_model / model.n_heads = 3 must be even when model.hybrid_ratio='1:1'"),
    (dict(eigen_range="[-2,1]"), r"model.eigen_range='\[-2,1\]' is not allowed; choose one of \['\[0,1\]', '\[-1,1\]'\]"),
    (dict(eigen_range="[-1,1]", covariance="propagate"), r"model.eigen_range='\[-1,1\]' needs model.covariance='reset'"),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[
    "ratio-3:x", "ratio-0:0", "heads-dont-divide-dk", "heads-dont-divide-dv", "negative-d_model", "zero-layers",
    "negative-vocab", "negative-window", "negative-expand", "unknown-decay", "chunk-48", "chunk-128-triton",
    "odd-rope-head-dim", "eigen-range-unknown", "eigen-range-propagate",
])
def test_bad_config_raises_naming_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_odd_head_dim_is_fine_without_attention():
    cfg = ModelConfig(d_model=6, n_heads=2, hybrid_ratio="1:0")
    assert cfg.head_dim_k == 3 and cfg.layer_kinds() == ["recurrent", "recurrent"]


def test_layer_kinds_repeat_the_block():
    cfg = ModelConfig(n_layers=5, hybrid_ratio="3:1")
    assert cfg.layer_kinds() == ["recurrent"] * 3 + ["attention", "recurrent"]


def test_recurrence_settings_are_one_options_object_checked_by_the_kernels():
    from carvelab.kernels import RecurrenceOptions

    cfg = ModelConfig(erase_axis="value", covariance="propagate", chunk_size=32, backend="torch", precision="exact")
    assert cfg.recurrence == RecurrenceOptions(erase_axis="value", covariance="propagate", chunk_size=32,
                                               backend="torch", precision="exact")
    with pytest.raises(ValueError, match=r"model.erase_axis='row' is not allowed; choose one of \['key', 'value'\]"):
        ModelConfig(erase_axis="row")
    with pytest.raises(ValueError, match=r"model.precision='fast' runs on the Triton backend only; backend='torch'"):
        ModelConfig(precision="fast", backend="torch")
