"""Fused recurrent Triton kernels: the gated delta recurrence, one token at a time.

One program per (batch, head, value tile) keeps its slice of the state ``S`` [dk, BV]
in fp32 registers and walks the sequence. One kernel covers both erase axes::

    S̄_t = exp(g_t) ⊙ S_{t-1}               row-wise decay, g_t ∈ R^dk (log, <= 0)
    y_t = S̄_tᵀ a_t                          a_t ∈ R^dk: the read (erase) direction
    δ_t = x_t − β_t ⊙ y_t                   β_t ∈ R^dv (value axis) or β_t = 1 (key axis)
    S_t = S̄_t + u_t δ_tᵀ                    u_t ∈ R^dk: the write direction
    o_t = scale · S_tᵀ q_t

Key axis: ``a = b⊙k``, ``β = 1`` (the asymmetric form, ``u = k`` or the covariance
pass's ``u``). Value axis: ``a = k``, ``β = b``. ``x = w⊙v``. Gates are activated in
torch before the call, so autograd carries their own gradients.

Backward, given ô_t = dL/do_t and dL/dS_T, in two sweeps; no step is ever inverted
(``I − u aᵀ`` can be near singular and ``exp(g)`` tiny):

pass A, reverse time, needs no forward state (δ_t is saved by the forward)::

    dS_t   = dS⁺_t + scale q_t ô_tᵀ           dS⁺_T = dL/dS_T
    dδ_t   = dS_tᵀ u_t         (= dx_t)
    du_t   = dS_t δ_t
    dS̄_t  = dS_t − a_t (β_t ⊙ dδ_t)ᵀ,        dS⁺_{t−1} = D_t dS̄_t,   dS_0 = dS⁺_0

pass B, forward time, parallel over segments of L tokens, each restarted from the state
checkpoint the forward stored at its first token::

    dq_t = scale S_t ô_t,   da_t = −S̄_t (β_t ⊙ dδ_t),   dβ_t = −dδ_t ⊙ y_t

The log-decay gradient needs no kernel. Adding ε to g_t[i] gives the same outputs as
the unperturbed recurrence with, for every τ >= t, u_τ[i] scaled by e^-ε, a_τ[i] and
q_τ[i] by e^ε, and row i of the states by e^ε; hence::

    dg_t = Σ_{τ>=t} (q_τ⊙dq_τ + a_τ⊙da_τ − u_τ⊙du_τ) + rowsum(S_T ⊙ dS_T)

(``decay_grad``), which also holds for the chunked kernels.

Cost: the forward and pass A are sequential over T; pass B has T/L times more
programs. Partial sums over value tiles (dq, da, du) are reduced in torch.
"""
from __future__ import annotations

import logging
from collections import Counter

import torch
import triton
import triton.language as tl

from carvelab.kernels._triton_common import block_size, key_block, matrix_slice_ptr, matrix_tile_ptr
from carvelab.kernels.tuning import autotune, autotune_configs

logger = logging.getLogger(__name__)

# Kernel launches by name, so tests can assert a Triton kernel really ran.
LAUNCHES: Counter = Counter()

# Widest value tile of the recurrent kernels (more tiles = more parallel programs).
MAX_BLOCK_V = 32


@triton.jit
def _offsets(i_b, i_h, t, T, H, K: tl.constexpr, V: tl.constexpr, c0, BK: tl.constexpr, BV: tl.constexpr):
    """Offsets of token t's key row [BK] and value-tile row [BV] in [B, T, H, K|V] tensors.

    Kernels add them to base pointers once and then step the pointers by H*K or H*V per
    token, which keeps integer work out of the time loop."""
    row = (i_b * T + t) * H + i_h
    return row * K + tl.arange(0, BK), row * V + c0 + tl.arange(0, BV)


