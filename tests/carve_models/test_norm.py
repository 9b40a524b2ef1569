"""RMSNorm and the gated RMSNorm."""
import torch
from torch.nn import functional as F

from carvelab.carve_models import GatedRMSNorm, RMSNorm


def test_rmsnorm_formula():
    norm = RMSNorm(7, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 7))
    x = torch.randn(3, 5, 7)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)


def test_gated_rmsnorm_is_norm_times_silu_gate():
    norm = GatedRMSNorm(5)
    x, z = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5)
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * F.silu(z)
    torch.testing.assert_close(norm(x, z), expected)
    assert norm.weight.shape == (5,)  # one weight per head channel, shared by the heads
