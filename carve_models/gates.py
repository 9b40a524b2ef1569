"""The mixer's gates: log-decay, erase / write gates, observation noise, content gate.

All gates are computed in fp32. Per token and head (DESIGN §2):

    decay    g = -exp(A_log) · softplus(f + dt_bias)     f = W_f x ∈ R^dk (channel) or R (scalar)
    erase    b = s · sigmoid(W_b x)  per channel of the erase axis (dk or dv), or one beta per
             head; s = 1 (eigen_range "[0,1]") or 2 ("[-1,1]", kernels.options.ERASE_SCALES)
    write    w = sigmoid(W_w x + c) per value channel or per head; W_w = 0 at init, c a constant
    noise    r = softplus(W_r x) + 1e-4                  (covariance "propagate")
    tied     w = beta (so w ∈ (0, 2) too with "[-1,1]", as in fla's allow_neg_eigval);
             with "propagate" beta = 1/(1+r)   (the exact Kalman gain)

Where a content gate targets a gate, the mixer hands the kernel that gate's
*pre-activation* (``b``: the logits; ``g``: ``f + dt_bias``) so the kernel can add the
chunk's correction before the nonlinearity.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from carvelab.carve_models.config import ModelConfig
from carvelab.carve_models.init import apply_special_inits
from carvelab.kernels.options import ERASE_SCALES

# Write-gate bias at init: sigmoid(0) = 0.5, the mean of a tied beta = sigmoid(N(0, small)),
# so an untied model starts where a tied one does. A constant (not a draw) keeps the
# gate identical between any two presets that have it.
WRITE_GATE_BIAS_INIT = 0.0
NOISE_FLOOR = 1e-4   # r >= 1e-4 keeps c = kᵀP̄k + r away from 0
DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 1e-1, 1e-4
A_INIT_RANGE = (1.0, 16.0)


def erase_width(cfg: ModelConfig) -> int:
    """Erase gates per head: 1 (one beta per head), dk (key axis) or dv (value axis)."""
    if cfg.erase_gate == "head":
        return 1
    return cfg.head_dim_k if cfg.erase_axis == "key" else cfg.head_dim_v


def content_target_width(cfg: ModelConfig) -> int:
    """Width n of the gate the content gate corrects (its U is [H, n, rank])."""
    if cfg.content_target == "decay":
        return cfg.head_dim_k if cfg.decay == "channel" else 1
    return erase_width(cfg)


def _a_log_init(p: torch.Tensor, generator=None) -> None:
    """A_log = log(A), A ~ U(1, 16) per head."""
    p.uniform_(*A_INIT_RANGE, generator=generator).log_()


def _dt_bias_init(p: torch.Tensor, generator=None) -> None:
    """dt ~ exp(U(log 1e-3, log 1e-1)); dt_bias = softplus⁻¹(dt) = dt + log(1 - exp(-dt))."""
    p.uniform_(math.log(DT_MIN), math.log(DT_MAX), generator=generator).exp_().clamp_(min=DT_FLOOR)
    p.add_(torch.log(-torch.expm1(-p)))


def _zeros(p: torch.Tensor, generator=None) -> None:
    p.zero_()


class DecayGate(nn.Module):
    """g = -exp(A_log) · softplus(f_proj(x) + dt_bias).

    ``pre(x)`` -> [B, T, H, n] fp32 with n = dk (channel) or 1 (scalar);
    ``activate(pre)`` -> the log-decay g (<= 0) of the same shape.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        H = cfg.n_heads
        self.n = cfg.head_dim_k if cfg.decay == "channel" else 1
        self.f_proj = nn.Linear(cfg.d_model, H * self.n, bias=False)
        self.A_log = nn.Parameter(torch.empty(H))
        self.dt_bias = nn.Parameter(torch.empty(H * self.n))
        apply_special_inits(self)

    def special_inits(self) -> dict:
        return {"A_log": _a_log_init, "dt_bias": _dt_bias_init}

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return (self.f_proj(x).float() + self.dt_bias.float()).view(B, T, -1, self.n)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return -torch.exp(self.A_log.float()).view(-1, 1) * F.softplus(pre)


