"""Every projection weight of a model cast to the autocast dtype at once, two launches each way.

Under autocast each ``F.linear`` casts its fp32 weight to bf16 on its own, and autograd casts
each bf16 weight gradient back to fp32 on its own: two small launches per projection and
step, about twenty per layer, which at small trial sizes cost more in launch gaps than in
work. ``cast_all`` concatenates the weights and casts them in one pass (the outputs are views
of that one bf16 tensor), and its backward concatenates the bf16 gradients and casts them in
one pass (the gradients handed to the weights are views of that one fp32 tensor). Every
value is the same as the per-projection casts give: the same rounding of the same numbers.
"""
from __future__ import annotations

import torch


class CastAllFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dtype: torch.dtype, *weights: torch.Tensor):
        ctx.shapes, ctx.dtype = [w.shape for w in weights], weights[0].dtype
        flat = torch.cat([w.reshape(-1) for w in weights]).to(dtype)
        return tuple(p.view(s) for p, s in zip(flat.split([w.numel() for w in weights]), ctx.shapes))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        flat = torch.cat([g.reshape(-1) for g in grads]).to(ctx.dtype)
        return (None, *(p.view(s) for p, s in zip(flat.split([s.numel() for s in ctx.shapes]), ctx.shapes)))


def cast_all(weights: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """``[w.to(dtype) for w in weights]`` (weights of one dtype and device), in one pass each way."""
    if not weights:
        return []
    if len({(w.dtype, w.device) for w in weights}) != 1:
        raise ValueError("cast_all: the weights must share one dtype and device; got "
                         f"{sorted({f'{w.dtype} on {w.device}' for w in weights})}")
    return list(CastAllFn.apply(dtype, *weights))
