"""``GatedDeltaMixer``: one layer of the gated delta-rule family (DESIGN §2).

x [B, T, d_model] -> y [B, T, d_model]:

    q, k = l2norm(silu(conv(W_q x))), l2norm(silu(conv(W_k x)))      [B, T, H, dk]
    v    = silu(conv(W_v x))                                           [B, T, H, dv]
    g, b, w, r  see ``carvelab.carve_models.gates``
    o    = gated_delta(q, k, v, g, b, w, r, cfg.recurrence)           [B, T, H, dv]
    y    = W_o (RMSNorm(o) ⊙ silu(W_z x))                              (per head)

The recurrence runs only through ``carvelab.kernels.dispatch.gated_delta`` with the
model's ``RecurrenceOptions`` (``cfg.recurrence``: erase axis, covariance, chunk size,
backend, precision). The decay and the erase / write gates are the config's gate forms
(``gates.GATE_FORMS``). With the content gate on, the target gate goes to the kernel as
its pre-activation together with ``ContentGate(U, V, target, A_log)``.

A note on exactness: with ``init: matched`` the ``gdn2`` and ``carve`` presets differ
only by the (inert) content gate, so their outputs agree bit for bit when the kernel's
activation of a zero-corrected gate equals this layer's whole-tensor activation. On CPU
torch evaluates ``exp`` in a vector body and a scalar tail that can differ by one ulp:
the torch chunked path takes zero-corrected gates from one whole-tensor activation and
so matches at any width; the reference activates one token at a time and matches when
the per-token gate tensor (B·H·n values) is a multiple of 32 long.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from carvelab.carve_models.config import ModelConfig
from carvelab.carve_models.conv import ShortConv
from carvelab.carve_models.gates import ContentParams, DeltaGates, content_target_width, gate_form
from carvelab.carve_models.norm import GatedRMSNorm
from carvelab.kernels import ContentGate
from carvelab.kernels.dispatch import gated_delta
from carvelab.kernels.fused import fused_conv_enabled, joint_proj_enabled, on_triton, short_convs

L2_EPS = 1e-6


def l2norm(x: torch.Tensor, eps: float = L2_EPS) -> torch.Tensor:
    """x / sqrt(Σ x² + eps) over the last axis, in fp32."""
    x = x.float()
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


class GatedDeltaMixer(nn.Module):
    """The recurrent mixer of layer ``layer_idx``; see the module docstring.

    Built on its own it holds torch's default inits plus the special ones (A_log, dt_bias,
    zero write-gate weight, U = 0); ``HybridLM`` re-initialises it by ``cfg.init``."""

    def __init__(self, cfg: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        H, d, dk, dv = cfg.n_heads, cfg.d_model, cfg.head_dim_k, cfg.head_dim_v
        self.q_proj = nn.Linear(d, H * dk, bias=False)
        self.k_proj = nn.Linear(d, H * dk, bias=False)
        self.v_proj = nn.Linear(d, H * dv, bias=False)
        self.q_conv = ShortConv(H * dk, cfg.conv_size)
        self.k_conv = ShortConv(H * dk, cfg.conv_size)
        self.v_conv = ShortConv(H * dv, cfg.conv_size)
        self.recurrence = cfg.recurrence
        self.decay = gate_form("decay", cfg.decay)(cfg)
        self.gates = DeltaGates(cfg)
        self.content = (
            ContentParams(H, content_target_width(cfg), cfg.content_rank, dv) if cfg.content_gate else None
        )
        self.gate_proj = nn.Linear(d, H * dv, bias=False)
        self.o_norm = GatedRMSNorm(dv, eps=cfg.norm_eps, recurrence=cfg.recurrence)
        self.o_proj = nn.Linear(H * dv, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, d_model] -> [B, T, d_model]."""
        xq, xk, xv, z = self._projections(x)
        q, k, v = self._qkv(xq, xk, xv)
        g, b, w, r, content = self._gates(x)
        out = gated_delta(q, k, v, g, b, w, r, self.recurrence, content=content)
        return self._output(out.o, z, x.dtype)

    def _projections(self, x: torch.Tensor):
        """(W_q x, W_k x, W_v x, W_z x), each [B, T, *]: one matmul against the four weights
        stacked where the joint projection is on (``CARVELAB_JOINT_PROJ=1`` and a recurrence on
        Triton; the four are then column slices of one tensor, which the fused convolution and
        norm read in place), else one matmul each."""
        maps = (self.q_proj, self.k_proj, self.v_proj, self.gate_proj)
        if joint_proj_enabled() and on_triton(self.recurrence, x.device):
            weight = torch.cat([m.weight for m in maps])
            return F.linear(x, weight).split([m.out_features for m in maps], -1)
        return tuple(m(x) for m in maps)

    def _qkv(self, xq: torch.Tensor, xk: torch.Tensor, xv: torch.Tensor):
        """The projections through their short convolutions (q, k also l2-normalised per head)."""
        B, T, _ = xq.shape
        H = self.cfg.n_heads
        if self._fused_conv(xq):  # kernels/triton_conv.py: the same maps, contiguous, fp32 inside
            q, k, v = short_convs([(xq, self.q_conv.weight, H), (xk, self.k_conv.weight, H),
                                   (xv, self.v_conv.weight, 0)], L2_EPS)
            return q.view(B, T, H, -1), k.view(B, T, H, -1), v.view(B, T, H, -1)
        q = l2norm(self.q_conv(xq).view(B, T, H, -1))
        k = l2norm(self.k_conv(xk).view(B, T, H, -1))
        v = self.v_conv(xv).view(B, T, H, -1)
        return q, k, v

    def _fused_conv(self, x: torch.Tensor) -> bool:
        """Whether the short convolutions run on ``triton_conv`` (``CARVELAB_FUSED_CONV=1`` and a
        recurrence that runs on Triton)."""
        return fused_conv_enabled() and on_triton(self.recurrence, x.device)

    def _gates(self, x: torch.Tensor):
        """(g, b, w, r, content) for the kernel; the content gate's target stays pre-activation."""
        target = self.cfg.content_target if self.content is not None else None
        b, w, r = self.gates(x, erase_pre=target == "erase")
        g = self.decay(x, pre=target == "decay")
        content = None
        if self.content is not None:
            A_log = self.decay.A_log if target == "decay" else None
            scale = self.gates.erase_scale if target == "erase" else 1.0
            content = ContentGate(self.content.U, self.content.V, target, A_log, erase_scale=scale)
        return g, b, w, r, content

    def _output(self, o: torch.Tensor, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """W_o (RMSNorm(o) ⊙ silu(z)) per head, o cast to the layer input's ``dtype``."""
        B, T, H, dv = o.shape
        y = self.o_norm(o.to(dtype), z.view(B, T, H, dv))
        return self.o_proj(y.reshape(B, T, H * dv))
