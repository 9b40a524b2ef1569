"""Depthwise causal short convolution + SiLU, applied to each of q, k and v.

    y_t[c] = silu( Σ_{j=0}^{w-1} W[c, j] · x_{t-(w-1)+j}[c] ),   x_{<0} = 0

x: [B, T, C] -> [B, T, C]. Left zero-padding keeps it causal: y_t only sees x_{≤t}.

``CARVELAB_FUSED_CONV=1`` (the default; ``kernels.fused.fused_conv_enabled``) has the mixer
run its three short convolutions, and q and k's l2norm, on the Triton kernels of
``kernels/triton_conv.py`` (``kernels.fused.short_conv``) wherever its recurrence runs on
Triton: the same maps on the [B, T, C] layout, without the transposes.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from carvelab.carve_models.init import apply_special_inits


class ShortConv(nn.Module):
    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.width = width
        self.weight = nn.Parameter(torch.empty(channels, 1, width))
        apply_special_inits(self)

    def special_inits(self) -> dict:
        # torch's Conv1d default for a depthwise kernel: U(±1/sqrt(fan_in)), fan_in = width.
        bound = 1.0 / math.sqrt(self.width)
        return {"weight": lambda p, generator=None: p.uniform_(-bound, bound, generator=generator)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xt = F.pad(x.transpose(1, 2), (self.width - 1, 0))
        y = F.conv1d(xt, self.weight.to(x.dtype), groups=x.shape[-1])
        return F.silu(y).transpose(1, 2)
