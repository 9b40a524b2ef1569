"""Causal sliding-window attention with rotary position embeddings.

x [B, T, d_model] -> [B, T, d_model], ``n_heads`` heads of hd = d_model / n_heads.
Token t attends to tokens s with ``t - window < s <= t`` (``window`` tokens including
itself). RoPE (rotate-half form, frequencies theta^(-2i/hd), i < hd/2) rotates q and k
by the absolute position; the attention itself is
``scaled_dot_product_attention`` with an explicit boolean mask (True = may attend).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from carvelab.carve_models.config import ModelConfig


def rope_angles(T: int, head_dim: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of the rotation angles t · theta^(-2i/hd): each [T, 1, hd/2] fp32."""
    half = head_dim // 2
    inv_freq = theta ** (-torch.arange(half, dtype=torch.float32, device=device) / half)
    angles = torch.arange(T, dtype=torch.float32, device=device)[:, None] * inv_freq[None]
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x_i, x_{i+hd/2}) of x [B, T, H, hd] by the given angles."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.to(x.dtype)


def sliding_window_mask(T: int, window: int, device=None) -> torch.Tensor:
    """[T, T] bool: entry (t, s) is True iff t - window < s <= t."""
    t = torch.arange(T, device=device)
    lag = t[:, None] - t[None, :]
    return (lag >= 0) & (lag < window)


class SlidingWindowAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        d = cfg.d_model
        self.head_dim = d // cfg.n_heads
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, d_model] -> [B, T, d_model]."""
        B, T, d = x.shape
        H = self.cfg.n_heads
        cos, sin = rope_angles(T, self.head_dim, self.cfg.rope_theta, x.device)
        q = apply_rope(self.q_proj(x).view(B, T, H, -1), cos, sin)
        k = apply_rope(self.k_proj(x).view(B, T, H, -1), cos, sin)
        v = self.v_proj(x).view(B, T, H, -1)
        mask = sliding_window_mask(T, self.cfg.window, x.device)
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
        )
        return self.o_proj(o.transpose(1, 2).reshape(B, T, d))
