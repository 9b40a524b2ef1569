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

    forward   y (x's dtype, or the one asked for) and rstd = 1 / sqrt(mean(x²) + eps) per row (fp32, kept)
    backward  with s = silu(gate) (1 without) and a = n ⊙ weight:
              dgate = dy ⊙ a ⊙ silu'(gate),   da = dy ⊙ s,   dweight = Σ_rows da ⊙ n
              dx    = rstd · (dn − n · mean(dn ⊙ n)),   dn = da ⊙ weight

The gate may be a column slice of a wider tensor (the mixer's joint projection): it is read
in place (``_gate_layout``). Every product and sum is fp32 whatever the inputs' dtypes; the outputs take x's dtype
(the gradients their inputs' dtypes), as the torch path's do. Two launches per call (one
each way) and one sum of the [programs, D] weight partials.

On by default where the model's recurrence runs on Triton (``CARVELAB_FUSED_NORM=0`` turns
it off; ``fused.fused_norm_enabled``): measured on an H100, the norms alone take a GDN-2
training step to 0.89x / 0.85x / 0.87x of the torch path's time at the small / medium / large
sizes, and with the fused short convolution to 0.73x / 0.60x / 0.63x (BENCHMARKS.md,
``python -m carvelab.trials.bench_step --variants graph,graph_norm,graph_fused``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from carvelab.kernels._triton_common import row_launch

ELEMENTS = 4096  # BR · BD per program tile
MAX_PROGRAMS = 1024


@triton.jit
def _gate_offsets(r, c, D, ZH, SZ):
    """Where row r's channels c of the gate are: rows come in groups of ZH (heads) of D
    channels each, consecutive groups SZ apart (ZH = 1, SZ = D: contiguous)."""
    return ((r // ZH) * SZ + (r % ZH) * D)[:, None] + c[None, :]


@triton.jit
def _norm_fwd_kernel(x, z, w, y, rstd, d, h, N, D, EPS, ZH, SZ, BR: tl.constexpr, BD: tl.constexpr,
                     GATE: tl.constexpr, RESID: tl.constexpr):
    i_p, n_p = tl.program_id(0), tl.num_programs(0)
    c = tl.arange(0, BD)
    cm = c < D
    wv = tl.load(w + c, mask=cm, other=0.0).to(tl.float32)
    for blk in range(i_p, tl.cdiv(N, BR), n_p):
        r = blk * BR + tl.arange(0, BR)
        m = (r < N)[:, None] & cm[None, :]
        off = r[:, None] * D + c[None, :]
        xv = tl.load(x + off, mask=m, other=0.0).to(tl.float32)
        if RESID:  # h = x + d, the residual stream in x's dtype, is what is normalised
            xv = (xv + tl.load(d + off, mask=m, other=0.0).to(tl.float32)).to(h.dtype.element_ty)
            tl.store(h + off, xv, mask=m)
            xv = xv.to(tl.float32)
        rs = tl.rsqrt(tl.sum(xv * xv, axis=1) / D + EPS)
        out = xv * rs[:, None] * wv[None, :]
        if GATE:
            zv = tl.load(z + _gate_offsets(r, c, D, ZH, SZ), mask=m, other=0.0).to(tl.float32)
            out = out * zv * tl.sigmoid(zv)
        tl.store(y + off, out.to(y.dtype.element_ty), mask=m)
        tl.store(rstd + r, rs, mask=r < N)


@triton.jit
def _norm_bwd_kernel(x, z, w, rstd, dy, dx, dz, dw_part, dh, dd, N, D, ZH, SZ, BR: tl.constexpr, BD: tl.constexpr,
                     GATE: tl.constexpr, RESID: tl.constexpr, DH: tl.constexpr):
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
            zv = tl.load(z + _gate_offsets(r, c, D, ZH, SZ), mask=m, other=0.0).to(tl.float32)
            sig = tl.sigmoid(zv)
            dzv = g * n * wv[None, :] * sig * (1.0 + zv * (1.0 - sig))
            tl.store(dz + off, dzv.to(dz.dtype.element_ty), mask=m)
            g = g * zv * sig
        dw_acc += tl.sum(g * n, axis=0)
        dn = g * wv[None, :]
        dxv = rs[:, None] * (dn - n * (tl.sum(dn * n, axis=1) / D)[:, None])
        if DH:  # the residual stream's own gradient joins the norm's
            dxv += tl.load(dh + off, mask=m, other=0.0).to(tl.float32)
        tl.store(dx + off, dxv.to(dx.dtype.element_ty), mask=m)
        if RESID:
            tl.store(dd + off, dxv.to(dd.dtype.element_ty), mask=m)
    tl.store(dw_part + i_p * D + c, dw_acc, mask=cm)


def _launch(N: int, D: int) -> tuple[int, int, int]:
    """(rows per tile, channel tile, programs) of an [N, D] call (``row_launch``)."""
    return row_launch(N, D, ELEMENTS, MAX_PROGRAMS)


class RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, gate, eps: float, out_dtype):
        shape, D = x.shape, x.shape[-1]
        x2 = x.reshape(-1, D).contiguous()
        z, ZH, SZ = _gate_layout(gate) if gate is not None else (x2, 1, D)
        w = weight.contiguous()
        N = x2.shape[0]
        BR, BD, P = _launch(N, D)
        y = torch.empty(x2.shape, device=x.device, dtype=out_dtype)
        rstd = torch.empty(N, device=x.device, dtype=torch.float32)
        _norm_fwd_kernel[(P,)](x2, z, w, y, rstd, x2, x2, N, D, eps, ZH, SZ, BR=BR, BD=BD, GATE=gate is not None,
                               RESID=False)
        ctx.save_for_backward(x2, z if gate is not None else None, w, rstd)
        ctx.shape, ctx.gate_layout = shape, (ZH, SZ)
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, z, w, rstd = ctx.saved_tensors
        N, D = x2.shape
        BR, BD, P = _launch(N, D)
        dx = torch.empty_like(x2)
        dz = torch.empty(N, D, device=x2.device, dtype=z.dtype) if z is not None else None
        dw_part = torch.empty(P, D, device=x2.device, dtype=torch.float32)
        _norm_bwd_kernel[(P,)](x2, z if z is not None else x2, w, rstd, dy.reshape(-1, D).contiguous(), dx,
                               dz if dz is not None else dx, dw_part, dx, dx, N, D, *ctx.gate_layout, BR=BR, BD=BD,
                               GATE=z is not None, RESID=False, DH=False)
        dw = dw_part.sum(0).to(w.dtype)
        return dx.view(ctx.shape), dw, (dz.view(ctx.shape) if dz is not None else None), None, None


class AddRMSNormFn(torch.autograd.Function):
    """(h, y) = (x + d, RMSNorm(x + d)): the residual add and the next norm in one pass."""

    @staticmethod
    def forward(ctx, x, d, weight, eps: float, out_dtype):
        shape, D = x.shape, x.shape[-1]
        x2, d2 = x.reshape(-1, D).contiguous(), d.reshape(-1, D).contiguous()
        w = weight.contiguous()
        N = x2.shape[0]
        BR, BD, P = _launch(N, D)
        h = torch.empty_like(x2)
        y = torch.empty(x2.shape, device=x.device, dtype=out_dtype)
        rstd = torch.empty(N, device=x.device, dtype=torch.float32)
        _norm_fwd_kernel[(P,)](x2, x2, w, y, rstd, d2, h, N, D, eps, 1, D, BR=BR, BD=BD, GATE=False, RESID=True)
        ctx.save_for_backward(h, w, rstd)
        ctx.shape, ctx.d_dtype = shape, d.dtype
        ctx.set_materialize_grads(False)  # h read by nothing but its norm (the last add): no zeros to add
        return h.view(shape), y.view(shape)

    @staticmethod
    def backward(ctx, dh, dy):
        h, w, rstd = ctx.saved_tensors
        N, D = h.shape
        BR, BD, P = _launch(N, D)
        dx = torch.empty_like(h)
        dd = torch.empty(N, D, device=h.device, dtype=ctx.d_dtype)
        dw_part = torch.empty(P, D, device=h.device, dtype=torch.float32)
        if dy is None:
            dy = torch.zeros_like(h)
        dh2 = dh.reshape(-1, D).contiguous() if dh is not None else dx
        _norm_bwd_kernel[(P,)](h, h, w, rstd, dy.reshape(-1, D).contiguous(), dx, dx, dw_part, dh2, dd, N, D, 1, D,
                               BR=BR, BD=BD, GATE=False, RESID=True, DH=dh is not None)
        return dx.view(ctx.shape), dd.view(ctx.shape), dw_part.sum(0).to(w.dtype), None, None


def _gate_layout(gate: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(tensor, ZH, SZ) for the kernels: a contiguous gate as it is; a [..., H, D] gate whose
    heads are contiguous and whose leading axes step evenly (a column slice of a wider
    [B, T, *] tensor, the mixer's joint projection) in place; anything else copied."""
    D = gate.shape[-1]
    if gate.is_contiguous():
        return gate, 1, D
    if gate.dim() >= 3 and gate.stride(-1) == 1 and gate.stride(-2) == D:
        lead, SZ = gate.shape[:-2], gate.stride(-3)
        if all(gate.stride(i) == gate.stride(i + 1) * lead[i + 1] for i in range(len(lead) - 1)):
            return gate, gate.shape[-2], SZ
    return gate.contiguous(), 1, D


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, gate: torch.Tensor | None = None,
             out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """RMSNorm of x [..., D] over its last axis with ``weight`` [D], times silu(``gate``)
    (x's shape) when given; ``out_dtype`` (default x's dtype) out, fp32 inside."""
    D = x.shape[-1]
    if weight.shape != (D,):
        raise ValueError(f"rms_norm: weight of shape {tuple(weight.shape)} does not match x's last axis {D}")
    if gate is not None and gate.shape != x.shape:
        raise ValueError(f"rms_norm: gate of shape {tuple(gate.shape)} does not match x's {tuple(x.shape)}")
    return RMSNormFn.apply(x, weight, gate, eps, x.dtype if out_dtype is None else out_dtype)


def add_rms_norm(x: torch.Tensor, d: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                 out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, RMSNorm(h)) with h = x + d (x's dtype; d of any float dtype, same shape): a block's
    residual add and the norm that reads its result, one launch each way. The norm's output
    in ``out_dtype`` (default x's dtype); the backward adds h's own gradient to the norm's."""
    D = x.shape[-1]
    if d.shape != x.shape:
        raise ValueError(f"add_rms_norm: d of shape {tuple(d.shape)} does not match x's {tuple(x.shape)}")
    if weight.shape != (D,):
        raise ValueError(f"add_rms_norm: weight of shape {tuple(weight.shape)} does not match x's last axis {D}")
    return AddRMSNormFn.apply(x, d, weight, eps, x.dtype if out_dtype is None else out_dtype)
