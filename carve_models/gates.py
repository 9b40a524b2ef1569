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

Gate forms. Each gate kind (``decay``, ``erase_gate``, ``write_gate``: the ModelConfig
fields) has named forms in ``GATE_FORMS``, kind -> name -> an ``nn.Module`` class that
the mixer builds as ``cls(cfg)`` and that has

    width(cfg)  classmethod: gates per head as the kernel gets them, 1 (one per head:
                [B, T, H]) or the width of its axis (dk for a decay, dk / dv for an erase
                gate by ``erase_axis``, dv for a write gate: [B, T, H, width])
    forward(x)  x [B, T, d_model] -> the pre-activation (fp32) in that layout; a decay
                form takes ``forward(x, pre=False)`` and returns the log-decay unless
                ``pre``, and keeps ``A_log`` [H] when it can be a content-gate target

The activations of the erase and write gates (sigmoid, the erase scale), tying and the
noise stay in ``DeltaGates``. A new form is its class plus ``register_gate_form(kind,
name, cls)`` (which also teaches ``kernels.options`` the name, so ``ModelConfig`` accepts
it); costs come from the built layers (``costs``).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from carvelab.carve_models.config import ModelConfig
from carvelab.carve_models.init import apply_special_inits
from carvelab.kernels import options
from carvelab.kernels.fused import decay_gate, fused_gates_enabled, on_triton
from carvelab.kernels.options import ERASE_SCALES

# Write-gate bias at init: sigmoid(0) = 0.5, the mean of a tied beta = sigmoid(N(0, small)),
# so an untied model starts where a tied one does. A constant (not a draw) keeps the
# gate identical between any two presets that have it.
WRITE_GATE_BIAS_INIT = 0.0
NOISE_FLOOR = 1e-4   # r >= 1e-4 keeps c = kᵀP̄k + r away from 0
DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 1e-1, 1e-4
A_INIT_RANGE = (1.0, 16.0)


def content_target_width(cfg: ModelConfig) -> int:
    """Width n of the gate the content gate corrects (its U is [H, n, rank])."""
    kind = "decay" if cfg.content_target == "decay" else "erase_gate"
    return gate_form(kind, getattr(cfg, kind)).width(cfg)


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
    """g = -exp(A_log) · softplus(f_proj(x) + dt_bias), ``width(cfg)`` decays per head; one Triton
    kernel each way (``kernels/triton_gates.py``) where ``CARVELAB_FUSED_GATES=1`` and the
    recurrence runs on Triton.

    ``forward(x, pre=False)`` -> the log-decay g (<= 0) [B, T, H] (width 1) or [B, T, H, n],
    or with ``pre`` its pre-activation ``f + dt_bias`` (what a content gate corrects).
    """

    @classmethod
    def width(cls, cfg: ModelConfig) -> int:
        raise NotImplementedError

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        H = cfg.n_heads
        self.n, self.recurrence = self.width(cfg), cfg.recurrence
        self.f_proj = nn.Linear(cfg.d_model, H * self.n, bias=False)
        self.A_log = nn.Parameter(torch.empty(H))
        self.dt_bias = nn.Parameter(torch.empty(H * self.n))
        apply_special_inits(self)

    def special_inits(self) -> dict:
        return {"A_log": _a_log_init, "dt_bias": _dt_bias_init}

    def forward(self, x: torch.Tensor, pre: bool = False) -> torch.Tensor:
        B, T, _ = x.shape
        if not pre and fused_gates_enabled() and on_triton(self.recurrence, x.device):
            g = decay_gate(self.f_proj(x), self.dt_bias, self.A_log).view(B, T, -1, self.n)  # kernels/triton_gates.py
            return g.squeeze(-1) if self.n == 1 else g
        f = (self.f_proj(x).float() + self.dt_bias.float()).view(B, T, -1, self.n)
        g = f if pre else -torch.exp(self.A_log.float()).view(-1, 1) * F.softplus(f)
        return g.squeeze(-1) if self.n == 1 else g


class ChannelDecay(DecayGate):
    """One decay per key channel (KDA, GDN-2)."""

    @classmethod
    def width(cls, cfg: ModelConfig) -> int:
        return cfg.head_dim_k


class ScalarDecay(DecayGate):
    """One decay per head (Gated DeltaNet)."""

    @classmethod
    def width(cls, cfg: ModelConfig) -> int:
        return 1


class NoDecay(nn.Module):
    """No decay (DeltaNet): g = 0 [B, T, H]; no parameters, nothing for a content gate."""

    @classmethod
    def width(cls, cfg: ModelConfig) -> int:
        return 1

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads

    def forward(self, x: torch.Tensor, pre: bool = False) -> torch.Tensor:
        if pre:
            raise ValueError("decay 'none' has no pre-activation for a content gate to correct")
        return x.new_zeros(x.shape[0], x.shape[1], self.n_heads, dtype=torch.float32)


