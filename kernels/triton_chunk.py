"""Chunked WY Triton kernels for the key-axis recurrence with asymmetric factors.

Recurrence (per batch, head; a = b⊙k the read direction, u the write direction, x = w⊙v;
a and x are formed on load from b, k and w, v and never stored)::

    S_t = D_t S_{t−1} + u_t (x_t − (D_t S_{t−1})ᵀ a_t)ᵀ,   o_t = scale · S_tᵀ q_t

Per chunk of C tokens, with G_t the cumulative log-decay inside the chunk (inclusive),
S_0 the state at the chunk start and δ_t = x_t − S̄_tᵀ a_t::

    M[t,s] = Σ_i a_t[i] u_s[i] e^{G_t[i]−G_s[i]}  (s < t),   Q[t,s] = same with q_t (s <= t)
    Ã = e^G ⊙ a,  Q̃ = e^G ⊙ q,  Û_s = e^{G_C−G_s} ⊙ u_s
    (I + M) Δ = X − Ã S_0,   A = (I + M)^{-1}  (shared by every value column)
    o = scale (Q̃ S_0 + Q Δ),   S_C = e^{G_C} ⊙ S_0 + Ûᵀ Δ

Backward per chunk, given dO and dS_C (= dL/dS at the chunk end)::

    dΔ  = scale Qᵀ dO + Û dS_C,   dR = Aᵀ dΔ  (= dX, since Δ = A R with R = X − Ã S_0)
    dS_0 = e^{G_C} ⊙ dS_C + scale Q̃ᵀ dO − Wᵀ dΔ            (reverse scan over chunks; Wᵀ = Ãᵀ Aᵀ)
    dA = dΔ Rᵀ  ⇒  dM = −Aᵀ dA Aᵀ = −dR Δᵀ   (strictly lower part)
    dQ = scale dO Δᵀ (lower part),  dQ̃ = scale dO S_0ᵀ,  dÃ = −dR S_0ᵀ,  dÛ = Δ dS_Cᵀ
    dq_t = e^{G_t} ⊙ dQ̃_t + Σ_{s<=t} dQ[t,s] e^{G_t−G_s} ⊙ u_s
    da_t = e^{G_t} ⊙ dÃ_t + Σ_{s<t}  dM[t,s] e^{G_t−G_s} ⊙ u_s
    du_s = e^{G_C−G_s} ⊙ dÛ_s + Σ_{t>=s} dQ[t,s] e^{G_t−G_s} ⊙ q_t + Σ_{t>s} dM[t,s] e^{G_t−G_s} ⊙ a_t
    dg_t = Σ_{s>=t in the chunk} (q⊙dq + a⊙da − u⊙du)_s + rowsum(S_end ⊙ dS_end)   (scaling identity)

Numerics: every exponent is a difference G_t − G_s <= 0 (g <= 0). Products over two
16-token sub-chunks i > j factor through the first row r of sub-chunk i (or the last
row of sub-chunk j), e^{G_t−r} · e^{r−G_s}, both factors <= 1, so they run on ``tl.dot``
and never overflow even at g ≈ −20 per token; pairs inside one sub-chunk are formed
elementwise, one column at a time. A is found by forward substitution on each [16, 16]
diagonal block, merged block by block with ``tl.dot``. State and accumulators are fp32;
products take fp32, 3xTF32 or bf16 operands by ``precision`` (``options``). Under ``fast``
Q, W and Δ are stored in bf16, rounded to nearest: they are only ever product operands, which
``fast`` rounds to the same bits, so this halves their memory and changes no result. M, A
(the solve's own round trip, in TF32) and the checkpoints h (the decay gradient reads them
elementwise) stay fp32.

Kernels: forward ``_intra`` (M, Q), ``_solve`` (A, W = A Ã, A X), ``_state`` (sequential
over chunks: checkpoints h, Δ, S_T), ``_output`` (o); backward ``_state_bwd`` (reverse
over chunks: dS and dΔ per chunk, dS_0), ``_pairs_bwd`` (dR, dQ, dM), ``_state_terms_bwd`` (the
S_0/dS_C terms of dq, da, du, per key slice), ``_intra_bwd`` (dq, da, du). T is padded with zeros to a multiple of C (identity steps).
Each kernel is one program per chunk (or per chunk and tile) around a per-chunk device
function of ``_chunk_steps``, which the fused content-gate kernels (``triton_content``)
call chunk after chunk.
"""
from __future__ import annotations