@autotune(configs=autotune_configs(), key=["BK", "BV", "HAS_BETA"])
@triton.jit
def _recurrent_fwd_kernel(
    q, a, u, x, g, beta, s0, o, delta, s_out, ckpt, T, NS, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, HAS_BETA: tl.constexpr,
):
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    c0 = i_v * BV
    mk = tl.arange(0, BK) < K
    mv = c0 + tl.arange(0, BV) < V
    p_s, m_s = matrix_tile_ptr(s0, i_bh, K, V, c0, BK, BV)
    S = tl.load(p_s, mask=m_s, other=0.0).to(tl.float32)
    p_c, _ = matrix_tile_ptr(ckpt, i_bh * NS, K, V, c0, BK, BV)
    rk, rv = _offsets(i_b, i_h, 0, T, H, K, V, c0, BK, BV)
    p_q, p_a, p_u, p_g = q + rk, a + rk, u + rk, g + rk
    p_x, p_b, p_o, p_d = x + rv, beta + rv, o + rv, delta + rv
    for t in range(T):
        if t % L == 0:
            tl.store(p_c, S, mask=m_s)
            p_c += K * V
        S = S * tl.exp(tl.load(p_g, mask=mk, other=0.0).to(tl.float32))[:, None]
        y = tl.sum(S * tl.load(p_a, mask=mk, other=0.0).to(tl.float32)[:, None], 0)
        if HAS_BETA:
            y = y * tl.load(p_b, mask=mv, other=0.0).to(tl.float32)
        d = tl.load(p_x, mask=mv, other=0.0).to(tl.float32) - y
        S += tl.load(p_u, mask=mk, other=0.0).to(tl.float32)[:, None] * d[None, :]
        out = scale * tl.sum(S * tl.load(p_q, mask=mk, other=0.0).to(tl.float32)[:, None], 0)
        tl.store(p_o, out, mask=mv)
        tl.store(p_d, d, mask=mv)
        p_q, p_a, p_u, p_g = p_q + H * K, p_a + H * K, p_u + H * K, p_g + H * K
        p_x, p_b, p_o, p_d = p_x + H * V, p_b + H * V, p_o + H * V, p_d + H * V
    p_e, _ = matrix_tile_ptr(s_out, i_bh, K, V, c0, BK, BV)
    tl.store(p_e, S, mask=m_s)


