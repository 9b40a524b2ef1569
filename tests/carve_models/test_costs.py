"""Analytic costs: param_count against the built model, FLOPs and state bytes by hand."""
import pytest

from carvelab.carve_models import PRESETS, HybridLM, flops_per_token, param_count, preset_config, state_bytes
from carvelab.carve_models.costs import mean_attended

TINY = dict(vocab_size=64, d_model=32, n_heads=2, n_layers=4, chunk_size=16, window=8, backend="reference")

POINTS = [(name, dict(hybrid_ratio=r)) for name in PRESETS for r in ("1:0", "3:1", "1:1", "0:1")] + [
    ("gdn2", dict(erase_axis="value")),
    ("gdn2", dict(erase_axis="value", expand_v=2.0, content_gate=True, content_rank=3)),
    ("gdn2", dict(write_gate="scalar")),
    ("gdn2", dict(covariance="propagate", hybrid_ratio="1:1")),
    ("bayes", dict(content_gate=True)),
    ("gdn", dict(content_gate=True, content_target="decay")),
    ("kda", dict(content_gate=True, content_target="decay", tie_embeddings=False)),
    ("carve", dict(expand_k=0.5, expand_v=2.0, mlp_hidden=40, conv_size=3, n_layers=3, hybrid_ratio="2:1")),
    ("deltanet", dict(erase_gate="channel", erase_axis="value", write_gate="per_value", tie_gates=False)),
]


def _point_id(point):
    name, kw = point
    return name + "".join(f"-{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("name,kw", POINTS, ids=[_point_id(p) for p in POINTS])
def test_param_count_matches_model(name, kw):
    cfg = preset_config(name, **{**TINY, **kw})
    assert param_count(cfg) == sum(p.numel() for p in HybridLM(cfg).parameters())


def test_mean_attended():
    assert mean_attended(5, 3) == pytest.approx((1 + 2 + 3 + 3 + 3) / 5)
    assert mean_attended(3, 8) == pytest.approx(2.0)


def test_flops_attention_only_is_twice_the_linear_weights_plus_scores():
    cfg = preset_config("gdn", **{**TINY, "hybrid_ratio": "0:1", "tie_embeddings": False})
    d, V, L = cfg.d_model, cfg.vocab_size, cfg.n_layers
    linear = param_count(cfg) - V * d - d - 2 * d * L  # all but the embedding table and norms
    assert flops_per_token(cfg, 1) == pytest.approx(2 * linear + 4 * d * 1 * L)
    assert flops_per_token(cfg, 100) == pytest.approx(2 * linear + 4 * d * mean_attended(100, cfg.window) * L)


def test_flops_of_propagate_add_six_dk_squared_per_head():
    kda, bayes = preset_config("kda", **TINY), preset_config("bayes", **TINY)  # same linear weights
    extra = TINY["n_layers"] * kda.n_heads * 6 * kda.head_dim_k ** 2
    assert flops_per_token(bayes, 64) - flops_per_token(kda, 64) == pytest.approx(extra)


def test_flops_of_chunk_size_and_recurrence_independent_of_length():
    c16, c32 = preset_config("gdn2", **TINY), preset_config("gdn2", **{**TINY, "chunk_size": 32})
    dk, dv, H = c16.head_dim_k, c16.head_dim_v, c16.n_heads
    per_layer = H * (4 * 16 * (dk + dv) + (32 ** 2 - 16 ** 2) / 3)
    assert flops_per_token(c32, 64) - flops_per_token(c16, 64) == pytest.approx(TINY["n_layers"] * per_layer)
    assert flops_per_token(c16, 64) == flops_per_token(c16, 4096)


def test_state_bytes_by_hand():
    gdn2 = preset_config("gdn2", **TINY)
    H, dk, dv, L = gdn2.n_heads, gdn2.head_dim_k, gdn2.head_dim_v, TINY["n_layers"]
    assert state_bytes(gdn2) == 4 * L * (H * dk * dv + 3 * H * (2 * dk + dv))
    assert state_bytes(gdn2, batch=3) == 3 * state_bytes(gdn2)
    kda, bayes = preset_config("kda", **TINY), preset_config("bayes", **TINY)
    assert state_bytes(bayes) - state_bytes(kda) == 4 * L * H * dk * dk
    attn = preset_config("gdn", **{**TINY, "hybrid_ratio": "0:1"})
    assert state_bytes(attn) == 4 * L * 2 * TINY["window"] * TINY["d_model"]
    carve = preset_config("carve", **TINY)
    assert state_bytes(carve) - state_bytes(gdn2) == 4 * L * 2 * H * dv


@pytest.mark.parametrize("fn,arg,value", [(flops_per_token, "seq_len", 0), (state_bytes, "batch", -2)],
                         ids=["seq_len-0", "batch-negative"])
def test_bad_arguments(fn, arg, value):
    with pytest.raises(ValueError, match=rf"{arg}={value} must be a positive integer"):
        fn(preset_config("kda"), **{arg: value})