class DeltaGates(nn.Module):
    """Erase gate b, write gate w and (propagate) observation noise r.

    ``forward(x, erase_pre)`` -> (b, w, r):
        b  [B, T, H] (head) or [B, T, H, dk|dv] (channel); logits if ``erase_pre``
        w  [B, T, H] (scalar) or [B, T, H, dv] (per_value)
        r  [B, T, H] or None
    With ``tie_gates`` and ``propagate`` there is no erase projection: beta = 1/(1+r),
    whose logit is -log r (sigmoid(-log r) = 1/(1+r)). With ``tie_gates`` and a content
    gate on the erase gate, w is beta *before* the chunk's correction: the correction is
    applied inside the kernel and modulates what is erased, not what is written. The
    logits handed to a content gate are unscaled; the kernel applies ``erase_scale``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        H, d = cfg.n_heads, cfg.d_model
        self.tie = cfg.tie_gates
        self.propagate = cfg.covariance == "propagate"
        self.erase_scale = ERASE_SCALES[cfg.eigen_range]
        self.n_b = erase_width(cfg)
        self.n_w = 1 if cfg.write_gate == "scalar" else cfg.head_dim_v
        self.r_proj = nn.Linear(d, H, bias=False) if self.propagate else None
        self.b_proj = None if (self.tie and self.propagate) else nn.Linear(d, H * self.n_b, bias=False)
        self.w_proj = None if self.tie else nn.Linear(d, H * self.n_w, bias=True)
        apply_special_inits(self)

    def special_inits(self) -> dict:
        if self.w_proj is None:
            return {}
        # Zero weight and a constant bias: w = sigmoid(WRITE_GATE_BIAS_INIT) for every token.
        return {"w_proj.weight": _zeros, "w_proj.bias": lambda p, generator=None: p.fill_(WRITE_GATE_BIAS_INIT)}

    def forward(self, x: torch.Tensor, erase_pre: bool = False):
        r = self._noise(x)
        if self.b_proj is None:
            beta = 1.0 / (1.0 + r)
            return (-torch.log(r) if erase_pre else beta), beta, r
        logits = _heads(self.b_proj(x).float(), self.n_b)
        gate = torch.sigmoid(logits)
        if self.erase_scale != 1.0:
            gate = self.erase_scale * gate
        w = gate if self.tie else torch.sigmoid(_heads(self.w_proj(x).float(), self.n_w))
        return (logits if erase_pre else gate), w, r

    def _noise(self, x: torch.Tensor):
        if self.r_proj is None:
            return None
        return F.softplus(self.r_proj(x).float()) + NOISE_FLOOR


class ContentParams(nn.Module):
    """CARVE's per-head low-rank map Δ_c = U_h (V_h m_c).

    U [H, n, rank] = 0 at init (the branch is inert yet receives gradient through U);
    V [H, rank, dv] ~ N(0, 1/dv) (fan-in scaling), so V m is O(1) for m with O(1)
    entries whatever dv is.
    """

    def __init__(self, n_heads: int, n_target: int, rank: int, dv: int) -> None:
        super().__init__()
        self.dv = dv
        self.U = nn.Parameter(torch.empty(n_heads, n_target, rank))
        self.V = nn.Parameter(torch.empty(n_heads, rank, dv))
        apply_special_inits(self)

    def special_inits(self) -> dict:
        std = self.dv ** -0.5
        return {"U": _zeros, "V": lambda p, generator=None: p.normal_(0.0, std, generator=generator)}


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """[B, T, H*n] -> [B, T, H] when n == 1 (one gate per head), else [B, T, H, n]."""
    B, T, _ = x.shape
    return x.view(B, T, -1) if n == 1 else x.view(B, T, -1, n)