@autotune(configs=autotune_configs(), key=["BK", "BV", "HAS_BETA"])
@triton.jit
def _recurrent_bwd_reverse_kernel(
    q, a, u, g, beta, delta, do, ds_out, ddelta, du_part, ds0, T, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, HAS_BETA: tl.constexpr,
):
    """Pass A: reverse scan of dS; writes dδ (= dx), this tile's part of du, and dS_0."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    c0 = i_v * BV
    B = tl.num_programs(1) // H
    mk = tl.arange(0, BK) < K
    mv = c0 + tl.arange(0, BV) < V
    p_s, m_s = matrix_tile_ptr(ds_out, i_bh, K, V, c0, BK, BV)
    dS = tl.load(p_s, mask=m_s, other=0.0).to(tl.float32)
    rk, rv = _offsets(i_b, i_h, T - 1, T, H, K, V, c0, BK, BV)
    p_q, p_a, p_u, p_g = q + rk, a + rk, u + rk, g + rk
    p_du = du_part + i_v * B * T * H * K + rk
    p_b, p_d, p_do, p_dd = beta + rv, delta + rv, do + rv, ddelta + rv
    for _ in range(T):
        qt = tl.load(p_q, mask=mk, other=0.0).to(tl.float32)
        dS += scale * qt[:, None] * tl.load(p_do, mask=mv, other=0.0)[None, :]
        dd = tl.sum(dS * tl.load(p_u, mask=mk, other=0.0).to(tl.float32)[:, None], 0)
        tl.store(p_dd, dd, mask=mv)
        tl.store(p_du, tl.sum(dS * tl.load(p_d, mask=mv, other=0.0)[None, :], 1), mask=mk)
        if HAS_BETA:
            dd = dd * tl.load(p_b, mask=mv, other=0.0).to(tl.float32)
        dS -= tl.load(p_a, mask=mk, other=0.0).to(tl.float32)[:, None] * dd[None, :]
        dS = dS * tl.exp(tl.load(p_g, mask=mk, other=0.0).to(tl.float32))[:, None]
        p_q, p_a, p_u, p_g, p_du = p_q - H * K, p_a - H * K, p_u - H * K, p_g - H * K, p_du - H * K
        p_b, p_d, p_do, p_dd = p_b - H * V, p_d - H * V, p_do - H * V, p_dd - H * V
    p_0, _ = matrix_tile_ptr(ds0, i_bh, K, V, c0, BK, BV)
    tl.store(p_0, dS, mask=m_s)


@autotune(configs=autotune_configs(), key=["BK", "BV", "HAS_BETA"])
@triton.jit
def _recurrent_bwd_forward_kernel(
    q, a, u, x, g, beta, ckpt, do, ddelta, dq_part, da_part, dbeta, T, NS, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, HAS_BETA: tl.constexpr,
):
    """Pass B: one segment re-run from its checkpoint; writes parts of dq, da and dβ."""
    i_v, i_s, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    c0 = i_v * BV
    B = tl.num_programs(2) // H
    mk = tl.arange(0, BK) < K
    mv = c0 + tl.arange(0, BV) < V
    p_c, m_c = matrix_tile_ptr(ckpt, i_bh * NS + i_s, K, V, c0, BK, BV)
    S = tl.load(p_c, mask=m_c, other=0.0)
    t0 = i_s * L
    rk, rv = _offsets(i_b, i_h, t0, T, H, K, V, c0, BK, BV)
    p_q, p_a, p_u, p_g = q + rk, a + rk, u + rk, g + rk
    p_dq, p_da = dq_part + i_v * B * T * H * K + rk, da_part + i_v * B * T * H * K + rk
    p_x, p_b, p_do, p_dd, p_db = x + rv, beta + rv, do + rv, ddelta + rv, dbeta + rv
    for _ in range(t0, tl.minimum(t0 + L, T)):
        S = S * tl.exp(tl.load(p_g, mask=mk, other=0.0).to(tl.float32))[:, None]
        y = tl.sum(S * tl.load(p_a, mask=mk, other=0.0).to(tl.float32)[:, None], 0)
        dd = tl.load(p_dd, mask=mv, other=0.0)
        if HAS_BETA:
            bt = tl.load(p_b, mask=mv, other=0.0).to(tl.float32)
            tl.store(p_db, -dd * y, mask=mv)
            y = y * bt
            dd = dd * bt
        tl.store(p_da, -tl.sum(S * dd[None, :], 1), mask=mk)
        d = tl.load(p_x, mask=mv, other=0.0).to(tl.float32) - y
        S += tl.load(p_u, mask=mk, other=0.0).to(tl.float32)[:, None] * d[None, :]
        tl.store(p_dq, scale * tl.sum(S * tl.load(p_do, mask=mv, other=0.0)[None, :], 1), mask=mk)
        p_q, p_a, p_u, p_g = p_q + H * K, p_a + H * K, p_u + H * K, p_g + H * K
        p_dq, p_da = p_dq + H * K, p_da + H * K
        p_x, p_b, p_do, p_dd, p_db = p_x + H * V, p_b + H * V, p_do + H * V, p_dd + H * V, p_db + H * V


def _blocks(K: int, V: int) -> tuple[int, int, int]:
    BV = block_size(V, MAX_BLOCK_V)
    return key_block(K), BV, triton.cdiv(V, BV)


def recurrent_forward(q, a, u, x, g, beta, s0, scale: float, segment: int):
    """Run the recurrence. q, a, u, g [B, T, H, dk]; x, beta [B, T, H, dv] (beta may be None);
    s0 [B, H, dk, dv] fp32. Returns o [B, T, H, dv] fp32, S_T, δ [B, T, H, dv] and the
    checkpoints [B, H, ceil(T/segment), dk, dv] (state before tokens 0, L, 2L, ...)."""
    B, T, H, K = q.shape
    V = x.shape[-1]
    BK, BV, NV = _blocks(K, V)
    NS = triton.cdiv(T, segment)
    o = torch.empty(B, T, H, V, device=q.device, dtype=torch.float32)
    delta = torch.empty_like(o)
    s_out = torch.empty(B, H, K, V, device=q.device, dtype=torch.float32)
    ckpt = torch.empty(B, H, NS, K, V, device=q.device, dtype=torch.float32)
    _recurrent_fwd_kernel[(NV, B * H)](
        q, a, u, x, g, x if beta is None else beta, s0, o, delta, s_out, ckpt, T, NS, scale,
        H=H, K=K, V=V, L=segment, BK=BK, BV=BV, HAS_BETA=beta is not None,
    )
    LAUNCHES["recurrent_fwd"] += 1
    return o, s_out, delta, ckpt


def recurrent_backward(q, a, u, x, g, beta, delta, ckpt, do, ds_out, scale: float, segment: int):
    """Gradients (dq, da, du, dx, dβ or None, dS_0) of ``recurrent_forward``; see the module
    docstring. do [B, T, H, dv] and ds_out [B, H, dk, dv] are fp32."""
    B, T, H, K = q.shape
    V = x.shape[-1]
    BK, BV, NV = _blocks(K, V)
    NS = ckpt.shape[2]
    dev, f32 = q.device, torch.float32
    ddelta = torch.empty(B, T, H, V, device=dev, dtype=f32)
    du = torch.empty(NV, B, T, H, K, device=dev, dtype=f32)
    ds0 = torch.empty(B, H, K, V, device=dev, dtype=f32)
    has_beta = beta is not None
    beta_arg = x if beta is None else beta
    _recurrent_bwd_reverse_kernel[(NV, B * H)](
        q, a, u, g, beta_arg, delta, do, ds_out, ddelta, du, ds0, T, scale,
        H=H, K=K, V=V, BK=BK, BV=BV, HAS_BETA=has_beta,
    )
    dq = torch.empty(NV, B, T, H, K, device=dev, dtype=f32)
    da = torch.empty_like(dq)
    dbeta = torch.empty(B, T, H, V, device=dev, dtype=f32) if has_beta else ddelta
    _recurrent_bwd_forward_kernel[(NV, NS, B * H)](
        q, a, u, x, g, beta_arg, ckpt, do, ddelta, dq, da, dbeta, T, NS, scale,
        H=H, K=K, V=V, L=segment, BK=BK, BV=BV, HAS_BETA=has_beta,
    )
    LAUNCHES["recurrent_bwd"] += 1
    return dq.sum(0), da.sum(0), du.sum(0), ddelta, dbeta if has_beta else None, ds0


@triton.jit
def _decay_grad_kernel(
    q, dq, a, da, u, du, s_out, ds_out, dg, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BKS: tl.constexpr, BV: tl.constexpr,
):
    """dg for one (batch, head, key slice): suffix sums over time, chunk by chunk in reverse."""
    i_k, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    ck = i_k * BKS + tl.arange(0, BKS)
    mk = ck < K
    # rowsum(S_T ⊙ dS_T) for these key rows: the gradient reaching g through the final state
    carry = tl.zeros([BKS], dtype=tl.float32)
    for c0 in range(0, V, BV):
        p_s, m = matrix_slice_ptr(s_out, i_bh, K, V, i_k * BKS, c0, BKS, BV)
        p_d, _ = matrix_slice_ptr(ds_out, i_bh, K, V, i_k * BKS, c0, BKS, BV)
        carry += tl.sum(tl.load(p_s, mask=m, other=0.0) * tl.load(p_d, mask=m, other=0.0), 1)
    rows = tl.arange(0, BT)
    for i_rev in range(NT):
        t = (NT - 1 - i_rev) * BT + rows
        off = ((i_b * T + t[:, None]) * H + i_h) * K + ck[None, :]
        m = (t[:, None] < T) & mk[None, :]
        acc = tl.load(q + off, mask=m, other=0.0).to(tl.float32) * tl.load(dq + off, mask=m, other=0.0)
        acc += tl.load(a + off, mask=m, other=0.0).to(tl.float32) * tl.load(da + off, mask=m, other=0.0)
        acc -= tl.load(u + off, mask=m, other=0.0).to(tl.float32) * tl.load(du + off, mask=m, other=0.0)
        tl.store(dg + off, tl.cumsum(acc, 0, reverse=True) + carry[None, :], mask=m)
        carry += tl.sum(acc, 0)


def decay_grad(q, dq, a, da, u, du, s_out: torch.Tensor, ds_out: torch.Tensor) -> torch.Tensor:
    """dg [B, T, H, dk] fp32 = suffix-sum over time of q⊙dq + a⊙da − u⊙du, + rowsum(S_T ⊙ dS_T).

    q, a (read direction), u (write direction) and their gradients are [B, T, H, dk];
    s_out, ds_out: S_T and dL/dS_T [B, H, dk, dv] (module docstring). One Triton kernel:
    the products, the suffix sum and the final-state term, with no intermediate tensor.
    """
    q, dq, a, da, u, du = (t.contiguous() for t in (q, dq.float(), a, da.float(), u, du.float()))
    B, T, H, K = q.shape
    V = s_out.shape[-1]
    dg = torch.empty(B, T, H, K, device=q.device, dtype=torch.float32)
    BT, BKS = 64, min(32, key_block(K))
    _decay_grad_kernel[(triton.cdiv(K, BKS), B * H)](
        q, dq, a, da, u, du, s_out.float().contiguous(), ds_out.float().contiguous(), dg, T, triton.cdiv(T, BT),
        H=H, K=K, V=V, BT=BT, BKS=BKS, BV=block_size(V, 64),
    )
    LAUNCHES["decay_grad"] += 1
    return dg
