"""The mixer's short convolution as Triton kernels on the [B, T, C] layout: causal depthwise
convolution, SiLU and (for q and k) the per-head l2 normalisation in one pass each way.

    pre_t[c] = Σ_{j<W} w[c, j] · x_{t−(W−1)+j}[c]   (x_{<0} = 0),   s_t = silu(pre_t)
    y_t = s_t                                       (``heads`` = 0: v)
    y_t = s_t / sqrt(Σ_{c in head} s_t[c]² + eps)   (``heads`` = H: q and k, each head's dk channels)

The torch path (``carve_models.conv.ShortConv`` + ``mixer.l2norm``) transposes x to [B, C, T]
for ``conv1d`` and back, so its output is a view whose time axis is the fastest, and every
op after it (the SiLU, the fp32 cast, the norm's square, sum, rsqrt and product, their
backward, the recurrence wrapper's copies) runs on strided tensors. Here one program owns a
[BT tokens, BC channels] tile (with ``heads``: the channels of one head), reads the W shifted
rows of x it needs, and writes a contiguous y: fp32 with the norm (as ``l2norm`` returns),
x's dtype without it. Products and sums are fp32 (the torch path rounds the convolution to
x's dtype before the SiLU). x may be a column slice of a wider [B, T, *] tensor (the mixer's
joint q, k, v, z projection): it is read in place through its batch and token strides.

Backward: ``_conv_bwd_pre_kernel`` recomputes the tile's pre-activations, forms dpre (SiLU'
and the norm's Jacobian ``(dy − y (y·dy)) / n``) into an fp32 buffer, and each program's
partial dw (Σ over its tokens of dpre_t[c] x_{t−(W−1)+j}[c]) into a [B·NT, C, W] buffer that
torch sums (deterministic: no atomics); ``_conv_bwd_x_kernel`` gives dx_t = Σ_j w[c, j]
dpre_{t+(W−1)−j}. Three launches per call (one forward, two backward) and one sum.

On by default where the mixer's recurrence runs on Triton (``CARVELAB_FUSED_CONV=0`` turns it
off; ``fused.fused_conv_enabled``): measured on an H100, it takes a GDN-2 training step to
0.84x / 0.75x / 0.76x of the torch path's time at the small / medium / large sizes (BENCHMARKS.md,
``python -m carvelab.trials.bench_step --variants graph,graph_conv``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BT = 32  # tokens per program


@triton.jit
def _pre_tile(x, w, xbase, SX_T, t, c, cm, T, W: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    """The pre-activations [BT, BC] of tokens t, channels c (fp32); x's tokens SX_T apart."""
    acc = tl.zeros([BT, BC], dtype=tl.float32)
    for j in tl.static_range(W):
        tt = t - (W - 1) + j
        m = ((tt >= 0) & (tt < T))[:, None] & cm[None, :]
        xv = tl.load(x + xbase + tt[:, None] * SX_T + c[None, :], mask=m, other=0.0).to(tl.float32)
        wj = tl.load(w + c * W + j, mask=cm, other=0.0).to(tl.float32)
        acc += xv * wj[None, :]
    return acc


@triton.jit
def _tile_coords(T, C, D, BT: tl.constexpr, BC: tl.constexpr, NORM: tl.constexpr):
    i_t, i_c = tl.program_id(1), tl.program_id(2)
    t = i_t * BT + tl.arange(0, BT)
    if NORM:  # one head per program: channels [i_c D, (i_c + 1) D)
        c = i_c * D + tl.arange(0, BC)
        cm = tl.arange(0, BC) < D
    else:
        c = i_c * BC + tl.arange(0, BC)
        cm = c < C
    return t, c, cm


@triton.jit
def _conv_fwd_kernel(x, w, y, T, C, D, EPS, SX_B, SX_T, W: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                     NORM: tl.constexpr):
    i_b = tl.program_id(0)
    t, c, cm = _tile_coords(T, C, D, BT, BC, NORM)
    base = i_b * T * C
    pre = _pre_tile(x, w, i_b * SX_B, SX_T, t, c, cm, T, W, BT, BC)
    s = pre * tl.sigmoid(pre)
    if NORM:
        s = s * tl.rsqrt(tl.sum(s * s, axis=1) + EPS)[:, None]
    m = (t < T)[:, None] & cm[None, :]
    tl.store(y + base + t[:, None] * C + c[None, :], s.to(y.dtype.element_ty), mask=m)


