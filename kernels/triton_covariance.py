"""The propagate-mode covariance pass (P-pass) as Triton kernels, forward and backward.

``P_t`` depends only on k, g and r (never on v or S), so it runs first, sequentially
over time, one program per (batch, head) with P [dk, dk] in fp32 registers::

    P̄_t = D_t P_{t-1} D_t + (I − D_t²)        D_t = Diag(exp(g_t)),  P_0 = I (default)
    a_t = P̄_t k_t,   c_t = k_tᵀ a_t + r_t
    u_t = a_t (1 + r_t) / c_t                 (the write direction of the S recursion)
    P_t = P̄_t − a_t a_tᵀ / c_t

Backward, reverse time with dP (= dL/dP_t, starting at dL/dP_T) and du_t given;
α_t = (1 + r_t)/c_t::

    dα   = a·du
    da   = α du − (dP + dPᵀ) a / c
    dc   = −dα (1 + r)/c² + aᵀ dP a / c²
    dr   = dα / c + dc
    dk   = dc a + P̄ᵀ(da + dc k)             (a = P̄ k and c = kᵀa + r)
    dP̄  = dP + (da + dc k) kᵀ
    dg   = rowsum(dP̄ ⊙ Q) + colsum(dP̄ ⊙ Q) − 2 d² ⊙ diag(dP̄),   Q = D P_{t−1} D
    dP_{t−1} = D dP̄ D

The reverse scan needs P̄_t in reverse order. The update is not inverted (dividing by a
tiny decay, or undoing a rank-one downdate, is unstable): the forward stores P every L
tokens, and the backward re-runs each segment of L tokens from its checkpoint, keeping
its P̄_t in a per-program scratch buffer [L, dk, dk] that the reverse loop then reads.
Memory: T/L checkpoints and one L-token scratch per (batch, head), dk² floats each.
"""
from __future__ import annotations

import logging
from collections import Counter

import torch
import triton
import triton.language as tl

from carvelab.kernels._triton_common import key_block
from carvelab.kernels.tuning import autotune, autotune_configs

logger = logging.getLogger(__name__)

LAUNCHES: Counter = Counter()


@triton.jit
def _square(base, i_mat, K: tl.constexpr, BK: tl.constexpr):
    """Pointers and mask of matrix i_mat of a [..., K, K] tensor as a [BK, BK] tile."""
    rk = tl.arange(0, BK)
    return base + i_mat * K * K + rk[:, None] * K + rk[None, :], (rk[:, None] < K) & (rk[None, :] < K)


@triton.jit
def _predict(P, d, eye):
    """P̄ = D P D + (I − D²); padded channels have d = 1 and stay zero."""
    return d[:, None] * P * d[None, :] + tl.where(eye, (1.0 - d * d)[:, None], 0.0)


@triton.jit
def _load_step(p_k, p_g, p_r, mk):
    """k_t, d_t = exp(g_t) [BK] and r_t (fp32)."""
    kt = tl.load(p_k, mask=mk, other=0.0).to(tl.float32)
    d = tl.exp(tl.load(p_g, mask=mk, other=0.0).to(tl.float32))
    return kt, d, tl.load(p_r).to(tl.float32)


@autotune(configs=autotune_configs(warps=(4, 8, 16)), key=["BK"])
@triton.jit
def _cov_fwd_kernel(
    k, g, r, p0, u, p_out, ckpt, T, NS,
    H: tl.constexpr, K: tl.constexpr, L: tl.constexpr, BK: tl.constexpr,
):
    i_bh = tl.program_id(0)
    i_b, i_h = i_bh // H, i_bh % H
    ri = tl.arange(0, BK)
    mk = ri < K
    eye = ri[:, None] == ri[None, :]
    p_ptr, p_mask = _square(p0, i_bh, K, BK)
    P = tl.load(p_ptr, mask=p_mask, other=0.0).to(tl.float32)
    p_c, _ = _square(ckpt, i_bh * NS, K, BK)
    row = i_b * T * H + i_h
    p_k, p_g, p_u, p_r = k + row * K + ri, g + row * K + ri, u + row * K + ri, r + row
    for t in range(T):
        if t % L == 0:
            tl.store(p_c, P, mask=p_mask)
            p_c += K * K
        kt, d, rt = _load_step(p_k, p_g, p_r, mk)
        Pb = _predict(P, d, eye)
        a = tl.sum(Pb * kt[None, :], 1)
        c = tl.sum(kt * a, 0) + rt
        tl.store(p_u, a * ((1.0 + rt) / c), mask=mk)
        P = Pb - a[:, None] * a[None, :] / c
        p_k, p_g, p_u, p_r = p_k + H * K, p_g + H * K, p_u + H * K, p_r + H
    o_ptr, _ = _square(p_out, i_bh, K, BK)
    tl.store(o_ptr, P, mask=p_mask)


@triton.jit
def _cov_step_bwd(Pb, kt, d, rt, dut, dP, eye):
    """One reverse step (module docstring); returns (dk, dg, dr, dP_{t-1})."""
    a = tl.sum(Pb * kt[None, :], 1)
    c = tl.sum(kt * a, 0) + rt
    alpha = (1.0 + rt) / c
    dalpha = tl.sum(a * dut, 0)
    dPa = tl.sum(dP * a[None, :], 1)
    dPta = tl.sum(dP * a[:, None], 0)
    dc = (tl.sum(a * dPa, 0) - dalpha * (1.0 + rt)) / (c * c)
    dr = dalpha / c + dc
    da = alpha * dut - (dPa + dPta) / c + dc * kt
    dk = dc * a + tl.sum(Pb * da[:, None], 0)
    dPb = dP + da[:, None] * kt[None, :]
    Q = Pb - tl.where(eye, (1.0 - d * d)[:, None], 0.0)
    diag = tl.sum(tl.where(eye, dPb, 0.0), 1)
    dg = tl.sum(dPb * Q, 1) + tl.sum(dPb * Q, 0) - 2.0 * d * d * diag
    return dk, dg, dr, d[:, None] * dPb * d[None, :]


