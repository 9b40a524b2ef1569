"""The SwiGLU block."""
import torch
from torch.nn import functional as F

from carvelab.carve_models import ModelConfig, SwiGLU


def test_swiglu_formula_and_width():
    cfg = ModelConfig(d_model=24, n_heads=2, mlp_hidden=40)
    mlp = SwiGLU(cfg)
    assert sum(p.numel() for p in mlp.parameters()) == 3 * 24 * 40
    x = torch.randn(2, 5, 24)
    expected = (F.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T
    torch.testing.assert_close(mlp(x), expected)


def test_default_width_is_eight_thirds_rounded_up_to_32():
    assert ModelConfig(d_model=64, n_heads=2).mlp_width == 192  # 170 -> 192
