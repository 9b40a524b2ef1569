"""The SwiGLU feed-forward block: down(silu(gate(x)) ⊙ up(x)).

x: [B, T, d_model] -> [B, T, d_model]; hidden width ``cfg.mlp_width``; no biases, so
the block holds 3 · d_model · mlp_width parameters.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from carvelab.carve_models.config import ModelConfig


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.mlp_width, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.mlp_width, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_width, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
