"""The log-decay gate as one Triton kernel each way.

    u = f + dt_bias                  f [B, T, H·n] (a projection, any float dtype), dt_bias [H·n]
    g = −exp(A_log[h]) · softplus(u) [B, T, H, n] fp32, h the head of channel j = h·n + i

softplus is torch's (beta 1, threshold 20: u itself above 20) with log1p done exactly
(``log(y) · x / (y − 1)`` for y = 1 + x, x = e^u; a plain ``log(1 + e^u)`` loses up to 6e-5 of
its value at the initial dt ≈ 1e-3). The torch path (``carve_models.gates.DecayGate``) spends
five launches on the forward (cast, add, exp, softplus, product) and about twice that on the
backward, each a pass over a [B, T, H·n] fp32 tensor. Here one program owns BR rows (tokens)
of all H·n channels and loops over row blocks with a stride of the grid:

    backward   du = dg · (−exp(A_log[h])) · σ(u)   (σ(u) = 1 above the threshold),
               df = du (f's dtype),  d dt_bias = Σ_rows du,  dA_log[h] = Σ_rows,i dg · g

with the two sums as one partial row per program, which torch adds up (deterministic).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from carvelab.kernels._triton_common import row_launch

ELEMENTS = 4096  # BR · BC per program tile
MAX_PROGRAMS = 1024
THRESHOLD = 20.0  # torch.nn.functional.softplus's default


@triton.jit
def _softplus(u, THRESHOLD: tl.constexpr):
    x = tl.exp(tl.minimum(u, THRESHOLD))
    y = 1.0 + x
    exact = y != 1.0
    log1p = tl.where(exact, tl.log(y) * x / tl.where(exact, y - 1.0, 1.0), x)
    return tl.where(u > THRESHOLD, u, log1p)


@triton.jit
def _decay_fwd_kernel(f, dt_bias, a_log, g, N, C, n, THRESHOLD: tl.constexpr, BR: tl.constexpr,
                      BC: tl.constexpr):
    i_p, n_p = tl.program_id(0), tl.num_programs(0)
    c = tl.arange(0, BC)
    cm = c < C
    bias = tl.load(dt_bias + c, mask=cm, other=0.0).to(tl.float32)
    neg_a = -tl.exp(tl.load(a_log + c // n, mask=cm, other=0.0).to(tl.float32))
    for blk in range(i_p, tl.cdiv(N, BR), n_p):
        r = blk * BR + tl.arange(0, BR)
        m = (r < N)[:, None] & cm[None, :]
        off = r[:, None] * C + c[None, :]
        u = tl.load(f + off, mask=m, other=0.0).to(tl.float32) + bias[None, :]
        tl.store(g + off, neg_a[None, :] * _softplus(u, THRESHOLD), mask=m)


@triton.jit
def _decay_bwd_kernel(f, dt_bias, a_log, dg, df, dbias_part, da_part, N, C, n, THRESHOLD: tl.constexpr,
                      BR: tl.constexpr, BC: tl.constexpr):
    i_p, n_p = tl.program_id(0), tl.num_programs(0)
    c = tl.arange(0, BC)
    cm = c < C
    bias = tl.load(dt_bias + c, mask=cm, other=0.0).to(tl.float32)
    neg_a = -tl.exp(tl.load(a_log + c // n, mask=cm, other=0.0).to(tl.float32))
    dbias = tl.zeros([BC], dtype=tl.float32)
    da = tl.zeros([BC], dtype=tl.float32)  # per channel; heads summed on the host
    for blk in range(i_p, tl.cdiv(N, BR), n_p):
        r = blk * BR + tl.arange(0, BR)
        m = (r < N)[:, None] & cm[None, :]
        off = r[:, None] * C + c[None, :]
        u = tl.load(f + off, mask=m, other=0.0).to(tl.float32) + bias[None, :]
        d = tl.load(dg + off, mask=m, other=0.0)
        sig = tl.where(u > THRESHOLD, 1.0, tl.sigmoid(u))
        du = tl.where(m, d * neg_a[None, :] * sig, 0.0)
        tl.store(df + off, du.to(df.dtype.element_ty), mask=m)
        dbias += tl.sum(du, axis=0)
        da += tl.sum(tl.where(m, d * neg_a[None, :] * _softplus(u, THRESHOLD), 0.0), axis=0)
    tl.store(dbias_part + i_p * C + c, dbias, mask=cm)
    tl.store(da_part + i_p * C + c, da, mask=cm)


def _launch(N: int, C: int) -> tuple[int, int, int]:
    """(rows per tile, channel tile, programs) of an [N, C] call (``row_launch``)."""
    return row_launch(N, C, ELEMENTS, MAX_PROGRAMS)


class DecayGateFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f, dt_bias, a_log, n: int):
        shape, C = f.shape, f.shape[-1]
        f2 = f.reshape(-1, C).contiguous()
        N = f2.shape[0]
        BR, BC, P = _launch(N, C)
        g = torch.empty(N, C, device=f.device, dtype=torch.float32)
        _decay_fwd_kernel[(P,)](f2, dt_bias, a_log, g, N, C, n, THRESHOLD=THRESHOLD, BR=BR, BC=BC)
        ctx.save_for_backward(f2, dt_bias, a_log)
        ctx.shape, ctx.n = shape, n
        return g.view(shape)

    @staticmethod
    def backward(ctx, dg):
        f2, dt_bias, a_log = ctx.saved_tensors
        N, C = f2.shape
        BR, BC, P = _launch(N, C)
        df = torch.empty_like(f2)
        dbias_part = torch.empty(P, C, device=f2.device, dtype=torch.float32)
        da_part = torch.empty(P, C, device=f2.device, dtype=torch.float32)
        _decay_bwd_kernel[(P,)](f2, dt_bias, a_log, dg.reshape(N, C).float().contiguous(), df, dbias_part, da_part,
                                N, C, ctx.n, THRESHOLD=THRESHOLD, BR=BR, BC=BC)
        d_bias = dbias_part.sum(0).to(dt_bias.dtype)
        d_a = da_part.sum(0).view(-1, ctx.n).sum(1).to(a_log.dtype)
        return df.view(ctx.shape), d_bias, d_a, None


def decay_gate(f: torch.Tensor, dt_bias: torch.Tensor, a_log: torch.Tensor) -> torch.Tensor:
    """g = −exp(A_log[h]) · softplus(f + dt_bias) of f [..., H·n] with dt_bias [H·n] and A_log [H]
    (channel j in head j // n); fp32 of f's shape."""
    C, H = f.shape[-1], a_log.shape[0]
    if dt_bias.shape != (C,) or C % H:
        raise ValueError(f"decay_gate: f's last axis {C} needs dt_bias of shape ({C},) and a multiple of "
                         f"A_log's {H} heads; got dt_bias {tuple(dt_bias.shape)}")
    return DecayGateFn.apply(f, dt_bias.contiguous(), a_log.contiguous(), C // H)
