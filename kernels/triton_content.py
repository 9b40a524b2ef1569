"""The content gate (CARVE) as one sequential-over-chunks Triton kernel each way.

With a content gate the erase gate of chunk c is ``b = σ(pre + U(V m_c))`` (times the
erase scale), ``m_c`` the mean output of chunk c−1: chunk c cannot be set up before chunk
c−1 has produced its outputs, so the "every chunk in parallel, then a light scan" split of
``triton_chunk`` does not apply. Here one program per (batch, head) walks the chunks in
order and does all of a chunk's work, with the same per-chunk device functions as the
parallel kernels of ``triton_chunk`` (``_chunk_steps``: ``_intra_block``, ``_solve_chunk``,
``_state_step``, ``_output_tile``; backward ``_state_bwd_step``, ``_pairs_bwd_chunk``,
``_state_terms_chunk``, ``_intra_bwd_sub``, ``_decay_grad_chunk``), so a chunk's
arithmetic is the parallel path's, bit for bit, whenever its gate is:

forward, chunk c (``_content_fwd_kernel``):
    1. δ_c = U (V m_c) (m_0 = 0); b = erase_scale · σ(pre + δ_c) (stored: the stages
       below form a = b ⊙ k from it, and the backward needs it), G = the chunk's cumulative
       log-decay;
    2. the pair matrices M, Q of its sub-chunks; 3. the WY inverse A, W = A Ã, A X
       (X = w ⊙ v formed as it is loaded); 4. per value tile: Δ = A X − W S_0, S_C, o
       (stored in the output dtype); the column means of the fp32 o are m_{c+1}.

backward, chunk c from the last (``_content_bwd_kernel``):
    1. dO_c += dm_{c+1} / C (the mean's gradient; chunk c is full when c+1 exists);
    2. the reverse state step (dΔ, dS_0 of the chunk), the pair gradients (with
       dv = dX ⊙ w and dw = dX ⊙ v), the S_0 / dS_C terms, the in-chunk pair sums (dq,
       du, and da as dk = da ⊙ b and db = da ⊙ k), dg by the scaling identity;
    3. dpre = db ⊙ b(1 − b/erase_scale); dδ_c = Σ_t dpre_t; dU += dδ_c (V m_c)ᵀ,
       dV += (Uᵀ dδ_c) m_cᵀ, dm_c = Vᵀ Uᵀ dδ_c, which step 1 of chunk c−1 adds.

A chunk's intermediate tiles make a round trip through global memory (as in the parallel
kernels, whose layout they keep) between stages, separated by ``tl.debug_barrier``: one
program owns one (batch, head), so its writes are visible to all its threads after the
barrier, and stay in L2. No launch per chunk, no CUDA graph, no memory pool: the call is
two launches (plus the P-pass with ``covariance="propagate"``, which the erase gate never
enters).

Bit-identity with the ungated path at init (U = 0). Where δ_c is exactly zero (every
channel of chunk 0, and every chunk while U = 0) the gate is taken from ``b0``, the
caller's own whole-tensor ``erase_scale · torch.sigmoid(pre)``, not from the kernel's
σ: the two are the same function evaluated by different code, and may differ in the last
bit. The gradient always uses b(1 − b/erase_scale) of the value used.

Cost. The grid is B·H programs, each serial over T / C chunks (the parallel path runs
B·H·T/C programs for everything but the scan), so at small B·H the GPU is not full.
"""
from __future__ import annotations

from collections import Counter

import torch
import triton
import triton.language as tl

from carvelab.kernels import triton_chunk as _chunk
from carvelab.kernels._triton_common import block_size, dot_precisions, key_block, matrix_tile_ptr
from carvelab.kernels._chunk_steps import (
    BC,
    _decay_grad_chunk,
    _intra_block,
    _intra_bwd_sub,
    _output_tile,
    _pairs_bwd_chunk,
    _put,
    _solve_chunk,
    _state_bwd_step,
    _state_step,
    _state_terms_chunk,
    _tile,
)
from carvelab.kernels.triton_chunk import _empty, _pad_time, gate_width, operand_dtype, value_grads
from carvelab.kernels.tuning import autotune, autotune_configs

LAUNCHES: Counter = Counter()


