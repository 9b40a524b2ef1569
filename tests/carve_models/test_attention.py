"""Sliding-window attention and RoPE against a naive token loop."""
import math

import pytest
import torch

from carvelab.carve_models import ModelConfig, SlidingWindowAttention
from carvelab.carve_models.attention import apply_rope, rope_angles, sliding_window_mask


def _rope_complex(x, theta):
    """RoPE as complex rotation of the pairs (x_i, x_{i+hd/2}) by e^{i·t·theta^(-2i/hd)}."""
    B, T, H, hd = x.shape
    half = hd // 2
    z = torch.complex(x[..., :half].double(), x[..., half:].double())
    freq = theta ** (-torch.arange(half, dtype=torch.float64) / half)
    rot = torch.polar(torch.ones(T, half, dtype=torch.float64), torch.arange(T, dtype=torch.float64)[:, None] * freq)
    z = z * rot[None, :, None]
    return torch.cat((z.real, z.imag), -1)


def _naive_attention(layer, x):
    B, T, d = x.shape
    H, hd, W = layer.cfg.n_heads, layer.head_dim, layer.cfg.window
    x = x.double()
    q = _rope_complex((x @ layer.q_proj.weight.double().T).view(B, T, H, hd), layer.cfg.rope_theta)
    k = _rope_complex((x @ layer.k_proj.weight.double().T).view(B, T, H, hd), layer.cfg.rope_theta)
    v = (x @ layer.v_proj.weight.double().T).view(B, T, H, hd)
    o = torch.zeros(B, T, H, hd, dtype=torch.float64)
    for t in range(T):
        lo = max(0, t - W + 1)
        scores = torch.einsum("bhd,bshd->bhs", q[:, t], k[:, lo:t + 1]) / math.sqrt(hd)
        o[:, t] = torch.einsum("bhs,bshd->bhd", scores.softmax(-1), v[:, lo:t + 1])
    return o.reshape(B, T, d) @ layer.o_proj.weight.double().T


@pytest.mark.parametrize("T,window", [(13, 5), (21, 1), (9, 32)], ids=["T13-w5", "T21-w1", "T9-w32"])
def test_matches_naive_window_loop(T, window):
    layer = SlidingWindowAttention(ModelConfig(d_model=24, n_heads=3, window=window, rope_theta=500.0))
    x = torch.randn(2, T, 24)
    with torch.no_grad():
        torch.testing.assert_close(layer(x).double(), _naive_attention(layer, x), rtol=1e-5, atol=1e-6)


def test_mask_counts_window_including_self():
    mask = sliding_window_mask(6, 3)
    assert mask.sum(-1).tolist() == [1, 2, 3, 3, 3, 3]
    assert mask[4].tolist() == [False, False, True, True, True, False]


def test_rope_scores_depend_on_offset_only():
    q, k = torch.randn(1, 1, 1, 8).expand(1, 20, 1, 8), torch.randn(1, 1, 1, 8).expand(1, 20, 1, 8)
    cos, sin = rope_angles(20, 8, 10000.0)
    rq, rk = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    s1 = (rq[0, 7, 0] * rk[0, 3, 0]).sum()
    s2 = (rq[0, 15, 0] * rk[0, 11, 0]).sum()
    torch.testing.assert_close(s1, s2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
