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

The mixer's q, k and v go through one call (``short_convs``): each kernel takes up to three
tensors, and a program's channel index picks which one it works on (q's heads, then k's,
then v's channel tiles), so a layer makes three launches and one sum, not nine and three.
Each tensor's programs run the same code as a call of that tensor alone.

On by default where the mixer's recurrence runs on Triton (``CARVELAB_FUSED_CONV=0`` turns it
off; ``fused.fused_conv_enabled``): measured on an H100, it takes a GDN-2 training step to
0.84x / 0.75x / 0.76x of the torch path's time at the small / medium / large sizes (BENCHMARKS.md,
``python -m carvelab.trials.bench_step --variants graph,graph_conv``).
"""
from __future__ import annotations

from typing import NamedTuple

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
def _tile_coords(i_t, i_c, C, D, BT: tl.constexpr, BC: tl.constexpr, NORM: tl.constexpr):
    t = i_t * BT + tl.arange(0, BT)
    if NORM:  # one head per program: channels [i_c D, (i_c + 1) D)
        c = i_c * D + tl.arange(0, BC)
        cm = tl.arange(0, BC) < D
    else:
        c = i_c * BC + tl.arange(0, BC)
        cm = c < C
    return t, c, cm


@triton.jit
def _fwd_tile(x, w, y, C, D, SX_B, SX_T, i_b, i_t, i_c, T, EPS, W: tl.constexpr, BT: tl.constexpr,
              BC: tl.constexpr, NORM: tl.constexpr):
    t, c, cm = _tile_coords(i_t, i_c, C, D, BT, BC, NORM)
    base = i_b * T * C
    pre = _pre_tile(x, w, i_b * SX_B, SX_T, t, c, cm, T, W, BT, BC)
    s = pre * tl.sigmoid(pre)
    if NORM:
        s = s * tl.rsqrt(tl.sum(s * s, axis=1) + EPS)[:, None]
    m = (t < T)[:, None] & cm[None, :]
    tl.store(y + base + t[:, None] * C + c[None, :], s.to(y.dtype.element_ty), mask=m)


@triton.jit
def _bwd_pre_tile(x, w, dy, dpre, dw_part, C, D, SX_B, SX_T, DW_ROW, i_b, i_t, i_c, T, EPS, NT, W: tl.constexpr,
                  BT: tl.constexpr, BC: tl.constexpr, NORM: tl.constexpr):
    t, c, cm = _tile_coords(i_t, i_c, C, D, BT, BC, NORM)
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
    row = (i_b * NT + i_t) * DW_ROW
    for j in tl.static_range(W):
        tt = t - (W - 1) + j
        mj = ((tt >= 0) & (tt < T))[:, None] & cm[None, :]
        xv = tl.load(x + i_b * SX_B + tt[:, None] * SX_T + c[None, :], mask=mj, other=0.0).to(tl.float32)
        tl.store(dw_part + row + c * W + j, tl.sum(dp * xv, axis=0), mask=cm)


@triton.jit
def _bwd_x_tile(w, dpre, dx, C, D, i_b, i_t, i_c, T, W: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                NORM: tl.constexpr):
    t, c, cm = _tile_coords(i_t, i_c, C, D, BT, BC, NORM)
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


# Each kernel runs up to three segments (q, k, v: one launch for all three); the program's
# channel index picks its segment (the first N0 programs segment 0, the next N1 segment 1, the
# rest segment 2). A call of one tensor passes it thrice with N1 = N2 = 0.

@triton.jit
def _conv_fwd_kernel(x0, w0, y0, C0, D0, SB0, ST0, N0, x1, w1, y1, C1, D1, SB1, ST1, N1, x2, w2, y2, C2, D2, SB2, ST2,
                     T, EPS, W: tl.constexpr, BT: tl.constexpr, BC0: tl.constexpr, BC1: tl.constexpr,
                     BC2: tl.constexpr, NORM0: tl.constexpr, NORM1: tl.constexpr, NORM2: tl.constexpr):
    i_b, i_t, i_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if i_c < N0:
        _fwd_tile(x0, w0, y0, C0, D0, SB0, ST0, i_b, i_t, i_c, T, EPS, W, BT, BC0, NORM0)
    elif i_c < N0 + N1:
        _fwd_tile(x1, w1, y1, C1, D1, SB1, ST1, i_b, i_t, i_c - N0, T, EPS, W, BT, BC1, NORM1)
    else:
        _fwd_tile(x2, w2, y2, C2, D2, SB2, ST2, i_b, i_t, i_c - N0 - N1, T, EPS, W, BT, BC2, NORM2)


@triton.jit
def _conv_bwd_pre_kernel(x0, w0, dy0, dp0, dw0, C0, D0, SB0, ST0, N0, x1, w1, dy1, dp1, dw1, C1, D1, SB1, ST1, N1,
                         x2, w2, dy2, dp2, dw2, C2, D2, SB2, ST2, DW_ROW, T, EPS, NT, W: tl.constexpr,
                         BT: tl.constexpr, BC0: tl.constexpr, BC1: tl.constexpr, BC2: tl.constexpr,
                         NORM0: tl.constexpr, NORM1: tl.constexpr, NORM2: tl.constexpr):
    i_b, i_t, i_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if i_c < N0:
        _bwd_pre_tile(x0, w0, dy0, dp0, dw0, C0, D0, SB0, ST0, DW_ROW, i_b, i_t, i_c, T, EPS, NT, W, BT, BC0, NORM0)
    elif i_c < N0 + N1:
        _bwd_pre_tile(x1, w1, dy1, dp1, dw1, C1, D1, SB1, ST1, DW_ROW, i_b, i_t, i_c - N0, T, EPS, NT, W, BT, BC1,
                      NORM1)
    else:
        _bwd_pre_tile(x2, w2, dy2, dp2, dw2, C2, D2, SB2, ST2, DW_ROW, i_b, i_t, i_c - N0 - N1, T, EPS, NT, W, BT,
                      BC2, NORM2)


@triton.jit
def _conv_bwd_x_kernel(w0, dp0, dx0, C0, D0, N0, w1, dp1, dx1, C1, D1, N1, w2, dp2, dx2, C2, D2, T, W: tl.constexpr,
                       BT: tl.constexpr, BC0: tl.constexpr, BC1: tl.constexpr, BC2: tl.constexpr,
                       NORM0: tl.constexpr, NORM1: tl.constexpr, NORM2: tl.constexpr):
    i_b, i_t, i_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if i_c < N0:
        _bwd_x_tile(w0, dp0, dx0, C0, D0, i_b, i_t, i_c, T, W, BT, BC0, NORM0)
    elif i_c < N0 + N1:
        _bwd_x_tile(w1, dp1, dx1, C1, D1, i_b, i_t, i_c - N0, T, W, BT, BC1, NORM1)
    else:
        _bwd_x_tile(w2, dp2, dx2, C2, D2, i_b, i_t, i_c - N0 - N1, T, W, BT, BC2, NORM2)


class _Seg(NamedTuple):
    """One tensor's launch geometry: channels C, channels per norm group D (C without the
    norm), channel tile BC, channel programs N, and whether its heads are normalised."""
    C: int
    D: int
    BC: int
    N: int
    norm: bool


def _seg(C: int, heads: int) -> _Seg:
    if heads:
        D = C // heads
        return _Seg(C, D, triton.next_power_of_2(D), heads, True)
    BC = min(triton.next_power_of_2(C), 64)
    return _Seg(C, C, BC, triton.cdiv(C, BC), False)


def _three(items: list) -> list:
    """Up to three segments' items, the last repeated to fill three (``_seg_args`` gives the
    repeats no programs)."""
    return items + [items[-1]] * (3 - len(items))


def _consts(segs: list[_Seg]) -> dict:
    padded = _three(segs)
    return {**{f"BC{i}": s.BC for i, s in enumerate(padded)}, **{f"NORM{i}": s.norm for i, s in enumerate(padded)}}


def _seg_args(segs: list[_Seg], tensors: list[tuple], strides: list[tuple]) -> list:
    """The kernels' per-segment arguments: each segment's tensors, C, D, its x strides (where
    given) and, for the first two, their program counts (0 for a padding segment)."""
    args = []
    for i in range(3):
        j = min(i, len(segs) - 1)
        args += [*tensors[j], segs[j].C, segs[j].D, *strides[j]] + ([segs[i].N if i < len(segs) else 0] if i < 2 else [])
    return args


class ShortConvFn(torch.autograd.Function):
    """silu(conv(x_i)) (each head normalised where heads_i > 0) of one to three [B, T, C_i]
    tensors of the same B and T, in one launch forward and two backward."""

    @staticmethod
    def forward(ctx, eps: float, heads: tuple, *xw):
        n = len(heads)
        xs = [x if x.stride(2) == 1 else x.contiguous() for x in xw[:n]]  # column slices are read in place
        ws = [w.reshape(w.shape[0], -1).contiguous() for w in xw[n:]]
        B, T, _ = xs[0].shape
        segs = [_seg(x.shape[2], h) for x, h in zip(xs, heads)]
        ys = [torch.empty(B, T, s.C, device=x.device, dtype=torch.float32 if s.norm else x.dtype)
              for x, s in zip(xs, segs)]
        args = _seg_args(segs, list(zip(xs, ws, ys)), [(x.stride(0), x.stride(1)) for x in xs])
        grid = (B, triton.cdiv(T, BT), sum(s.N for s in segs))
        _conv_fwd_kernel[grid](*args, T, eps, W=ws[0].shape[1], BT=BT, **_consts(segs))
        ctx.save_for_backward(*xs, *ws)
        ctx.eps, ctx.segs = eps, segs
        ctx.weight_shapes, ctx.weight_dtypes = [w.shape for w in xw[n:]], [w.dtype for w in xw[n:]]
        return tuple(ys)

    @staticmethod
    def backward(ctx, *dys):
        segs, n = ctx.segs, len(ctx.segs)
        xs, ws = ctx.saved_tensors[:n], ctx.saved_tensors[n:]
        B, T, _ = xs[0].shape
        W = ws[0].shape[1]
        NT = triton.cdiv(T, BT)
        grid = (B, NT, sum(s.N for s in segs))
        dys = [dy.contiguous() for dy in dys]  # an unused output's gradient arrives as zeros
        dpres = [torch.empty(B, T, s.C, device=x.device, dtype=torch.float32) for x, s in zip(xs, segs)]
        # every segment's partial dw in one buffer (every entry written), summed once
        dw_part = torch.empty(B * NT, sum(s.C for s in segs), W, device=xs[0].device, dtype=torch.float32)
        dw_parts = dw_part.split([s.C for s in segs], 1)
        args = _seg_args(segs, list(zip(xs, ws, dys, dpres, dw_parts)), [(x.stride(0), x.stride(1)) for x in xs])
        _conv_bwd_pre_kernel[grid](*args, dw_part.stride(0), T, ctx.eps, NT, W=W, BT=BT, **_consts(segs))
        dxs = [torch.empty(B, T, s.C, device=x.device, dtype=x.dtype) for x, s in zip(xs, segs)]
        _conv_bwd_x_kernel[grid](*_seg_args(segs, list(zip(ws, dpres, dxs)), [()] * n), T, W=W, BT=BT,
                                 **_consts(segs))
        dws = dw_part.sum(0).split([s.C for s in segs])
        return (None, None, *dxs, *(d.reshape(shape).to(dtype)
                                    for d, shape, dtype in zip(dws, ctx.weight_shapes, ctx.weight_dtypes)))


def short_conv(x: torch.Tensor, weight: torch.Tensor, heads: int = 0, eps: float = 1e-6) -> torch.Tensor:
    """silu(causal depthwise conv(x, weight)) of x [B, T, C] with weight [C, 1, W], and with
    ``heads`` > 0 each head's C / heads channels l2-normalised with ``eps`` (fp32 out);
    contiguous [B, T, C]."""
    return short_convs([(x, weight, heads)], eps)[0]


def short_convs(items: list[tuple[torch.Tensor, torch.Tensor, int]], eps: float = 1e-6) -> tuple[torch.Tensor, ...]:
    """``short_conv`` of one to three (x, weight, heads) of the same batch, length and width
    (the mixer's q, k and v), in one launch forward and two backward."""
    if not 1 <= len(items) <= 3:
        raise ValueError(f"short_convs: one to three tensors; got {len(items)}")
    for x, w, heads in items:
        if heads and x.shape[-1] % heads:
            raise ValueError(f"short_conv: {x.shape[-1]} channels do not split into heads={heads}")
        if x.dim() != 3 or x.shape[:2] != items[0][0].shape[:2] or w.shape[-1] != items[0][1].shape[-1]:
            raise ValueError("short_convs: every x must be [B, T, C] of one B and T, every weight [C, 1, W] of one "
                             f"W; got {[(tuple(x.shape), tuple(w.shape)) for x, w, _ in items]}")
    return ShortConvFn.apply(eps, tuple(h for _, _, h in items), *(x for x, _, _ in items), *(w for _, w, _ in items))