class ProjectedGate(nn.Linear):
    """An erase or write gate form read off one linear map d_model -> H · width(cfg):
    ``forward(x)`` -> fp32 [B, T, H] (width 1) or [B, T, H, width]."""

    has_bias = False

    @classmethod
    def width(cls, cfg: ModelConfig) -> int:
        raise NotImplementedError

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg.d_model, cfg.n_heads * self.width(cfg), bias=self.has_bias)
        self.n = self.width(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _heads(super().forward(x).float(), self.n)


class ChannelErase(ProjectedGate):
    """b per channel of the erase axis (dk on the key axis, dv on the value axis)."""

    @classmethod
    def width(cls, cfg: ModelConfig) -> int:
        return cfg.head_dim_k if cfg.erase_axis == "key" else cfg.head_dim_v


class HeadErase(ProjectedGate):
    """One beta per head (b = beta · 1)."""

    @classmethod
    def width(cls, cfg: ModelConfig) -> int:
        return 1


class WriteGate(ProjectedGate):
    """A write gate: zero weight and a constant bias at init, so w = sigmoid(WRITE_GATE_BIAS_INIT)."""

    has_bias = True

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        apply_special_inits(self)

    def special_inits(self) -> dict:
        return {"weight": _zeros, "bias": lambda p, generator=None: p.fill_(WRITE_GATE_BIAS_INIT)}


class ScalarWrite(WriteGate):
    """One write gate per head."""

    @classmethod
    def width(cls, cfg: ModelConfig) -> int:
        return 1


class PerValueWrite(WriteGate):
    """One write gate per value channel."""

    @classmethod
    def width(cls, cfg: ModelConfig) -> int:
        return cfg.head_dim_v


GATE_FORMS: dict[str, dict[str, type]] = {
    "decay": {"channel": ChannelDecay, "scalar": ScalarDecay, "none": NoDecay},
    "erase_gate": {"channel": ChannelErase, "head": HeadErase},
    "write_gate": {"scalar": ScalarWrite, "per_value": PerValueWrite},
}


def register_gate_form(kind: str, name: str, cls: type) -> None:
    """Add form ``name`` of gate ``kind`` (one of kernels.options.GATE_KINDS), built by
    ``cls`` (see the module docstring); ModelConfig then accepts ``model.<kind>: <name>``.
    Registering the same class again does nothing; another class under a taken name is
    refused."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and callable(getattr(cls, "width", None))):
        raise TypeError(f"gate form {name!r}: {cls!r} must be an nn.Module class with a width(cfg) classmethod")
    known = GATE_FORMS.get(kind, {}).get(name)
    if known is not None and known is not cls:
        raise ValueError(f"{kind} form {name!r} is already registered ({known.__name__})")
    options.register_gate_form(kind, name)
    GATE_FORMS[kind][name] = cls


def gate_form(kind: str, name: str) -> type:
    """The class of form ``name`` of gate ``kind``; ValueError naming the registered forms."""
    forms = GATE_FORMS.get(kind)
    if forms is None or name not in forms:
        raise ValueError(f"model.{kind}={name!r} has no registered gate form; registered: "
                         f"{sorted(forms) if forms else sorted(GATE_FORMS)}")
    return forms[name]


class DeltaGates(nn.Module):
    """Erase gate b, write gate w and (propagate) observation noise r.

    ``forward(x, erase_pre)`` -> (b, w, r):
        b  [B, T, H] (head) or [B, T, H, dk|dv] (channel); logits if ``erase_pre``
        w  [B, T, H] (scalar) or [B, T, H, dv] (per_value)
        r  [B, T, H] or None
    ``b_proj`` / ``w_proj`` are the ``erase_gate`` / ``write_gate`` forms (``GATE_FORMS``).
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
        erase = gate_form("erase_gate", cfg.erase_gate)
        self.n_b = erase.width(cfg)
        self.r_proj = nn.Linear(d, H, bias=False) if self.propagate else None
        self.b_proj = None if (self.tie and self.propagate) else erase(cfg)
        self.w_proj = None if self.tie else gate_form("write_gate", cfg.write_gate)(cfg)

    def forward(self, x: torch.Tensor, erase_pre: bool = False):
        r = self._noise(x)
        if self.b_proj is None:
            beta = 1.0 / (1.0 + r)
            return (-torch.log(r) if erase_pre else beta), beta, r
        logits = self.b_proj(x)
        gate = torch.sigmoid(logits)
        if self.erase_scale != 1.0:
            gate = self.erase_scale * gate
        w = gate if self.tie else torch.sigmoid(self.w_proj(x))
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