import logging
import math
from collections import Counter

import torch
import triton
import triton.language as tl

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
from carvelab.kernels._triton_common import block_size, dot_precisions, key_block, matrix_tile_ptr
from carvelab.kernels.tuning import autotune, autotune_configs

logger = logging.getLogger(__name__)

LAUNCHES: Counter = Counter()

# Widest value tile of the chunk kernels.
MAX_BLOCK_V = 64


# ----------------------------------------------------------------------------- forward


@autotune(configs=autotune_configs(warps=(1, 2, 4)), key=["BK", "BT", "KB"])
@triton.jit
def _intra_fwd_kernel(
    q, b, k, u, G, M, Qm, TP,
    H: tl.constexpr, K: tl.constexpr, KB: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, NC: tl.constexpr,
    BK: tl.constexpr, PREC: tl.constexpr,
):
    """Block (i, j) of sub-chunks of M and Q for one chunk."""
    i_c, i_ij, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _intra_block(q, b, k, u, G, M, Qm, i_c, i_ij // NC, i_ij % NC, i_bh // H, i_bh % H, TP, H, K, KB, BT, BC, BK,
                 PREC)


# 4 warps only: the count its batched diagonal inverse (3-D tiles) was checked with compiled
# on an H100, and the one the autotuner chose for it at every benchmarked shape before.
@autotune(configs=autotune_configs(warps=(4,)), key=["BK", "BT", "BV", "KB", "KW"])
@triton.jit
def _solve_fwd_kernel(
    b, k, w, v, G, M, A, W, XA, TP,
    H: tl.constexpr, K: tl.constexpr, KB: tl.constexpr, V: tl.constexpr, KW: tl.constexpr, BT: tl.constexpr,
    BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NV: tl.constexpr, PREC: tl.constexpr,
):
    """``_solve_chunk`` of one (chunk, batch·head)."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    _solve_chunk(b, k, w, v, G, M, A, W, XA, i_c, i_bh // H, i_bh % H, TP, H, K, KB, V, KW, BT, BC, BK, BV, NV,
                 PREC)


# The sequential kernels run one program per (value tile, batch·head): the value tile is
# tuned too, trading parallel programs against re-reading the key-side tiles per tile.
STATE_VALUE_BLOCKS = (16, 32, 64)


@autotune(configs=autotune_configs(value_blocks=STATE_VALUE_BLOCKS), key=["BK", "BT", "V"])
@triton.jit
def _state_fwd_kernel(
    u, G, W, XA, s0, h, dlt, s_out, TP, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
):
    """Sequential over chunks: store S_0 of each chunk, Δ = XA − W S_0, advance S."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    c0 = i_v * BV
    p_s, m_s = matrix_tile_ptr(s0, i_bh, K, V, c0, BK, BV)
    S = tl.load(p_s, mask=m_s, other=0.0)
    for i_c in range(NT):
        p_h, m_h = matrix_tile_ptr(h, (i_b * NT + i_c) * H + i_h, K, V, c0, BK, BV)
        tl.store(p_h, S, mask=m_h)
        S, dl = _state_step(u, G, W, XA, S, dlt, i_c, i_b, i_h, c0, TP, H, K, V, BT, BK, BV, PREC)
    p_o, m_o = matrix_tile_ptr(s_out, i_bh, K, V, c0, BK, BV)
    tl.store(p_o, S, mask=m_o)


