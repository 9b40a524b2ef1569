"""RMSNorm and the gated RMSNorm on the mixer output.

    RMSNorm(x)          = x / sqrt(mean(x²) + eps) ⊙ weight
    GatedRMSNorm(x, z)  = RMSNorm(x) ⊙ silu(z)

Both normalise over the last axis and compute in fp32 (the result is cast back to the
input's dtype), so a bf16 autocast region does not lose the statistics. A norm built with
``feeds_matmul=True`` (the blocks' pre-norms and the final norm, whose outputs only enter
projections) returns the dtype those products run in instead (``matmul_dtype``: bf16 under
a bf16 autocast): the values every projection would cast to anyway, cast once rather than
once per projection (and each projection's gradient summed in that dtype, not cast back
one by one).

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


def matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a product reading x runs in: the autocast dtype where autocast is on for
    x's device, else x's own."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis. x: [..., dim] -> [..., dim], x's dtype out
    (``matmul_dtype(x)`` with ``feeds_matmul``)."""

    def __init__(self, dim: int, eps: float = 1e-6, recurrence: RecurrenceOptions | None = None,
                 feeds_matmul: bool = False) -> None:
        super().__init__()
        self.eps, self.recurrence, self.feeds_matmul = eps, recurrence, feeds_matmul
        self.weight = nn.Parameter(torch.ones(dim))

    def _fused(self, x: torch.Tensor) -> bool:
        """Whether this call runs on ``triton_norm`` (see the module docstring)."""
        return self.recurrence is not None and fused_norm_enabled() and on_triton(self.recurrence, x.device)

    def special_inits(self) -> dict:
        return {"weight": _ones}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = matmul_dtype(x) if self.feeds_matmul else x.dtype
        if self._fused(x):
            return rms_norm(x, self.weight, self.eps, out_dtype=out)
        return self._normed(x).to(out)

    def _normed(self, x: torch.Tensor) -> torch.Tensor:
        """x / sqrt(mean(x²) + eps) ⊙ weight in fp32 (the torch path)."""
        xf = x.float()
        return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()


class GatedRMSNorm(RMSNorm):
    """RMSNorm(x) ⊙ silu(gate), per head: x, gate [..., dim] with one weight [dim]
    shared by all heads (the norm runs over each head's dim channels)."""

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self._fused(x):
            return rms_norm(x, self.weight, self.eps, gate)
        return (self._normed(x) * F.silu(gate.float())).to(x.dtype)