@triton.jit
def _low_rank(Vm, mbuf, i_m, i_h, R: tl.constexpr, V: tl.constexpr, BR: tl.constexpr, BV: tl.constexpr,
              NV: tl.constexpr):
    """V_h m ([BR]) for the m stored at row i_m of the [.., V] buffer mbuf."""
    rr = tl.arange(0, BR)
    low = tl.zeros([BR], dtype=tl.float32)
    for i_v in range(NV):
        cv = i_v * BV + tl.arange(0, BV)
        mv = tl.load(mbuf + i_m * V + cv, mask=cv < V, other=0.0)
        Vt = tl.load(Vm + (i_h * R + rr[:, None]) * V + cv[None, :], mask=(rr[:, None] < R) & (cv[None, :] < V),
                     other=0.0).to(tl.float32)
        low += tl.sum(Vt * mv[None, :], 1)
    return low


@triton.jit
def _u_tile(Um, i_h, K: tl.constexpr, R: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr):
    """U_h as a [BK, BR] fp32 tile (zero outside [K, R])."""
    ok, rr = tl.arange(0, BK), tl.arange(0, BR)
    return tl.load(Um + (i_h * K + ok[:, None]) * R + rr[None, :], mask=(ok[:, None] < K) & (rr[None, :] < R),
                   other=0.0).to(tl.float32)


