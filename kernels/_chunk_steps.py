"""Per-chunk device functions of the chunked WY kernels (derivations: ``triton_chunk``).

Each function does one stage of one chunk for one (batch, head): the parallel kernels of
``triton_chunk`` call them once per program (one chunk each), the fused content-gate
kernels of ``triton_content`` call them chunk after chunk in one program. Sharing them
keeps a chunk's arithmetic the same, bit for bit, on both paths.

Layout helpers: ``_tile`` / ``_put`` / ``_row`` load and store [R, D] tiles of a
[B, TP, H, D] tensor; ``_gated_tile`` forms the read direction a = b ⊙ k on load (b of
width KB = dk, or KB = 1: one erase gate per head and token, broadcast over the keys), so
``a`` is never written to memory and its gradient leaves as dk = da ⊙ b and db = da ⊙ k
(summed over the keys when KB = 1). Likewise it forms x = w ⊙ v (w of width KW = dv or 1;
KW = 0: no gate, v is x itself), and ``_pairs_bwd_chunk`` hands dx on as dv = dx ⊙ w and
dw = dx ⊙ v. Stages, forward: ``_intra_block`` (M and Q of two sub-chunks),
``_solve_chunk`` (the WY inverse A, W = A Ã, A X), ``_state_step`` (Δ, S_C), ``_output_tile``
(o); backward: ``_state_bwd_step`` (dΔ, dS_0), ``_pairs_bwd_chunk`` (dR, dQ, dM),
``_state_terms_chunk`` (the S_0 / dS_C terms of dq, da, du), ``_intra_bwd_sub`` (dq, da, du
of one sub-chunk), ``_decay_grad_chunk`` (dg by the scaling identity).
"""
from __future__ import annotations

import triton
import triton.language as tl

from carvelab.kernels._triton_common import matrix_slice_ptr, round_bf16
from carvelab.kernels._triton_common import mm as _mm

# Sub-chunk length: the span over which pairs are formed elementwise.
BC = 16


@triton.jit
def _tile(base, i_b, t0, i_h, TP, H, D: tl.constexpr, c0, R: tl.constexpr, BD: tl.constexpr):
    """Rows t0..t0+R, columns c0..c0+BD of a [B, TP, H, D] tensor as fp32 (zero past D)."""
    rows = t0 + tl.arange(0, R)
    cols = c0 + tl.arange(0, BD)
    ptr = base + ((i_b * TP + rows[:, None]) * H + i_h) * D + cols[None, :]
    return tl.load(ptr, mask=cols[None, :] < D, other=0.0).to(tl.float32)


@triton.jit
def _put(base, val, i_b, t0, i_h, TP, H, D: tl.constexpr, c0, R: tl.constexpr, BD: tl.constexpr):
    """Store the [R, BD] tile val (fp32) at rows t0.., columns c0.. of a [B, TP, H, D]
    tensor. Into bf16 it is rounded to nearest (``round_bf16``): what compiled code's
    conversion does, and not the interpreter's, which truncates."""
    rows = t0 + tl.arange(0, R)
    cols = c0 + tl.arange(0, BD)
    ptr = base + ((i_b * TP + rows[:, None]) * H + i_h) * D + cols[None, :]
    if base.dtype.element_ty == tl.bfloat16:
        val = round_bf16(val)
    tl.store(ptr, val, mask=cols[None, :] < D)


@triton.jit
def _row(base, i_b, t, i_h, TP, H, D: tl.constexpr, c0, BD: tl.constexpr):
    cols = c0 + tl.arange(0, BD)
    ptr = base + ((i_b * TP + t) * H + i_h) * D + cols
    return tl.load(ptr, mask=cols < D, other=0.0).to(tl.float32)


@triton.jit
def _gated_tile(gate, x, i_b, t0, i_h, TP, H, D: tl.constexpr, KG: tl.constexpr, c0, R: tl.constexpr,
                BD: tl.constexpr):
    """Rows t0..t0+R, columns c0..c0+BD of x ⊙ gate (fp32), x [B, TP, H, D] and the gate
    [B, TP, H, KG]: KG = D (a gate per channel), 1 (one per token, broadcast) or 0 (no
    gate: x itself). a = b ⊙ k is ``_gated_tile(b, k, .., K, KB, ..)``, x = w ⊙ v is
    ``_gated_tile(w, v, .., V, KW, ..)``."""
    xt = _tile(x, i_b, t0, i_h, TP, H, D, c0, R, BD)
    if KG == 0:
        return xt
    if KG == 1:
        return xt * _col(gate, i_b, t0, i_h, TP, H, R)[:, None]
    return xt * _tile(gate, i_b, t0, i_h, TP, H, D, c0, R, BD)


