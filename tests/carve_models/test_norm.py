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


def test_a_norm_feeding_matmuls_returns_their_dtype_under_autocast():
    norm, x = RMSNorm(8, feeds_matmul=True), torch.randn(3, 8)
    assert norm(x).dtype == torch.float32  # no autocast: x's dtype
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x)
        assert y.dtype == torch.bfloat16 and RMSNorm(8)(x).dtype == torch.float32
    torch.testing.assert_close(y, RMSNorm(8)(x).to(torch.bfloat16), rtol=0, atol=0)


def test_norms_feeding_matmuls_leave_the_model_under_autocast_unchanged():
    # the projections would cast the norm's fp32 output to bf16 anyway: casting it once in the
    # norm gives the same logits bit for bit, and gradients equal to bf16 rounding
    from carvelab.carve_models.lm import HybridLM
    from carvelab.carve_models.presets import preset_config

    cfg = preset_config("gdn2", d_model=32, n_layers=2, n_heads=2, vocab_size=16, chunk_size=16, hybrid_ratio="1:1")
    torch.manual_seed(0)
    net, ids = HybridLM(cfg), torch.randint(0, 16, (2, 16))
    norms = [m for m in net.modules() if isinstance(m, RMSNorm) and m.feeds_matmul]
    assert len(norms) == 2 * cfg.n_layers + 1  # the blocks' two pre-norms and the final norm
    outs = []
    for on in (True, False):
        for m in norms:
            m.feeds_matmul = on
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = net(ids)
        logits.float().square().mean().backward()
        outs.append((logits.detach(), [p.grad.clone() for p in net.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=0)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-3)
