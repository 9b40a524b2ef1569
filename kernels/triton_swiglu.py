"""SwiGLU's gating on the joint gate / up projection, one Triton kernel each way.

    h = [a | b]          [..., 2F]: the MLP's gate (a) and up (b) projections as one matmul
    y = silu(a) ⊙ b      [..., F]

The torch path (``carve_models.mlp``) runs two matmuls and then a SiLU and a product, each a
pass over a [B, T, F] tensor, and keeps silu(a) for the backward, whose two products and SiLU
derivative are three more passes. Here a program owns [BR rows, BF channels] of y, reads
its a and b, and writes y; the backward reads a, b and dy and writes dh = [da | db]:

    da = dy ⊙ b ⊙ silu'(a),   silu'(a) = σ(a) (1 + a (1 − σ(a))),   db = dy ⊙ silu(a)

Products are fp32 (the torch path rounds silu(a) to h's dtype before the product); y and dh
take h's dtype. One launch each way, nothing kept but h.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BR, BF = 16, 128  # rows and channels per program


@triton.jit
def _swiglu_fwd_kernel(h, y, N, F, BR: tl.constexpr, BF: tl.constexpr):
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    c = tl.program_id(1) * BF + tl.arange(0, BF)
    m = (r < N)[:, None] & (c < F)[None, :]
    a = tl.load(h + r[:, None] * 2 * F + c[None, :], mask=m, other=0.0).to(tl.float32)
    b = tl.load(h + r[:, None] * 2 * F + F + c[None, :], mask=m, other=0.0).to(tl.float32)
    tl.store(y + r[:, None] * F + c[None, :], (a * tl.sigmoid(a) * b).to(y.dtype.element_ty), mask=m)


@triton.jit
def _swiglu_bwd_kernel(h, dy, dh, N, F, BR: tl.constexpr, BF: tl.constexpr):
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    c = tl.program_id(1) * BF + tl.arange(0, BF)
    m = (r < N)[:, None] & (c < F)[None, :]
    ha = h + r[:, None] * 2 * F + c[None, :]
    a = tl.load(ha, mask=m, other=0.0).to(tl.float32)
    b = tl.load(ha + F, mask=m, other=0.0).to(tl.float32)
    g = tl.load(dy + r[:, None] * F + c[None, :], mask=m, other=0.0).to(tl.float32)
    sig = tl.sigmoid(a)
    da = g * b * sig * (1.0 + a * (1.0 - sig))
    db = g * a * sig
    out = dh + r[:, None] * 2 * F + c[None, :]
    tl.store(out, da.to(dh.dtype.element_ty), mask=m)
    tl.store(out + F, db.to(dh.dtype.element_ty), mask=m)


class SwiGLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        shape, F = h.shape, h.shape[-1] // 2
        h2 = h.reshape(-1, 2 * F).contiguous()
        N = h2.shape[0]
        y = torch.empty(N, F, device=h.device, dtype=h.dtype)
        _swiglu_fwd_kernel[(triton.cdiv(N, BR), triton.cdiv(F, BF))](h2, y, N, F, BR=BR, BF=BF)
        ctx.save_for_backward(h2)
        ctx.shape = shape
        return y.view(*shape[:-1], F)

    @staticmethod
    def backward(ctx, dy):
        (h2,) = ctx.saved_tensors
        N, F = h2.shape[0], h2.shape[1] // 2
        dh = torch.empty_like(h2)
        _swiglu_bwd_kernel[(triton.cdiv(N, BR), triton.cdiv(F, BF))](h2, dy.reshape(-1, F).contiguous(), dh, N, F,
                                                                    BR=BR, BF=BF)
        return dh.view(ctx.shape)


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """silu(a) ⊙ b for h = [a | b] [..., 2F] (the last axis split in halves); [..., F] in h's dtype."""
    if h.shape[-1] % 2:
        raise ValueError(f"swiglu: the last axis ({h.shape[-1]}) must be even, [gate | up] halves")
    return SwiGLUFn.apply(h)