@triton.jit
def _col(base, i_b, t0, i_h, TP, H, R: tl.constexpr):
    """Rows t0..t0+R of a [B, TP, H, 1] tensor (a per-token gate) as an fp32 vector."""
    rows = t0 + tl.arange(0, R)
    return tl.load(base + (i_b * TP + rows) * H + i_h).to(tl.float32)


@triton.jit
def _put_col(base, val, i_b, t0, i_h, TP, H, R: tl.constexpr):
    rows = t0 + tl.arange(0, R)
    tl.store(base + (i_b * TP + rows) * H + i_h, val)


@triton.jit
def _intra_block(
    q, b, k, u, G, M, Qm, i_c, i_i, i_j, i_b, i_h, TP,
    H: tl.constexpr, K: tl.constexpr, KB: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
    PREC: tl.constexpr,
):
    """Block (i, j) of sub-chunks of M and Q of chunk i_c (zero above the diagonal)."""
    t_i, t_j = i_c * BT + i_i * BC, i_c * BT + i_j * BC
    rr = tl.arange(0, BC)
    Mb = tl.zeros([BC, BC], dtype=tl.float32)
    Qb = tl.zeros([BC, BC], dtype=tl.float32)
    if i_i > i_j:
        ref = _row(G, i_b, t_i, i_h, TP, H, K, 0, BK)
        up = tl.exp(_tile(G, i_b, t_i, i_h, TP, H, K, 0, BC, BK) - ref[None, :])
        down = _tile(u, i_b, t_j, i_h, TP, H, K, 0, BC, BK) * tl.exp(ref[None, :] - _tile(G, i_b, t_j, i_h, TP, H, K, 0, BC, BK))
        down = tl.trans(down)
        Mb = _mm(_gated_tile(b, k, i_b, t_i, i_h, TP, H, K, KB, 0, BC, BK) * up, down, PREC)
        Qb = _mm(_tile(q, i_b, t_i, i_h, TP, H, K, 0, BC, BK) * up, down, PREC)
    elif i_i == i_j:
        a_i = _gated_tile(b, k, i_b, t_i, i_h, TP, H, K, KB, 0, BC, BK)
        q_i = _tile(q, i_b, t_i, i_h, TP, H, K, 0, BC, BK)
        G_i = _tile(G, i_b, t_i, i_h, TP, H, K, 0, BC, BK)
        ok = tl.arange(0, BK)
        row = ((i_b * TP + t_i) * H + i_h) * K + ok
        p_u, p_g = u + row, G + row
        for s in range(BC):  # column s of the block: pairs (t, s), t >= s
            keep = rr[:, None] >= s
            gs = tl.load(p_g, mask=ok < K, other=0.0)
            f = tl.where(keep, tl.exp(tl.where(keep, G_i - gs[None, :], 0.0)), 0.0)
            f = f * tl.load(p_u, mask=ok < K, other=0.0).to(tl.float32)[None, :]
            cm = tl.where(rr > s, tl.sum(a_i * f, 1), 0.0)
            cq = tl.sum(q_i * f, 1)
            Mb = tl.where(rr[None, :] == s, cm[:, None], Mb)
            Qb = tl.where(rr[None, :] == s, cq[:, None], Qb)
            p_u, p_g = p_u + H * K, p_g + H * K
    _put(M, Mb, i_b, t_i, i_h, TP, H, BT, i_j * BC, BC, BC)
    _put(Qm, Qb, i_b, t_i, i_h, TP, H, BT, i_j * BC, BC, BC)