@triton.jit
def _conv_bwd_pre_kernel(x, w, dy, dpre, dw_part, T, C, D, EPS, NT, SX_B, SX_T, W: tl.constexpr,
                         BT: tl.constexpr, BC: tl.constexpr, NORM: tl.constexpr):
    i_b, i_t = tl.program_id(0), tl.program_id(1)
    t, c, cm = _tile_coords(T, C, D, BT, BC, NORM)
    base = i_b * T * C
    m = (t < T)[:, None] & cm[None, :]
    pre = _pre_tile(x, w, i_b * SX_B, SX_T, t, c, cm, T, W, BT, BC)
    sig = tl.sigmoid(pre)
    s = pre * sig
    g = tl.load(dy + base + t[:, None] * C + c[None, :], mask=m, other=0.0).to(tl.float32)
    if NORM:  # y = s / n: ds = (dy − y (y·dy)) / n
        rn = tl.rsqrt(tl.sum(s * s, axis=1) + EPS)
        yv = s * rn[:, None]
        g = (g - yv * tl.sum(yv * g, axis=1)[:, None]) * rn[:, None]
    dp = g * sig * (1.0 + pre * (1.0 - sig))
    dp = tl.where(m, dp, 0.0)
    tl.store(dpre + base + t[:, None] * C + c[None, :], dp, mask=m)
    row = (i_b * NT + i_t) * C * W
    for j in tl.static_range(W):
        tt = t - (W - 1) + j
        mj = ((tt >= 0) & (tt < T))[:, None] & cm[None, :]
        xv = tl.load(x + i_b * SX_B + tt[:, None] * SX_T + c[None, :], mask=mj, other=0.0).to(tl.float32)
        tl.store(dw_part + row + c * W + j, tl.sum(dp * xv, axis=0), mask=cm)


@triton.jit
def _conv_bwd_x_kernel(w, dpre, dx, T, C, D, W: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                       NORM: tl.constexpr):
    i_b = tl.program_id(0)
    t, c, cm = _tile_coords(T, C, D, BT, BC, NORM)
    base = i_b * T * C
    acc = tl.zeros([BT, BC], dtype=tl.float32)
    for j in tl.static_range(W):
        tt = t + (W - 1) - j
        mj = (tt < T)[:, None] & cm[None, :]
        dp = tl.load(dpre + base + tt[:, None] * C + c[None, :], mask=mj, other=0.0)
        wj = tl.load(w + c * W + j, mask=cm, other=0.0).to(tl.float32)
        acc += dp * wj[None, :]
    m = (t < T)[:, None] & cm[None, :]
    tl.store(dx + base + t[:, None] * C + c[None, :], acc.to(dx.dtype.element_ty), mask=m)


def _grid(B: int, T: int, C: int, heads: int) -> tuple[tuple, int, int]:
    """(grid, channel tile, channels per head) of one call."""
    if heads:
        D = C // heads
        return (B, triton.cdiv(T, BT), heads), triton.next_power_of_2(D), D
    BC = min(triton.next_power_of_2(C), 64)
    return (B, triton.cdiv(T, BT), triton.cdiv(C, BC)), BC, C


class ShortConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, heads: int, eps: float):
        B, T, C = x.shape
        if x.stride(2) != 1:  # a column slice of a wider [B, T, *] tensor is read in place
            x = x.contiguous()
        w = weight.reshape(C, -1).contiguous()
        W = w.shape[1]
        grid, BC, D = _grid(B, T, C, heads)
        y = torch.empty(B, T, C, device=x.device, dtype=torch.float32 if heads else x.dtype)
        _conv_fwd_kernel[grid](x, w, y, T, C, D, eps, x.stride(0), x.stride(1), W=W, BT=BT, BC=BC, NORM=bool(heads))
        ctx.save_for_backward(x, w)
        ctx.heads, ctx.eps, ctx.weight_shape, ctx.weight_dtype = heads, eps, weight.shape, weight.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        B, T, C = x.shape
        W = w.shape[1]
        grid, BC, D = _grid(B, T, C, ctx.heads)
        NT = grid[1]
        dpre = torch.empty(B, T, C, device=x.device, dtype=torch.float32)
        dw_part = torch.empty(B * NT, C, W, device=x.device, dtype=torch.float32)  # every entry written
        _conv_bwd_pre_kernel[grid](x, w, dy.contiguous(), dpre, dw_part, T, C, D, ctx.eps, NT, x.stride(0),
                                   x.stride(1), W=W, BT=BT, BC=BC, NORM=bool(ctx.heads))
        dx = torch.empty(B, T, C, device=x.device, dtype=x.dtype)
        _conv_bwd_x_kernel[grid](w, dpre, dx, T, C, D, W=W, BT=BT, BC=BC, NORM=bool(ctx.heads))
        dw = dw_part.sum(0).reshape(ctx.weight_shape).to(ctx.weight_dtype)
        return dx, dw, None, None


def short_conv(x: torch.Tensor, weight: torch.Tensor, heads: int = 0, eps: float = 1e-6) -> torch.Tensor:
    """silu(causal depthwise conv(x, weight)) of x [B, T, C] with weight [C, 1, W], and with
    ``heads`` > 0 each head's C / heads channels l2-normalised with ``eps`` (fp32 out);
    contiguous [B, T, C]."""
    if heads and x.shape[-1] % heads:
        raise ValueError(f"short_conv: {x.shape[-1]} channels do not split into heads={heads}")
    return ShortConvFn.apply(x, weight, heads, eps)