@autotune(configs=autotune_configs(), key=["BK", "BT", "BV"])
@triton.jit
def _output_fwd_kernel(
    q, G, Qm, h, dlt, o, TP, NT, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
):
    """o = scale (Q̃ S_0 + Q Δ) for one chunk and value tile."""
    i_v, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    t0, c0 = i_c * BT, i_v * BV
    p_h, m_h = matrix_tile_ptr(h, (i_b * NT + i_c) * H + i_h, K, V, c0, BK, BV)
    S0 = tl.load(p_h, mask=m_h, other=0.0)
    dl = _tile(dlt, i_b, t0, i_h, TP, H, V, c0, BT, BV)
    _output_tile(q, G, Qm, S0, dl, o, i_c, i_b, i_h, c0, TP, scale, H, K, V, BT, BK, BV, PREC)


# ----------------------------------------------------------------------------- backward


@autotune(configs=autotune_configs(value_blocks=STATE_VALUE_BLOCKS), key=["BK", "BT", "V"])
@triton.jit
def _state_bwd_kernel(
    q, u, G, Qm, W, do, ds_out, dh, dx, ds0, TP, NT, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
):
    """Reverse over chunks: store dS_C and dΔ (into dx) of each chunk, finally dS_0.

    Ãᵀ dR = Ãᵀ Aᵀ dΔ = Wᵀ dΔ, so the chain from one chunk's dS to the next has two
    dependent products (Û dS, then Wᵀ dΔ); dR = Aᵀ dΔ is formed off the chain, in parallel
    (``_pairs_bwd_kernel``)."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    c0 = i_v * BV
    p_s, m_s = matrix_tile_ptr(ds_out, i_bh, K, V, c0, BK, BV)
    dS = tl.load(p_s, mask=m_s, other=0.0)
    for i_rev in range(NT):
        i_c = NT - 1 - i_rev
        p_h, m_h = matrix_tile_ptr(dh, (i_b * NT + i_c) * H + i_h, K, V, c0, BK, BV)
        tl.store(p_h, dS, mask=m_h)
        dS = _state_bwd_step(q, u, G, Qm, W, do, dS, dx, i_c, i_b, i_h, c0, TP, scale, H, K, V, BT, BK, BV, PREC)
    p_0, m_0 = matrix_tile_ptr(ds0, i_bh, K, V, c0, BK, BV)
    tl.store(p_0, dS, mask=m_0)


@autotune(configs=autotune_configs(), key=["BT", "BV", "KW"], restore_value=("dx",))
@triton.jit
def _pairs_bwd_kernel(
    dlt, do, A, dx, dQm, dM, w, v, dw, dv, TP, scale,
    H: tl.constexpr, V: tl.constexpr, KW: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, NV: tl.constexpr,
    PREC: tl.constexpr,
):
    """One chunk, over value tiles: dR = Aᵀ dΔ in place (dx holds dΔ on entry, dR on exit;
    each program reads and writes only its own tiles), dQ = scale·dO Δᵀ (lower part),
    dM = −dR Δᵀ (strictly lower), and dv, dw of x = w ⊙ v (KW > 0)."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    _pairs_bwd_chunk(dlt, do, A, dx, dQm, dM, w, v, dw, dv, i_c, i_bh // H, i_bh % H, TP, scale, H, V, KW, BT, BV,
                     NV, PREC)


@autotune(configs=autotune_configs(), key=["BKS", "BT", "BV"])
@triton.jit
def _state_terms_bwd_kernel(
    G, h, dh, dlt, do, dx, dq0, da0, du0, TP, NT, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
    BKS: tl.constexpr, BV: tl.constexpr, NV: tl.constexpr, PREC: tl.constexpr,
):
    """One chunk and key slice: the S_0 / dS_C terms of dq, da, du, summed over value tiles.

    dq0 = scale·dO S_0ᵀ ⊙ e^G,  da0 = −dR S_0ᵀ ⊙ e^G,  du0 = Δ dS_Cᵀ ⊙ e^{G_C−G}."""
    i_k, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _state_terms_chunk(G, h, dh, dlt, do, dx, dq0, da0, du0, i_k, i_c, i_bh // H, i_bh % H, TP, NT, scale,
                       H, K, V, BT, BKS, BV, NV, PREC)


