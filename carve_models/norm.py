"""RMSNorm and the gated RMSNorm on the mixer output.

    RMSNorm(x)          = x / sqrt(mean(x²) + eps) ⊙ weight
    GatedRMSNorm(x, z)  = RMSNorm(x) ⊙ silu(z)

Both normalise over the last axis and compute in fp32 (the result is cast back to the
input's dtype), so a bf16 autocast region does not lose the statistics.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _ones(p: torch.Tensor, generator=None) -> None:
    p.fill_(1.0)


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis. x: [..., dim] -> [..., dim]."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def special_inits(self) -> dict:
        return {"weight": _ones}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


class GatedRMSNorm(RMSNorm):
    """RMSNorm(x) ⊙ silu(gate), per head: x, gate [..., dim] with one weight [dim]
    shared by all heads (the norm runs over each head's dim channels)."""

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return (super().forward(x).float() * F.silu(gate.float())).to(x.dtype)