@triton.jit
def _inverse_diag_blocks(M, A, i_b, t0, i_h, TP, H, BT: tl.constexpr, BC: tl.constexpr, NC: tl.constexpr):
    """(I + M_ii)^{-1} of every diagonal [BC, BC] block of the chunk, stored into A.

    Forward substitution, one row per step, that row of all NC blocks at once: BC − 1
    dependent steps per chunk instead of NC·(BC − 1)."""
    nb = tl.arange(0, NC)[:, None, None]
    rr = tl.arange(0, BC)[None, :, None]
    cc = tl.arange(0, BC)[None, None, :]
    offs = ((i_b * TP + t0 + nb * BC + rr) * H + i_h) * BT + nb * BC + cc
    Mt = tl.where(rr > cc, tl.load(M + offs), 0.0)
    Ai = tl.where(rr == cc, 1.0, 0.0) + tl.zeros([NC, BC, BC], dtype=tl.float32)
    cols = tl.arange(0, BC)[None, :]
    for i in range(1, BC):
        m_i = tl.sum(tl.where(rr == i, Mt, 0.0), 1)  # [NC, BC]: row i of each block, by column j
        row = tl.where(cols == i, 1.0, 0.0) - tl.sum(m_i[:, :, None] * Ai, 1)  # e_i − Σ_j M[i,j] A[j,:]
        Ai = tl.where(rr == i, row[:, None, :], Ai)
    tl.store(A + offs, Ai)


