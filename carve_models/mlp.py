"""The SwiGLU feed-forward block: down(silu(gate(x)) ⊙ up(x)).

x: [B, T, d_model] -> [B, T, d_model]; hidden width ``cfg.mlp_width``; no biases, so
the block holds 3 · d_model · mlp_width parameters.

Where ``CARVELAB_JOINT_PROJ=1`` (default 0; ``kernels.fused.joint_proj_enabled``) and the
model's recurrence runs on Triton, gate and up are one matmul against the two weights stacked,
and silu(gate) ⊙ up one Triton kernel each way (``kernels/triton_swiglu.py``): the same map.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from carvelab.carve_models.config import ModelConfig
from carvelab.kernels.fused import joint_proj_enabled, on_triton, swiglu


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.recurrence = cfg.recurrence
        self.gate_proj = nn.Linear(cfg.d_model, cfg.mlp_width, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.mlp_width, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_width, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if joint_proj_enabled() and on_triton(self.recurrence, x.device):
            h = F.linear(x, torch.cat([self.gate_proj.weight, self.up_proj.weight]))
            return self.down_proj(swiglu(h))
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
