"""RMSNorm and the gated RMSNorm as one Triton kernel each way.

    n = x / sqrt(mean(x²) + eps)        over the last axis (D channels), fp32
    y = n ⊙ weight                      (``gate`` None: the blocks' pre-norms, the final norm)
    y = n ⊙ weight ⊙ silu(gate)         (the mixer's output norm; weight shared by all heads)

The torch path (``carve_models.norm``) spends eight launches on the forward (cast, square,
mean, add, rsqrt, two products, cast back; three more with a gate) and about twice that
on the backward, each a full pass over a [B, T, D] fp32 tensor. Here one program owns BR
rows (all D channels of each, so the row statistics stay in registers) and loops over
row blocks with a stride of the grid, so the weight gradient is one partial sum per
program rather than per row block.

    forward   y (x's dtype) and rstd = 1 / sqrt(mean(x²) + eps) per row (fp32, kept)
    backward  with s = silu(gate) (1 without) and a = n ⊙ weight:
              dgate = dy ⊙ a ⊙ silu'(gate),   da = dy ⊙ s,   dweight = Σ_rows da ⊙ n
              dx    = rstd · (dn − n · mean(dn ⊙ n)),   dn = da ⊙ weight

Every product and sum is fp32 whatever the inputs' dtypes; the outputs take x's dtype
(the gradients their inputs' dtypes), as the torch path's do. Two launches per call (one
each way) and one sum of the [programs, D] weight partials.

On by default where the model's recurrence runs on Triton (``CARVELAB_FUSED_NORM=0`` turns
it off; ``dispatch.fused_norm_enabled``): measured on an H100, the norms alone take a GDN-2
training step to 0.89x / 0.85x / 0.87x of the torch path's time at the small / medium / large
sizes, and with the fused short convolution to 0.73x / 0.60x / 0.63x (BENCHMARKS.md,
``python -m carvelab.trials.bench_step --variants graph,graph_norm,graph_fused``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

ELEMENTS = 4096  # BR · BD per program tile
MAX_PROGRAMS = 1024


@triton.jit
def _norm_fwd_kernel(x, z, w, y, rstd, N, D, EPS, BR: tl.constexpr, BD: tl.constexpr, GATE: tl.constexpr):
    i_p, n_p = tl.program_id(0), tl.num_programs(0)
    c = tl.arange(0, BD)
    cm = c < D
    wv = tl.load(w + c, mask=cm, other=0.0).to(tl.float32)
    for blk in range(i_p, tl.cdiv(N, BR), n_p):
        r = blk * BR + tl.arange(0, BR)
        m = (r < N)[:, None] & cm[None, :]
        off = r[:, None] * D + c[None, :]
        xv = tl.load(x + off, mask=m, other=0.0).to(tl.float32)
        rs = tl.rsqrt(tl.sum(xv * xv, axis=1) / D + EPS)
        out = xv * rs[:, None] * wv[None, :]
        if GATE:
            zv = tl.load(z + off, mask=m, other=0.0).to(tl.float32)
            out = out * zv * tl.sigmoid(zv)
        tl.store(y + off, out.to(y.dtype.element_ty), mask=m)
        tl.store(rstd + r, rs, mask=r < N)


@triton.jit
def _norm_bwd_kernel(x, z, w, rstd, dy, dx, dz, dw_part, N, D, BR: tl.constexpr, BD: tl.constexpr,
                     GATE: tl.constexpr):
    i_p, n_p = tl.program_id(0), tl.num_programs(0)
    c = tl.arange(0, BD)
    cm = c < D
    wv = tl.load(w + c, mask=cm, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BD], dtype=tl.float32)
    for blk in range(i_p, tl.cdiv(N, BR), n_p):
        r = blk * BR + tl.arange(0, BR)
        m = (r < N)[:, None] & cm[None, :]
        off = r[:, None] * D + c[None, :]
        xv = tl.load(x + off, mask=m, other=0.0).to(tl.float32)
        rs = tl.load(rstd + r, mask=r < N, other=0.0)
        n = xv * rs[:, None]
        g = tl.load(dy + off, mask=m, other=0.0).to(tl.float32)
        if GATE:
            zv = tl.load(z + off, mask=m, other=0.0).to(tl.float32)
            sig = tl.sigmoid(zv)
            dzv = g * n * wv[None, :] * sig * (1.0 + zv * (1.0 - sig))
            tl.store(dz + off, dzv.to(dz.dtype.element_ty), mask=m)
            g = g * zv * sig
        dw_acc += tl.sum(g * n, axis=0)
        dn = g * wv[None, :]
        dxv = rs[:, None] * (dn - n * (tl.sum(dn * n, axis=1) / D)[:, None])
        tl.store(dx + off, dxv.to(dx.dtype.element_ty), mask=m)
    tl.store(dw_part + i_p * D + c, dw_acc, mask=cm)


def _launch(N: int, D: int) -> tuple[int, int, int]:
    """(rows per tile, channel tile, programs) of an [N, D] call."""
    BD = triton.next_power_of_2(D)
    BR = max(1, min(64, ELEMENTS // BD))
    return BR, BD, max(1, min(triton.cdiv(N, BR), MAX_PROGRAMS))


class RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, gate, eps: float):
        shape, D = x.shape, x.shape[-1]
        x2 = x.reshape(-1, D).contiguous()
        z2 = gate.reshape(-1, D).contiguous() if gate is not None else x2
        w = weight.contiguous()
        N = x2.shape[0]
        BR, BD, P = _launch(N, D)
        y = torch.empty_like(x2)
        rstd = torch.empty(N, device=x.device, dtype=torch.float32)
        _norm_fwd_kernel[(P,)](x2, z2, w, y, rstd, N, D, eps, BR=BR, BD=BD, GATE=gate is not None)
        ctx.save_for_backward(x2, z2 if gate is not None else None, w, rstd)
        ctx.shape = shape
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, z2, w, rstd = ctx.saved_tensors
        N, D = x2.shape
        BR, BD, P = _launch(N, D)
        dx = torch.empty_like(x2)
        dz = torch.empty_like(z2) if z2 is not None else None
        dw_part = torch.empty(P, D, device=x2.device, dtype=torch.float32)
        _norm_bwd_kernel[(P,)](x2, z2 if z2 is not None else x2, w, rstd, dy.reshape(-1, D).contiguous(), dx,
                               dz if dz is not None else dx, dw_part, N, D, BR=BR, BD=BD, GATE=z2 is not None)
        dw = dw_part.sum(0).to(w.dtype)
        return dx.view(ctx.shape), dw, (dz.view(ctx.shape) if dz is not None else None), None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, gate: torch.Tensor | None = None
             ) -> torch.Tensor:
    """RMSNorm of x [..., D] over its last axis with ``weight`` [D], times silu(``gate``)
    (x's shape) when given; x's dtype out, fp32 inside."""
    D = x.shape[-1]
    if weight.shape != (D,):
        raise ValueError(f"rms_norm: weight of shape {tuple(weight.shape)} does not match x's last axis {D}")
    if gate is not None and gate.shape != x.shape:
        raise ValueError(f"rms_norm: gate of shape {tuple(gate.shape)} does not match x's {tuple(x.shape)}")
    return RMSNormFn.apply(x, weight, gate, eps)