@triton.jit
def _solve_chunk(
    b, k, w, v, G, M, A, W, XA, i_c, i_b, i_h, TP,
    H: tl.constexpr, K: tl.constexpr, KB: tl.constexpr, V: tl.constexpr, KW: tl.constexpr, BT: tl.constexpr,
    BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NV: tl.constexpr, PREC: tl.constexpr,
):
    """A = (I + M)^{-1} by blocks; W = A (e^G ⊙ a), XA = A X, for chunk i_c.

    Diagonal [BC, BC] blocks by forward substitution, then for block row i and column
    j < i: A_ij = −A_ii Σ_{j<=m<i} M_im A_mj (blocks of A round-trip through the output,
    which stays in cache)."""
    t0 = i_c * BT
    zero = tl.zeros([BC, BC], dtype=tl.float32)
    _inverse_diag_blocks(M, A, i_b, t0, i_h, TP, H, BT, BC, BT // BC)
    tl.debug_barrier()  # the diagonal blocks written above are read by every thread below
    for i in tl.static_range(BT // BC):
        Aii = _tile(A, i_b, t0 + i * BC, i_h, TP, H, BT, i * BC, BC, BC)
        for j in tl.static_range(i + 1, BT // BC):
            _put(A, zero, i_b, t0 + i * BC, i_h, TP, H, BT, j * BC, BC, BC)
        for j in tl.static_range(i):
            tl.debug_barrier()  # blocks A_kj written above are visible to every thread
            acc = tl.zeros([BC, BC], dtype=tl.float32)
            for m in tl.static_range(j, i):
                acc += _mm(_tile(M, i_b, t0 + i * BC, i_h, TP, H, BT, m * BC, BC, BC),
                           _tile(A, i_b, t0 + m * BC, i_h, TP, H, BT, j * BC, BC, BC), PREC)
            _put(A, -_mm(Aii, acc, PREC), i_b, t0 + i * BC, i_h, TP, H, BT, j * BC, BC, BC)
    tl.debug_barrier()
    Ai = _tile(A, i_b, t0, i_h, TP, H, BT, 0, BT, BT)
    at = _gated_tile(b, k, i_b, t0, i_h, TP, H, K, KB, 0, BT, BK) * tl.exp(_tile(G, i_b, t0, i_h, TP, H, K, 0, BT, BK))
    _put(W, _mm(Ai, at, PREC), i_b, t0, i_h, TP, H, K, 0, BT, BK)
    for i_v in range(NV):
        xt = _gated_tile(w, v, i_b, t0, i_h, TP, H, V, KW, i_v * BV, BT, BV)
        _put(XA, _mm(Ai, xt, PREC), i_b, t0, i_h, TP, H, V, i_v * BV, BT, BV)


@triton.jit
def _state_step(
    u, G, W, XA, S, dlt, i_c, i_b, i_h, c0, TP,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
):
    """One chunk of the state scan on value tile c0: Δ = XA − W S_0 (stored), and
    (S_C = e^{G_C} ⊙ S_0 + Ûᵀ Δ, Δ)."""
    t0 = i_c * BT
    wt = _tile(W, i_b, t0, i_h, TP, H, K, 0, BT, BK)
    dl = _tile(XA, i_b, t0, i_h, TP, H, V, c0, BT, BV) - _mm(wt, S, PREC)
    _put(dlt, dl, i_b, t0, i_h, TP, H, V, c0, BT, BV)
    g_last = _row(G, i_b, t0 + BT - 1, i_h, TP, H, K, 0, BK)
    uh = _tile(u, i_b, t0, i_h, TP, H, K, 0, BT, BK) * tl.exp(g_last[None, :] - _tile(G, i_b, t0, i_h, TP, H, K, 0, BT, BK))
    return S * tl.exp(g_last)[:, None] + _mm(tl.trans(uh), dl, PREC), dl


@triton.jit
def _output_tile(
    q, G, Qm, S0, dl, o, i_c, i_b, i_h, c0, TP, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
):
    """o = scale (Q̃ S_0 + Q Δ) of chunk i_c on value tile c0 (stored and returned)."""
    t0 = i_c * BT
    qt = _tile(q, i_b, t0, i_h, TP, H, K, 0, BT, BK) * tl.exp(_tile(G, i_b, t0, i_h, TP, H, K, 0, BT, BK))
    Qt = _tile(Qm, i_b, t0, i_h, TP, H, BT, 0, BT, BT)
    out = scale * (_mm(qt, S0, PREC) + _mm(Qt, dl, PREC))
    _put(o, out, i_b, t0, i_h, TP, H, V, c0, BT, BV)
    return out


@triton.jit
def _state_bwd_step(
    q, u, G, Qm, W, do, dS, dx, i_c, i_b, i_h, c0, TP, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
):
    """One chunk of the reverse scan on value tile c0: dΔ (stored into dx) from dO and
    dS_C; returns dS_0."""
    t0 = i_c * BT
    Gt = _tile(G, i_b, t0, i_h, TP, H, K, 0, BT, BK)
    g_last = _row(G, i_b, t0 + BT - 1, i_h, TP, H, K, 0, BK)
    uh = _tile(u, i_b, t0, i_h, TP, H, K, 0, BT, BK) * tl.exp(g_last[None, :] - Gt)
    dot_ = _tile(do, i_b, t0, i_h, TP, H, V, c0, BT, BV)
    Qt = _tile(Qm, i_b, t0, i_h, TP, H, BT, 0, BT, BT)
    qt = _tile(q, i_b, t0, i_h, TP, H, K, 0, BT, BK) * tl.exp(Gt)
    local = scale * _mm(tl.trans(qt), dot_, PREC)
    dD = scale * _mm(tl.trans(Qt), dot_, PREC) + _mm(uh, dS, PREC)
    _put(dx, dD, i_b, t0, i_h, TP, H, V, c0, BT, BV)
    wt = _tile(W, i_b, t0, i_h, TP, H, K, 0, BT, BK)
    return dS * tl.exp(g_last)[:, None] + local - _mm(tl.trans(wt), dD, PREC)


@triton.jit
def _pairs_bwd_chunk(
    dlt, do, A, dx, dQm, dM, w, v, dw, dv, i_c, i_b, i_h, TP, scale,
    H: tl.constexpr, V: tl.constexpr, KW: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, NV: tl.constexpr,
    PREC: tl.constexpr,
):
    """dR = Aᵀ dΔ (= dx, in place), dQ, dM of chunk i_c; with a write gate (KW > 0) also
    dv = dx ⊙ w and dw = dx ⊙ v (summed over the values when KW = 1)."""
    t0 = i_c * BT
    At = tl.trans(_tile(A, i_b, t0, i_h, TP, H, BT, 0, BT, BT))
    dQ = tl.zeros([BT, BT], dtype=tl.float32)
    dMt = tl.zeros([BT, BT], dtype=tl.float32)
    dw_sum = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(NV):
        c0 = i_v * BV
        dR = _mm(At, _tile(dx, i_b, t0, i_h, TP, H, V, c0, BT, BV), PREC)
        _put(dx, dR, i_b, t0, i_h, TP, H, V, c0, BT, BV)
        if KW > 0:
            vt = _tile(v, i_b, t0, i_h, TP, H, V, c0, BT, BV)
            if KW == 1:
                _put(dv, dR * _col(w, i_b, t0, i_h, TP, H, BT)[:, None], i_b, t0, i_h, TP, H, V, c0, BT, BV)
                dw_sum += tl.sum(dR * vt, 1)
            else:
                _put(dv, dR * _tile(w, i_b, t0, i_h, TP, H, V, c0, BT, BV), i_b, t0, i_h, TP, H, V, c0, BT, BV)
                _put(dw, dR * vt, i_b, t0, i_h, TP, H, V, c0, BT, BV)
        dlT = tl.trans(_tile(dlt, i_b, t0, i_h, TP, H, V, c0, BT, BV))
        dQ += _mm(_tile(do, i_b, t0, i_h, TP, H, V, c0, BT, BV), dlT, PREC)
        dMt -= _mm(dR, dlT, PREC)
    if KW == 1:
        _put_col(dw, dw_sum, i_b, t0, i_h, TP, H, BT)
    rr = tl.arange(0, BT)
    _put(dQm, tl.where(rr[:, None] >= rr[None, :], scale * dQ, 0.0), i_b, t0, i_h, TP, H, BT, 0, BT, BT)
    _put(dM, tl.where(rr[:, None] > rr[None, :], dMt, 0.0), i_b, t0, i_h, TP, H, BT, 0, BT, BT)


@triton.jit
def _state_terms_chunk(
    G, h, dh, dlt, do, dx, dq0, da0, du0, i_k, i_c, i_b, i_h, TP, NT, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
    BKS: tl.constexpr, BV: tl.constexpr, NV: tl.constexpr, PREC: tl.constexpr,
):
    t0, k0 = i_c * BT, i_k * BKS
    dqt = tl.zeros([BT, BKS], dtype=tl.float32)
    dat = tl.zeros([BT, BKS], dtype=tl.float32)
    dut = tl.zeros([BT, BKS], dtype=tl.float32)
    i_mat = (i_b * NT + i_c) * H + i_h
    for i_v in range(NV):
        c0 = i_v * BV
        p_h, m = matrix_slice_ptr(h, i_mat, K, V, k0, c0, BKS, BV)
        p_d, _ = matrix_slice_ptr(dh, i_mat, K, V, k0, c0, BKS, BV)
        S0t = tl.trans(tl.load(p_h, mask=m, other=0.0))
        dSt = tl.trans(tl.load(p_d, mask=m, other=0.0))
        dqt += _mm(_tile(do, i_b, t0, i_h, TP, H, V, c0, BT, BV), S0t, PREC)
        dat -= _mm(_tile(dx, i_b, t0, i_h, TP, H, V, c0, BT, BV), S0t, PREC)
        dut += _mm(_tile(dlt, i_b, t0, i_h, TP, H, V, c0, BT, BV), dSt, PREC)
    Gt = _tile(G, i_b, t0, i_h, TP, H, K, k0, BT, BKS)
    g_last = _row(G, i_b, t0 + BT - 1, i_h, TP, H, K, k0, BKS)
    _put(dq0, scale * dqt * tl.exp(Gt), i_b, t0, i_h, TP, H, K, k0, BT, BKS)
    _put(da0, dat * tl.exp(Gt), i_b, t0, i_h, TP, H, K, k0, BT, BKS)
    _put(du0, dut * tl.exp(g_last[None, :] - Gt), i_b, t0, i_h, TP, H, K, k0, BT, BKS)


@triton.jit
def _pairs_as_rows(
    dQm, dM, u, G, dq, da, i_b, t_i, i_h, TP, H, K: tl.constexpr, BT: tl.constexpr,
    BC: tl.constexpr, BK: tl.constexpr, i_i, c_t0, PREC: tl.constexpr,
):
    """Σ_{s<=t} dQ[t,s] e^{G_t−G_s} u_s and the dM analogue for the rows t of sub-chunk i."""
    G_i = _tile(G, i_b, t_i, i_h, TP, H, K, 0, BC, BK)
    ref = _row(G, i_b, t_i, i_h, TP, H, K, 0, BK)
    acc_q = tl.zeros([BC, BK], dtype=tl.float32)
    acc_a = tl.zeros([BC, BK], dtype=tl.float32)
    for i_j in range(0, i_i):
        t_j = c_t0 + i_j * BC
        uj = _tile(u, i_b, t_j, i_h, TP, H, K, 0, BC, BK) * tl.exp(ref[None, :] - _tile(G, i_b, t_j, i_h, TP, H, K, 0, BC, BK))
        acc_q += _mm(_tile(dQm, i_b, t_i, i_h, TP, H, BT, i_j * BC, BC, BC), uj, PREC)
        acc_a += _mm(_tile(dM, i_b, t_i, i_h, TP, H, BT, i_j * BC, BC, BC), uj, PREC)
    up = tl.exp(G_i - ref[None, :])
    dq += up * acc_q
    da += up * acc_a
    rr = tl.arange(0, BC)
    ok = tl.arange(0, BK)
    row = ((i_b * TP + t_i) * H + i_h) * K + ok
    p_u, p_g = u + row, G + row
    col = ((i_b * TP + t_i + rr) * H + i_h) * BT + i_i * BC
    p_cq, p_cm = dQm + col, dM + col
    for s in range(BC):  # pairs (t, s) inside the sub-chunk, one column s at a time
        keep = rr[:, None] >= s
        gs = tl.load(p_g, mask=ok < K, other=0.0)
        f = tl.where(keep, tl.exp(tl.where(keep, G_i - gs[None, :], 0.0)), 0.0)
        f = f * tl.load(p_u, mask=ok < K, other=0.0).to(tl.float32)[None, :]
        dq += tl.load(p_cq)[:, None] * f
        da += tl.load(p_cm)[:, None] * f
        p_u, p_g, p_cq, p_cm = p_u + H * K, p_g + H * K, p_cq + 1, p_cm + 1
    return dq, da


@triton.jit
def _pairs_as_cols(
    dQm, dM, q, b, k, G, du, i_b, t_i, i_h, TP, H, K: tl.constexpr, KB: tl.constexpr, BT: tl.constexpr,
    BC: tl.constexpr, BK: tl.constexpr, i_i, NC: tl.constexpr, c_t0, PREC: tl.constexpr,
):
    """Σ_{t>=s} e^{G_t−G_s}(dQ[t,s] q_t + dM[t,s] a_t) for the columns s of sub-chunk i."""
    G_i = _tile(G, i_b, t_i, i_h, TP, H, K, 0, BC, BK)
    ref = _row(G, i_b, t_i + BC - 1, i_h, TP, H, K, 0, BK)
    acc = tl.zeros([BC, BK], dtype=tl.float32)
    for i_j in range(i_i + 1, NC):
        t_j = c_t0 + i_j * BC
        f = tl.exp(_tile(G, i_b, t_j, i_h, TP, H, K, 0, BC, BK) - ref[None, :])
        dQb = tl.trans(_tile(dQm, i_b, t_j, i_h, TP, H, BT, i_i * BC, BC, BC))
        dMb = tl.trans(_tile(dM, i_b, t_j, i_h, TP, H, BT, i_i * BC, BC, BC))
        acc += _mm(dQb, _tile(q, i_b, t_j, i_h, TP, H, K, 0, BC, BK) * f, PREC)
        acc += _mm(dMb, _gated_tile(b, k, i_b, t_j, i_h, TP, H, K, KB, 0, BC, BK) * f, PREC)
    du += tl.exp(ref[None, :] - G_i) * acc
    rr = tl.arange(0, BC)
    ok = tl.arange(0, BK)
    row = ((i_b * TP + t_i) * H + i_h) * K + ok
    p_q, p_k, p_g = q + row, k + row, G + row
    if KB == 1:  # one gate per token: every key channel reads the same address
        p_b = b + ((i_b * TP + t_i) * H + i_h) + ok * 0
    else:
        p_b = b + row
    mrow = ((i_b * TP + t_i) * H + i_h) * BT + i_i * BC + rr
    p_rq, p_rm = dQm + mrow, dM + mrow
    for tt in range(BC):  # pairs (t, s) inside the sub-chunk, one row t at a time
        keep = rr[:, None] <= tt
        G_t = tl.load(p_g, mask=ok < K, other=0.0)
        f = tl.where(keep, tl.exp(tl.where(keep, G_t[None, :] - G_i, 0.0)), 0.0)
        qa = tl.load(p_rq)[:, None] * tl.load(p_q, mask=ok < K, other=0.0).to(tl.float32)[None, :]
        a_t = tl.load(p_k, mask=ok < K, other=0.0).to(tl.float32) * tl.load(p_b, mask=ok < K, other=0.0).to(tl.float32)
        qa += tl.load(p_rm)[:, None] * a_t[None, :]
        du += qa * f
        p_q, p_k, p_b, p_g = p_q + H * K, p_k + H * K, p_b + H * KB, p_g + H * K
        p_rq, p_rm = p_rq + H * BT, p_rm + H * BT
    return du


@triton.jit
def _intra_bwd_sub(
    q, b, k, u, G, dQm, dM, dq0, da0, du0, dq, dk, db, du, i_c, i_i, i_b, i_h, TP,
    H: tl.constexpr, K: tl.constexpr, KB: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, NC: tl.constexpr,
    BK: tl.constexpr, PREC: tl.constexpr,
):
    """dq, du and the gradient da of a = b ⊙ k, passed on as dk = da ⊙ b (the part of k's
    gradient through a) and db = da ⊙ k (summed over the keys when KB = 1), for the rows of
    sub-chunk i."""
    c_t0 = i_c * BT
    t_i = c_t0 + i_i * BC
    dqt = _tile(dq0, i_b, t_i, i_h, TP, H, K, 0, BC, BK)
    dat = _tile(da0, i_b, t_i, i_h, TP, H, K, 0, BC, BK)
    dqt, dat = _pairs_as_rows(dQm, dM, u, G, dqt, dat, i_b, t_i, i_h, TP, H, K, BT, BC, BK, i_i, c_t0, PREC)
    dut = _tile(du0, i_b, t_i, i_h, TP, H, K, 0, BC, BK)
    dut = _pairs_as_cols(dQm, dM, q, b, k, G, dut, i_b, t_i, i_h, TP, H, K, KB, BT, BC, BK, i_i, NC, c_t0, PREC)
    _put(dq, dqt, i_b, t_i, i_h, TP, H, K, 0, BC, BK)
    _put(du, dut, i_b, t_i, i_h, TP, H, K, 0, BC, BK)
    kt = _tile(k, i_b, t_i, i_h, TP, H, K, 0, BC, BK)
    if KB == 1:
        _put(dk, dat * _col(b, i_b, t_i, i_h, TP, H, BC)[:, None], i_b, t_i, i_h, TP, H, K, 0, BC, BK)
        _put_col(db, tl.sum(dat * kt, 1), i_b, t_i, i_h, TP, H, BC)
    else:
        _put(dk, dat * _tile(b, i_b, t_i, i_h, TP, H, K, 0, BC, BK), i_b, t_i, i_h, TP, H, K, 0, BC, BK)
        _put(db, dat * kt, i_b, t_i, i_h, TP, H, K, 0, BC, BK)


@triton.jit
def _decay_grad_chunk(
    q, dq, k, dk, u, du, h, dh, s_out, dg, i_k, i_c, i_b, i_h, TP, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BKS: tl.constexpr, BV: tl.constexpr,
):
    """dg of chunk i_c, key slice i_k (derivation: ``triton_chunk``). The a ⊙ da term is
    taken as k ⊙ dk, dk = da ⊙ b being what ``_intra_bwd_sub`` stores: the same product."""
    i_next = tl.minimum(i_c + 1, NT - 1)  # the last chunk ends in S_T, not in an h
    carry = tl.zeros([BKS], dtype=tl.float32)
    for c0 in range(0, V, BV):
        p_n, m = matrix_slice_ptr(h, (i_b * NT + i_next) * H + i_h, K, V, i_k * BKS, c0, BKS, BV)
        p_t, _ = matrix_slice_ptr(s_out, i_b * H + i_h, K, V, i_k * BKS, c0, BKS, BV)
        p_d, _ = matrix_slice_ptr(dh, (i_b * NT + i_c) * H + i_h, K, V, i_k * BKS, c0, BKS, BV)
        s_end = tl.where(i_c < NT - 1, tl.load(p_n, mask=m, other=0.0), tl.load(p_t, mask=m, other=0.0))
        carry += tl.sum(s_end * tl.load(p_d, mask=m, other=0.0), 1)
    t0 = i_c * BT
    acc = _tile(q, i_b, t0, i_h, TP, H, K, i_k * BKS, BT, BKS) * _tile(dq, i_b, t0, i_h, TP, H, K, i_k * BKS, BT, BKS)
    acc += _tile(k, i_b, t0, i_h, TP, H, K, i_k * BKS, BT, BKS) * _tile(dk, i_b, t0, i_h, TP, H, K, i_k * BKS, BT, BKS)
    acc -= _tile(u, i_b, t0, i_h, TP, H, K, i_k * BKS, BT, BKS) * _tile(du, i_b, t0, i_h, TP, H, K, i_k * BKS, BT, BKS)
    _put(dg, tl.cumsum(acc, 0, reverse=True) + carry[None, :], i_b, t0, i_h, TP, H, K, i_k * BKS, BT, BKS)