@autotune(configs=autotune_configs(warps=(4, 8, 16)), key=["BK"])
@triton.jit
def _cov_bwd_kernel(
    k, g, r, du, ckpt, dp_out, scratch, dk, dg, dr, dp0, T, NS,
    H: tl.constexpr, K: tl.constexpr, L: tl.constexpr, BK: tl.constexpr,
):
    i_bh = tl.program_id(0)
    i_b, i_h = i_bh // H, i_bh % H
    ri = tl.arange(0, BK)
    mk = ri < K
    eye = ri[:, None] == ri[None, :]
    s_base = scratch + i_bh * L * BK * BK + ri[:, None] * BK + ri[None, :]
    o_ptr, p_mask = _square(dp_out, i_bh, K, BK)
    dP = tl.load(o_ptr, mask=p_mask, other=0.0).to(tl.float32)
    for i_rev in range(NS):
        i_s = NS - 1 - i_rev
        t0 = i_s * L
        t1 = tl.minimum(t0 + L, T)
        c_ptr, _ = _square(ckpt, i_bh * NS + i_s, K, BK)
        P = tl.load(c_ptr, mask=p_mask, other=0.0)
        row = (i_b * T + t0) * H + i_h
        p_k, p_g, p_r, p_s = k + row * K + ri, g + row * K + ri, r + row, s_base
        for _ in range(t0, t1):  # re-run the segment, keeping every P̄_t
            kt, d, rt = _load_step(p_k, p_g, p_r, mk)
            Pb = _predict(P, d, eye)
            tl.store(p_s, Pb)
            a = tl.sum(Pb * kt[None, :], 1)
            P = Pb - a[:, None] * a[None, :] / (tl.sum(kt * a, 0) + rt)
            p_k, p_g, p_r, p_s = p_k + H * K, p_g + H * K, p_r + H, p_s + BK * BK
        tl.debug_barrier()  # the scratch written above is read by other threads below
        row = (i_b * T + t1 - 1) * H + i_h
        p_k, p_g, p_r, p_du = k + row * K + ri, g + row * K + ri, r + row, du + row * K + ri
        p_dk, p_dg, p_dr = dk + row * K + ri, dg + row * K + ri, dr + row
        for _ in range(t0, t1):
            p_s -= BK * BK
            kt, d, rt = _load_step(p_k, p_g, p_r, mk)
            dut = tl.load(p_du, mask=mk, other=0.0).to(tl.float32)
            dkt, dgt, drt, dP = _cov_step_bwd(tl.load(p_s), kt, d, rt, dut, dP, eye)
            tl.store(p_dk, dkt, mask=mk)
            tl.store(p_dg, dgt, mask=mk)
            tl.store(p_dr, drt)
            p_k, p_g, p_r, p_du = p_k - H * K, p_g - H * K, p_r - H, p_du - H * K
            p_dk, p_dg, p_dr = p_dk - H * K, p_dg - H * K, p_dr - H
        tl.debug_barrier()  # all reads of this segment's scratch precede the next rewrite
    z_ptr, _ = _square(dp0, i_bh, K, BK)
    tl.store(z_ptr, dP, mask=p_mask)


def covariance_forward(k, g, r, p0, segment: int):
    """k, g [B, T, H, dk]; r [B, T, H]; p0 [B, H, dk, dk] fp32.

    Returns u [B, T, H, dk] fp32, P_T [B, H, dk, dk] fp32 and the checkpoints
    [B, H, ceil(T/segment), dk, dk] (P before tokens 0, L, 2L, ...)."""
    B, T, H, K = k.shape
    NS = triton.cdiv(T, segment)
    u = torch.empty(B, T, H, K, device=k.device, dtype=torch.float32)
    p_out = torch.empty(B, H, K, K, device=k.device, dtype=torch.float32)
    ckpt = torch.empty(B, H, NS, K, K, device=k.device, dtype=torch.float32)
    _cov_fwd_kernel[(B * H,)](k, g, r, p0, u, p_out, ckpt, T, NS, H=H, K=K, L=segment, BK=key_block(K))
    LAUNCHES["covariance_fwd"] += 1
    return u, p_out, ckpt


def covariance_backward(k, g, r, ckpt, du, dp_out, segment: int):
    """Gradients (dk, dg, dr, dP_0) of ``covariance_forward`` given du and dL/dP_T (fp32)."""
    B, T, H, K = k.shape
    NS, BK = ckpt.shape[2], key_block(K)
    dev, f32 = k.device, torch.float32
    scratch = torch.empty(B * H, segment, BK, BK, device=dev, dtype=f32)
    dk = torch.empty(B, T, H, K, device=dev, dtype=f32)
    dg = torch.empty_like(dk)
    dr = torch.empty(B, T, H, device=dev, dtype=f32)
    dp0 = torch.empty(B, H, K, K, device=dev, dtype=f32)
    _cov_bwd_kernel[(B * H,)](
        k, g, r, du, ckpt, dp_out, scratch, dk, dg, dr, dp0, T, NS, H=H, K=K, L=segment, BK=BK,
    )
    LAUNCHES["covariance_bwd"] += 1
    return dk, dg, dr, dp0