@autotune(configs=autotune_configs(warps=(1, 2, 4)), key=["BK", "BT", "KB"])
@triton.jit
def _intra_bwd_kernel(
    q, b, k, u, G, dQm, dM, dq0, da0, du0, dq, dk, db, du, TP,
    H: tl.constexpr, K: tl.constexpr, KB: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, NC: tl.constexpr,
    BK: tl.constexpr, PREC: tl.constexpr,
):
    """dq, da (rows t; stored as dk = da ⊙ b and db) and du (columns s) of sub-chunk i:
    the in-chunk pair sums."""
    i_ci, i_bh = tl.program_id(0), tl.program_id(1)
    _intra_bwd_sub(q, b, k, u, G, dQm, dM, dq0, da0, du0, dq, dk, db, du, i_ci // NC, i_ci % NC, i_bh // H,
                   i_bh % H, TP, H, K, KB, BT, BC, NC, BK, PREC)


# ----------------------------------------------------------------------------- launchers
@triton.jit
def _decay_grad_kernel(
    q, dq, k, dk, u, du, h, dh, s_out, dg, TP, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BKS: tl.constexpr, BV: tl.constexpr,
):
    """dg of one (key slice, chunk, batch·head): the suffix sum inside the chunk of
    q⊙dq + a⊙da − u⊙du (a⊙da as k⊙dk), plus rowsum(S_end ⊙ dS_end) of the chunk's end state.

    The scaling identity holds for any span whose end state and its gradient are known, so
    each chunk closes its own sum with its end state (h of the next chunk, S_T for the last)
    and dS_end (dh): no sum runs across chunks, and the rounding of the products (bf16
    with precision="fast") accumulates over one chunk only, not over the whole sequence."""
    i_k, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _decay_grad_chunk(q, dq, k, dk, u, du, h, dh, s_out, dg, i_k, i_c, i_bh // H, i_bh % H, TP, NT,
                      H, K, V, BT, BKS, BV)


def _pad_time(x: torch.Tensor, TP: int) -> torch.Tensor:
    """Zero-pad [B, T, H, D] to TP tokens: zero inputs and zero log-decay are identity steps."""
    T = x.shape[1]
    return x if T == TP else torch.nn.functional.pad(x, (0, 0, 0, 0, 0, TP - T))