@autotune(configs=autotune_configs(warps=(4, 8), stages=(1, 2)), key=["BK", "BT", "V", "BR"])
@triton.jit
def _content_fwd_kernel(
    q, k, u, v, w, g, pre, b0, Um, Vm, s0,
    G, bb, M, Qm, A, W, XA, h, dlt, mbuf, o, s_out, TP, NT, scale, erase_scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, KW: tl.constexpr, R: tl.constexpr, BT: tl.constexpr,
    BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NV: tl.constexpr, BR: tl.constexpr, PREC: tl.constexpr,
    SOLVE_PREC: tl.constexpr,
):
    """One (batch, head), every chunk in order; see the module docstring."""
    i_bh = tl.program_id(0)
    i_b, i_h = i_bh // H, i_bh % H
    NC: tl.constexpr = BT // BC
    for i_v in range(NV):  # h[0] = S_0
        p_s, m_s = matrix_tile_ptr(s0, i_bh, K, V, i_v * BV, BK, BV)
        p_h, _ = matrix_tile_ptr(h, i_b * NT * H + i_h, K, V, i_v * BV, BK, BV)
        tl.store(p_h, tl.load(p_s, mask=m_s, other=0.0), mask=m_s)
    Ut = _u_tile(Um, i_h, K, R, BK, BR)
    for i_c in range(NT):
        t0 = i_c * BT
        # 1. the gate of this chunk and the cumulative decay
        if i_c > 0:
            low = _low_rank(Vm, mbuf, (i_b * NT + i_c) * H + i_h, i_h, R, V, BR, BV, NV)
            delta = tl.sum(Ut * low[None, :], 1)
        else:
            delta = tl.zeros([BK], dtype=tl.float32)
        xg = _tile(pre, i_b, t0, i_h, TP, H, K, 0, BT, BK) + delta[None, :]
        bt = tl.where(delta[None, :] == 0.0, _tile(b0, i_b, t0, i_h, TP, H, K, 0, BT, BK),
                      erase_scale * tl.sigmoid(xg))
        _put(bb, bt, i_b, t0, i_h, TP, H, K, 0, BT, BK)
        _put(G, tl.cumsum(_tile(g, i_b, t0, i_h, TP, H, K, 0, BT, BK), 0), i_b, t0, i_h, TP, H, K, 0, BT, BK)
        tl.debug_barrier()
        # 2. M and Q, block by block of sub-chunks
        for i_ij in tl.static_range(NC * NC):
            _intra_block(q, bb, k, u, G, M, Qm, i_c, i_ij // NC, i_ij % NC, i_b, i_h, TP, H, K, K, BT, BC, BK, PREC)
        tl.debug_barrier()
        # 3. the WY inverse
        _solve_chunk(bb, k, w, v, G, M, A, W, XA, i_c, i_b, i_h, TP, H, K, K, V, KW, BT, BC, BK, BV, NV, SOLVE_PREC)
        tl.debug_barrier()
        # 4. state, outputs and their column means, value tile by value tile
        for i_v in range(NV):
            c0 = i_v * BV
            p_h, m_h = matrix_tile_ptr(h, (i_b * NT + i_c) * H + i_h, K, V, c0, BK, BV)
            S0 = tl.load(p_h, mask=m_h, other=0.0)
            S1, dl = _state_step(u, G, W, XA, S0, dlt, i_c, i_b, i_h, c0, TP, H, K, V, BT, BK, BV, PREC)
            out = _output_tile(q, G, Qm, S0, dl, o, i_c, i_b, i_h, c0, TP, scale, H, K, V, BT, BK, BV, PREC)
            if i_c + 1 < NT:
                p_n, _ = matrix_tile_ptr(h, (i_b * NT + i_c + 1) * H + i_h, K, V, c0, BK, BV)
                tl.store(p_n, S1, mask=m_h)
                cv = c0 + tl.arange(0, BV)
                tl.store(mbuf + ((i_b * NT + i_c + 1) * H + i_h) * V + cv, tl.sum(out, 0) / BT, mask=cv < V)
            else:
                p_o, _ = matrix_tile_ptr(s_out, i_bh, K, V, c0, BK, BV)
                tl.store(p_o, S1, mask=m_h)
        tl.debug_barrier()


@autotune(configs=autotune_configs(warps=(4, 8), stages=(1, 2)), key=["BK", "BT", "V", "BR"], restore_value=("dV",))
@triton.jit
def _content_bwd_kernel(
    q, k, u, v, w, G, bb, Qm, A, W, h, dlt, mbuf, Um, Vm, s_out, do, ds_out,
    dob, dh, dx, dQm, dM, dq0, da0, du0, dq, dk, db, du, dv, dw, dg, dpre, dmb, dU, dV, ds0,
    TP, NT, scale, erase_scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, KW: tl.constexpr, R: tl.constexpr, BT: tl.constexpr,
    BC: tl.constexpr, BK: tl.constexpr, BKS: tl.constexpr, BV: tl.constexpr, NV: tl.constexpr, BR: tl.constexpr,
    PREC: tl.constexpr,
):
    """One (batch, head), every chunk from the last; see the module docstring."""
    i_bh = tl.program_id(0)
    i_b, i_h = i_bh // H, i_bh % H
    NC: tl.constexpr = BT // BC
    NK: tl.constexpr = (K + BKS - 1) // BKS
    rr, ok = tl.arange(0, BR), tl.arange(0, BK)
    for i_v in range(NV):  # dh[NT−1] = dS_T
        p_s, m_s = matrix_tile_ptr(ds_out, i_bh, K, V, i_v * BV, BK, BV)
        p_h, _ = matrix_tile_ptr(dh, ((i_b * NT + NT - 1) * H + i_h), K, V, i_v * BV, BK, BV)
        tl.store(p_h, tl.load(p_s, mask=m_s, other=0.0), mask=m_s)
    Ut = _u_tile(Um, i_h, K, R, BK, BR)
    dU_acc = tl.zeros([BK, BR], dtype=tl.float32)
    for i_rev in range(NT):
        i_c = NT - 1 - i_rev
        t0 = i_c * BT
        # 1. dO of the chunk, with the gradient of the next chunk's mean
        for i_v in range(NV):
            c0 = i_v * BV
            cv = c0 + tl.arange(0, BV)
            dot_ = _tile(do, i_b, t0, i_h, TP, H, V, c0, BT, BV)
            if i_c + 1 < NT:
                dot_ += tl.load(dmb + i_bh * V + cv, mask=cv < V, other=0.0)[None, :] / BT
            _put(dob, dot_, i_b, t0, i_h, TP, H, V, c0, BT, BV)
        tl.debug_barrier()
        # 2. the chunk's gradients, stage by stage as in the parallel kernels
        for i_v in range(NV):
            c0 = i_v * BV
            p_d, m_d = matrix_tile_ptr(dh, (i_b * NT + i_c) * H + i_h, K, V, c0, BK, BV)
            dS = _state_bwd_step(q, u, G, Qm, W, dob, tl.load(p_d, mask=m_d, other=0.0), dx, i_c, i_b, i_h, c0,
                                 TP, scale, H, K, V, BT, BK, BV, PREC)
            if i_c > 0:
                p_p, _ = matrix_tile_ptr(dh, (i_b * NT + i_c - 1) * H + i_h, K, V, c0, BK, BV)
                tl.store(p_p, dS, mask=m_d)
            else:
                p_0, _ = matrix_tile_ptr(ds0, i_bh, K, V, c0, BK, BV)
                tl.store(p_0, dS, mask=m_d)
        tl.debug_barrier()
        _pairs_bwd_chunk(dlt, dob, A, dx, dQm, dM, w, v, dw, dv, i_c, i_b, i_h, TP, scale, H, V, KW, BT, BV, NV,
                         PREC)
        tl.debug_barrier()
        for i_k in tl.static_range(NK):
            _state_terms_chunk(G, h, dh, dlt, dob, dx, dq0, da0, du0, i_k, i_c, i_b, i_h, TP, NT, scale,
                               H, K, V, BT, BKS, BV, NV, PREC)
        tl.debug_barrier()
        for i_i in tl.static_range(NC):
            _intra_bwd_sub(q, bb, k, u, G, dQm, dM, dq0, da0, du0, dq, dk, db, du, i_c, i_i, i_b, i_h, TP,
                           H, K, K, BT, BC, NC, BK, PREC)
        tl.debug_barrier()
        for i_k in tl.static_range(NK):
            _decay_grad_chunk(q, dq, k, dk, u, du, h, dh, s_out, dg, i_k, i_c, i_b, i_h, TP, NT,
                              H, K, V, BT, BKS, BV)
        # 3. the gate's gradient, and what it sends to the previous chunk's outputs
        bt = _tile(bb, i_b, t0, i_h, TP, H, K, 0, BT, BK)
        dp = _tile(db, i_b, t0, i_h, TP, H, K, 0, BT, BK) * bt * (1.0 - bt / erase_scale)
        _put(dpre, dp, i_b, t0, i_h, TP, H, K, 0, BT, BK)
        if i_c > 0:
            i_m = (i_b * NT + i_c) * H + i_h
            ddelta = tl.sum(dp, 0)
            low = _low_rank(Vm, mbuf, i_m, i_h, R, V, BR, BV, NV)
            dU_acc += ddelta[:, None] * low[None, :]
            dlow = tl.sum(Ut * ddelta[:, None], 0)
            for i_v in range(NV):
                cv = i_v * BV + tl.arange(0, BV)
                mask = (rr[:, None] < R) & (cv[None, :] < V)
                Vt = tl.load(Vm + (i_h * R + rr[:, None]) * V + cv[None, :], mask=mask, other=0.0).to(tl.float32)
                tl.store(dmb + i_bh * V + cv, tl.sum(Vt * dlow[:, None], 0), mask=cv < V)
                mv = tl.load(mbuf + i_m * V + cv, mask=cv < V, other=0.0)
                p_dv = dV + (i_bh * R + rr[:, None]) * V + cv[None, :]
                tl.store(p_dv, tl.load(p_dv, mask=mask, other=0.0) + dlow[:, None] * mv[None, :], mask=mask)
        tl.debug_barrier()
    tl.store(dU + (i_bh * K + ok[:, None]) * R + rr[None, :], dU_acc, mask=(ok[:, None] < K) & (rr[None, :] < R))


def _dims(q, v, U, BT):
    B, T, H, K = q.shape
    V, R = v.shape[-1], U.shape[-1]
    NT = triton.cdiv(T, BT)
    BV = block_size(V, _chunk.MAX_BLOCK_V)
    return B, T, H, K, V, R, NT, NT * BT, key_block(K), BV, triton.cdiv(V, BV), max(2, triton.next_power_of_2(R))


def content_forward(q, k, u, v, w, g, pre, b0, U, V, s0, scale: float, erase_scale: float, BT: int,
                    precision: str = "exact", out_dtype: torch.dtype = torch.float32):
    """q, k, u, g, pre, b0 [B, T, H, dk] (pre the erase gate's pre-activation, b0 =
    erase_scale·σ(pre) from the caller); v [B, T, H, dv] and w [B, T, H, dv or 1] or None
    (x = w ⊙ v is formed in the kernel, as in ``triton_chunk``; None: x = v); U [H, dk, R],
    V [H, R, dv]; s0 [B, H, dk, dv] fp32; BT in {16, 32, 64}, the WY chunk and the content
    chunk.

    Returns o [B, T, H, dv] in out_dtype (the column means that feed the next chunk's gate
    are taken from the fp32 tile before it is rounded), S_T fp32 and what the backward
    needs (padded to a multiple of BT tokens): (G, b, Q, A, W, h, Δ, m); Q, W and Δ in
    ``triton_chunk.operand_dtype(precision)`` (bf16 under fast), the rest fp32."""
    if BT not in (16, 32, 64):
        raise ValueError(f"BT={BT!r} is not allowed; choose one of [16, 32, 64]")
    B, T, H, K, Vd, R, NT, TP, BK, BV, NV, BR = _dims(q, v, U, BT)
    KW = gate_width(w, Vd, "w")
    q, k, u, v, g, pre, b0 = (_pad_time(t, TP) for t in (q, k, u, v, g, pre, b0))
    w = v if w is None else _pad_time(w, TP)  # KW = 0: never read
    prec, solve_prec = dot_precisions(precision, q, u)  # the rule of triton_chunk: a and x are formed in the kernel
    dev = q.device
    M, XA = _empty(dev, (B, TP, H, BT), (B, TP, H, Vd))  # freed on return
    G, bb, A, h, mbuf = _empty(  # saved
        dev, *[(B, TP, H, K)] * 2, (B, TP, H, BT), (B, NT, H, K, Vd), (B, NT, H, Vd))
    Qm, W, dlt = _empty(dev, (B, TP, H, BT), (B, TP, H, K), (B, TP, H, Vd),
                        dtype=operand_dtype(precision))  # saved
    s_out = torch.empty(B, H, K, Vd, device=dev, dtype=torch.float32)
    o = torch.empty(B, TP, H, Vd, device=dev, dtype=out_dtype)
    _content_fwd_kernel[(B * H,)](
        q, k, u, v, w, g, pre, b0, U, V, s0, G, bb, M, Qm, A, W, XA, h, dlt, mbuf, o, s_out, TP, NT, scale,
        float(erase_scale), H=H, K=K, V=Vd, KW=KW, R=R, BT=BT, BC=BC, BK=BK, BV=BV, NV=NV, BR=BR, PREC=prec,
        SOLVE_PREC=solve_prec,
    )
    LAUNCHES["content_fwd"] += 1
    return o[:, :T], s_out, (G, bb, Qm, A, W, h, dlt, mbuf)


def content_backward(q, k, u, v, w, U, V, saved, s_out, do, ds_out, scale: float, erase_scale: float, BT: int,
                     precision: str = "exact"):
    """Gradients (dq, dk, du, dv, dw, dg, dpre, dU, dV, dS_0) of ``content_forward``; do and
    ds_out fp32. dk is the part through a = b ⊙ k only (u = k adds du where the caller
    passed the same tensor); dw has w's shape (None when w is; dv is then x's gradient)."""
    G, bb, Qm, A, W, h, dlt, mbuf = saved
    B, T, H, K, Vd, R, NT, TP, BK, BV, NV, BR = _dims(q, do, U, BT)
    KW = gate_width(w, Vd, "w")
    q, k, u, v, do = (_pad_time(t, TP) for t in (q, k, u, v, do))
    w = v if w is None else _pad_time(w, TP)
    prec, _ = dot_precisions(precision, q, u)
    dev = q.device
    dob, dh, dQm, dM, dq0, da0, du0, dmb = _empty(  # freed on return
        dev, (B, TP, H, Vd), (B, NT, H, K, Vd), *[(B, TP, H, BT)] * 2, *[(B, TP, H, K)] * 3, (B, H, Vd))
    dv, dx, dw = value_grads(dev, B, TP, H, Vd, KW)
    ds0 = torch.empty(B, H, K, Vd, device=dev, dtype=torch.float32)
    dq, dk, du, dg, dpre = (torch.empty(B, TP, H, K, device=dev, dtype=torch.float32) for _ in range(5))
    db = _empty(dev, (B, TP, H, K))[0]  # freed on return (dpre carries the gate's gradient)
    dU = torch.empty(B, H, K, R, device=dev, dtype=torch.float32)
    dV = torch.zeros(B, H, R, Vd, device=dev, dtype=torch.float32)
    _content_bwd_kernel[(B * H,)](
        q, k, u, v, w, G, bb, Qm, A, W, h, dlt, mbuf, U, V, s_out, do, ds_out,
        dob, dh, dx, dQm, dM, dq0, da0, du0, dq, dk, db, du, dv, dx if dw is None else dw, dg, dpre, dmb, dU, dV,
        ds0, TP, NT, scale, float(erase_scale),
        H=H, K=K, V=Vd, KW=KW, R=R, BT=BT, BC=BC, BK=BK, BKS=min(BK, 64), BV=BV, NV=NV, BR=BR, PREC=prec,
    )
    LAUNCHES["content_bwd"] += 1
    return (dq[:, :T], dk[:, :T], du[:, :T], dv[:, :T], None if dw is None else dw[:, :T], dg[:, :T], dpre[:, :T],
            dU.sum(0), dV.sum(0), ds0)
