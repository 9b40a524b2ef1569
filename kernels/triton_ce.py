"""The training loss, mean cross-entropy over the logits, as one Triton kernel each way.

    lse_i  = log Σ_j exp(x_ij)                        per row, fp32 (one pass, online max)
    loss   = Σ_valid (lse_i − x_i,t_i) / n_valid       valid: t_i ≠ ignore_index
    dx_ij  = (exp(x_ij − lse_i) − [j = t_i]) · dloss / n_valid      (0 on ignored rows)

The torch path (``F.cross_entropy(logits.float(), ...)``) casts the [N, V] logits to fp32,
writes their log-softmax, and in the backward writes an fp32 gradient of the same size and
casts it back: about ten passes over N · V values. Here the forward reads the logits once
(in their dtype) and keeps lse per row; the backward reads them once more and writes the
gradient in the logits' dtype. Every product and sum is fp32, as on the torch path.

The mean's denominator is counted on the device, and the kernels read it and the incoming
gradient from device memory: nothing waits for the host, so the loss can live inside a
captured CUDA graph. A target outside [0, V) that is not ``ignore_index`` makes its row's
loss NaN (torch raises on the host, which would need a synchronisation here): the loss
says the batch is wrong rather than training on it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BV_FWD = 4096  # vocabulary entries per step of a row's forward loop
BV_BWD = 2048  # vocabulary entries per backward program


@triton.jit
def _ce_fwd_kernel(x, stride, t, lse, loss, V, IGNORE, BV: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    row = x + i * stride
    m = tl.full([], float("-inf"), tl.float32)
    s = tl.zeros([], dtype=tl.float32)
    for start in range(0, V, BV):
        c = start + tl.arange(0, BV)
        xv = tl.load(row + c, mask=c < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(xv, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(xv - m_new), axis=0)
        m = m_new
    ls = m + tl.log(s)
    tv = tl.load(t + i)
    inside = (tv >= 0) & (tv < V)
    xt = tl.load(row + tl.where(inside, tv, 0)).to(tl.float32)
    out = tl.where(inside, ls - xt, float("nan"))
    tl.store(lse + i, ls)
    tl.store(loss + i, tl.where(tv == IGNORE, 0.0, out))


@triton.jit
def _ce_bwd_kernel(x, stride, t, lse, dloss, count, dx, dstride, V, IGNORE, BV: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BV + tl.arange(0, BV)
    cm = c < V
    tv = tl.load(t + i)
    scale = tl.load(dloss).to(tl.float32) / tl.load(count)
    xv = tl.load(x + i * stride + c, mask=cm, other=0.0).to(tl.float32)
    g = (tl.exp(xv - tl.load(lse + i)) - tl.where(c == tv, 1.0, 0.0)) * scale
    g = tl.where(tv == IGNORE, 0.0, g)
    tl.store(dx + i * dstride + c, g.to(dx.dtype.element_ty), mask=cm)


class CrossEntropyFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index: int):
        N, V = logits.shape
        x = logits if logits.stride(-1) == 1 else logits.contiguous()
        t = targets.contiguous()
        lse = torch.empty(N, device=x.device, dtype=torch.float32)
        rows = torch.empty(N, device=x.device, dtype=torch.float32)
        _ce_fwd_kernel[(N,)](x, x.stride(0), t, lse, rows, V, ignore_index, BV=min(BV_FWD, triton.next_power_of_2(V)),
                             num_warps=8)
        count = (t != ignore_index).sum().float()
        ctx.save_for_backward(x, t, lse, count)
        ctx.ignore_index = ignore_index
        return rows.sum() / count

    @staticmethod
    def backward(ctx, dloss):
        x, t, lse, count = ctx.saved_tensors
        N, V = x.shape
        dx = torch.empty(N, V, device=x.device, dtype=x.dtype)
        BV = min(BV_BWD, triton.next_power_of_2(V))
        _ce_bwd_kernel[(N, triton.cdiv(V, BV))](x, x.stride(0), t, lse, dloss.contiguous(), count, dx, dx.stride(0), V,
                                                ctx.ignore_index, BV=BV, num_warps=8)
        return dx, None, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of logits [N, V] (any float dtype, fp32 inside) against integer
    targets [N], rows with ``ignore_index`` left out; the gradient in the logits' dtype."""
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy: logits must be [N, V] and targets [N]; got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    if targets.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cross_entropy: targets must be int32 or int64; got {targets.dtype}")
    return CrossEntropyFn.apply(logits, targets, ignore_index)
