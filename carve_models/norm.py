"""RMSNorm and the gated RMSNorm on the mixer output.

    RMSNorm(x)          = x / sqrt(mean(x²) + eps) ⊙ weight
    GatedRMSNorm(x, z)  = RMSNorm(x) ⊙ silu(z)

Both normalise over the last axis and compute in fp32 (the result is cast back to the
input's dtype), so a bf16 autocast region does not lose the statistics.

Built with a model's ``recurrence`` (its ``RecurrenceOptions``), a norm runs on the Triton
kernels of ``kernels/triton_norm.py`` (one launch each way) where ``CARVELAB_FUSED_NORM=1``
(the default; ``kernels.fused.fused_norm_enabled``) and that recurrence runs on Triton: the
same maps, fp32 inside. Without ``recurrence`` (a norm on its own) it stays on torch ops.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from carvelab.kernels.fused import fused_norm_enabled, on_triton, rms_norm
from carvelab.kernels.options import RecurrenceOptions


def _ones(p: torch.Tensor, generator=None) -> None:
    p.fill_(1.0)


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis. x: [..., dim] -> [..., dim]."""

    def __init__(self, dim: int, eps: float = 1e-6, recurrence: RecurrenceOptions | None = None) -> None:
        super().__init__()
        self.eps, self.recurrence = eps, recurrence
        self.weight = nn.Parameter(torch.ones(dim))

    def _fused(self, x: torch.Tensor) -> bool:
        """Whether this call runs on ``triton_norm`` (see the module docstring)."""
        return self.recurrence is not None and fused_norm_enabled() and on_triton(self.recurrence, x.device)

    def special_inits(self) -> dict:
        return {"weight": _ones}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fused(x):
            return rms_norm(x, self.weight, self.eps)
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


class GatedRMSNorm(RMSNorm):
    """RMSNorm(x) ⊙ silu(gate), per head: x, gate [..., dim] with one weight [dim]
    shared by all heads (the norm runs over each head's dim channels)."""

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self._fused(x):
            return rms_norm(x, self.weight, self.eps, gate)
        return (super().forward(x).float() * F.silu(gate.float())).to(x.dtype)