@triton.jit
def _chunk_cumsum_kernel(g, G, TP, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    tile = _tile(g, i_b, i_c * BT, i_h, TP, H, K, 0, BT, BK)
    _put(G, tl.cumsum(tile, 0), i_b, i_c * BT, i_h, TP, H, K, 0, BT, BK)


def _chunk_cumsum(g: torch.Tensor, BT: int) -> torch.Tensor:
    """Inclusive cumulative log-decay inside each chunk of BT tokens, fp32 (g padded to TP)."""
    B, TP, H, K = g.shape
    g = g.contiguous()
    G = torch.empty(B, TP, H, K, device=g.device, dtype=torch.float32)
    _chunk_cumsum_kernel[(TP // BT, B * H)](g, G, TP, H=H, K=K, BT=BT, BK=key_block(K))
    return G


def _empty(device, *shapes, dtype=torch.float32) -> list:
    """Uninitialised tensors of the given shapes and one dtype, views into one allocation:
    one allocator call instead of one per tensor (the content gate calls the launchers once
    per chunk, and there host time sets the pace). Group only tensors that die together:
    any live view keeps the whole allocation."""
    sizes = [math.prod(sh) for sh in shapes]
    flat = torch.empty(sum(sizes), device=device, dtype=dtype)
    return [part.view(sh) for part, sh in zip(flat.split(sizes), shapes)]


def value_grads(device, B: int, TP: int, H: int, V: int, KW: int) -> tuple:
    """(dv, dx, dw) of a backward whose kernels form x = w ⊙ v (w of width KW, 0: none):
    dx holds dΔ, then dR = x's gradient; dv = dR ⊙ w and dw = dR ⊙ v. Without a write gate
    dv is dx itself and dw is None. dv and dw get allocations of their own: one may become
    a leaf's .grad."""
    dv = torch.empty(B, TP, H, V, device=device, dtype=torch.float32)
    if KW == 0:
        return dv, dv, None
    return dv, _empty(device, (B, TP, H, V))[0], torch.empty(B, TP, H, KW, device=device, dtype=torch.float32)


def operand_dtype(precision: str) -> torch.dtype:
    """dtype of the saved Q, W and Δ: bf16 under ``fast`` (they are only ever product operands,
    which ``fast`` rounds to bf16 anyway, so storing them rounded changes no bit), fp32
    otherwise."""
    return torch.bfloat16 if precision == "fast" else torch.float32


def _dims(q, x, BT):
    B, T, H, K = q.shape
    V = x.shape[-1]
    NT = triton.cdiv(T, BT)
    BV = block_size(V, MAX_BLOCK_V)
    return B, T, H, K, V, NT, NT * BT, key_block(K), BV, triton.cdiv(V, BV)


GATES = {"b": ("the erase gate b", "dk"), "w": ("the write gate w", "dv")}


def gate_width(gate, n: int, name: str) -> int:
    """KB (name "b") or KW ("w") of a gate [B, T, H, width]: n (a gate per channel), 1 (one
    per token and head, broadcast over the channels) or 0 (None: no gate, as for w when v
    is already x)."""
    if gate is None:
        return 0
    if gate.shape[-1] not in (1, n):
        what, dim = GATES[name]
        raise ValueError(f"{what} has {gate.shape[-1]} channels; expected {n} ({dim}) or 1")
    return gate.shape[-1]


def chunk_forward(q, k, b, u, v, w, g, s0, scale: float, BT: int, precision: str = "exact",
                  out_dtype: torch.dtype = torch.float32):
    """q, k, u, g [B, T, H, dk]; b [B, T, H, dk or 1] (the erase gate: a = b ⊙ k is formed in
    the kernels); v [B, T, H, dv] and w [B, T, H, dv or 1] or None (x = w ⊙ v is formed in the
    kernels; None: x = v); s0 [B, H, dk, dv] fp32; BT in {16, 32, 64}; precision one of
    options.PRECISIONS (``_triton_common.dot_precisions``).

    Returns o [B, T, H, dv] in out_dtype (computed in fp32, rounded once on store),
    S_T [B, H, dk, dv] fp32 and the tensors the backward needs: (G, A, Q, h, Δ, W), padded
    to a multiple of BT tokens; Q, Δ and W in ``operand_dtype(precision)`` (bf16 under fast),
    the rest fp32."""
    if BT not in (16, 32, 64):
        raise ValueError(f"BT={BT!r} is not allowed; choose one of [16, 32, 64]")
    B, T, H, K, V, NT, TP, BK, BV, NV = _dims(q, v, BT)
    KB, KW = gate_width(b, K, "b"), gate_width(w, V, "w")
    q, k, b, u, v = (_pad_time(t, TP) for t in (q, k, b, u, v))
    w = v if w is None else _pad_time(w, TP)  # KW = 0: never read
    G = _chunk_cumsum(_pad_time(g, TP), BT)
    # exact: fp32 products for fp32 q and u; a and x are products with fp32 gates
    (prec, solve_prec), NC = dot_precisions(precision, q, u), BT // BC
    M, XA = _empty(q.device, (B, TP, H, BT), (B, TP, H, V))  # freed on return
    A, h = _empty(q.device, (B, TP, H, BT), (B, NT, H, K, V))  # saved
    Qm, dlt, W = _empty(q.device, (B, TP, H, BT), (B, TP, H, V), (B, TP, H, K),
                        dtype=operand_dtype(precision))  # saved
    s_out = torch.empty(B, H, K, V, device=q.device, dtype=torch.float32)
    o = torch.empty(B, TP, H, V, device=q.device, dtype=out_dtype)
    _intra_fwd_kernel[(NT, NC * NC, B * H)](q, b, k, u, G, M, Qm, TP, H=H, K=K, KB=KB, BT=BT, BC=BC, NC=NC, BK=BK,
                                            PREC=prec)
    _solve_fwd_kernel[(NT, B * H)](b, k, w, v, G, M, A, W, XA, TP, H=H, K=K, KB=KB, V=V, KW=KW, BT=BT, BC=BC,
                                   BK=BK, BV=BV, NV=NV, PREC=solve_prec)
    _state_fwd_kernel[lambda meta: (triton.cdiv(V, meta["BV"]), B * H)](
        u, G, W, XA, s0, h, dlt, s_out, TP, NT, H=H, K=K, V=V, BT=BT, BK=BK, PREC=prec)
    _output_fwd_kernel[(NV, NT, B * H)](q, G, Qm, h, dlt, o, TP, NT, scale, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, PREC=prec)
    LAUNCHES["chunk_fwd"] += 1
    return o[:, :T], s_out, (G, A, Qm, h, dlt, W)


def chunk_backward(q, k, b, u, v, w, saved, s_out, do, ds_out, scale: float, BT: int, precision: str = "exact"):
    """Gradients (dq, dk, db, du, dv, dw, dg, dS_0) of ``chunk_forward``; s_out its S_T; do
    and ds_out fp32. dk is the part through a = b ⊙ k only (the caller adds du where u is k);
    db and dw have b's and w's shapes (dw None when w is; dv is then x's gradient). dg
    [B, T, H, dk] by the scaling identity, closed chunk by chunk (``_decay_grad_kernel``)."""
    G, A, Qm, h, dlt, W = saved
    B, T, H, K, V, NT, TP, BK, BV, NV = _dims(q, do, BT)
    KB, KW = gate_width(b, K, "b"), gate_width(w, V, "w")
    q, k, b, u, v, do = (_pad_time(t, TP) for t in (q, k, b, u, v, do))
    w = v if w is None else _pad_time(w, TP)
    (prec, _), NC = dot_precisions(precision, q, u), BT // BC
    dh, dQm, dM, dq0, da0, du0 = _empty(  # freed on return
        q.device, (B, NT, H, K, V), *[(B, TP, H, BT)] * 2, *[(B, TP, H, K)] * 3)
    dv, dx, dw = value_grads(q.device, B, TP, H, V, KW)
    ds0 = torch.empty(B, H, K, V, device=q.device, dtype=torch.float32)
    dq, dk, du = (torch.empty(B, TP, H, K, device=q.device, dtype=torch.float32) for _ in range(3))
    db = torch.empty(B, TP, H, KB, device=q.device, dtype=torch.float32)
    _state_bwd_kernel[lambda meta: (triton.cdiv(V, meta["BV"]), B * H)](
        q, u, G, Qm, W, do, ds_out, dh, dx, ds0, TP, NT, scale,
        H=H, K=K, V=V, BT=BT, BK=BK, PREC=prec,
    )
    _pairs_bwd_kernel[(NT, B * H)](dlt, do, A, dx, dQm, dM, w, v, dx if dw is None else dw, dv, TP, scale,
                                   H=H, V=V, KW=KW, BT=BT, BV=BV, NV=NV, PREC=prec)
    BKS = min(BK, 64)  # key slices keep three [BT, BKS] accumulators in registers
    _state_terms_bwd_kernel[(triton.cdiv(K, BKS), NT, B * H)](
        G, h, dh, dlt, do, dx, dq0, da0, du0, TP, NT, scale,
        H=H, K=K, V=V, BT=BT, BKS=BKS, BV=BV, NV=NV, PREC=prec,
    )
    _intra_bwd_kernel[(NT * NC, B * H)](
        q, b, k, u, G, dQm, dM, dq0, da0, du0, dq, dk, db, du, TP, H=H, K=K, KB=KB, BT=BT, BC=BC, NC=NC, BK=BK,
        PREC=prec,
    )
    dg = torch.empty(B, TP, H, K, device=q.device, dtype=torch.float32)
    BKS = min(32, BK)
    _decay_grad_kernel[(triton.cdiv(K, BKS), NT, B * H)](
        q, dq, k, dk, u, du, h, dh, s_out, dg, TP, NT, H=H, K=K, V=V, BT=BT, BKS=BKS, BV=min(BV, 32),
    )
    LAUNCHES["chunk_bwd"] += 1
    return dq[:, :T], dk[:, :T], db[:, :T], du[:, :T], dv[:, :T], None if dw is None else dw[:, :T], dg[:, :T], ds0
