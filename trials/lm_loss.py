"""The training loss: mean cross-entropy over the scored positions (targets != -100), from
the model's logits, or chunked through the LM head so that a batch's logits never exist at
once.

Plain (``train.ce_chunk: 0``): ``logits = model(inputs)`` [B, T, vocab], upcast to fp32,
``F.cross_entropy``. Its backward keeps the fp32 logits and makes an fp32 gradient of the
same size: at B 64, T 512 and a vocabulary of 8192, 1 GiB each. Where the model's recurrence
runs on Triton and ``CARVELAB_FUSED_CE=1`` (``kernels.fused.fused_ce_enabled``), the same loss
runs on ``kernels/triton_ce.py``: the logits read in their dtype, no fp32 copy, the gradient
written in the logits' dtype.

Chunked (``train.ce_chunk: n``): the model runs up to its final norm (``HybridLM.hidden``),
and ``ChunkedLinearCE`` takes ``n`` tokens at a time: their logits ``h W^T`` (in the autocast
dtype, as the model's head computes them, then fp32), log-sum-exp, the loss, and at once the
gradient of the summed loss with respect to those logits, ``(softmax - onehot) / count``,
which gives that chunk's ``dh = g W`` and adds ``g^T h`` to ``dW``. The backward only
multiplies the kept ``dh`` and ``dW`` by the incoming gradient. Peak extra memory is one
chunk's logits and gradient (n x vocab x 4 bytes each) plus ``dh`` and an fp32 ``dW``.

The two agree to rounding: the same products in the same dtype, the gradient cast to the
autocast dtype after the division by ``count`` as in the plain backward (exactly so for a
loss backpropagated with gradient 1), but ``dW`` summed over chunks in fp32 where the plain
head's one product sums over all tokens inside the matrix product. No host synchronisation
(the count of scored positions stays on the device), so the step can be captured in a CUDA
graph.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from carvelab.carve_models.norm import matmul_dtype
from carvelab.kernels.fused import cross_entropy, fused_ce_enabled, on_triton
from carvelab.trials.tasks.base import IGNORE_INDEX as IGNORE


class ChunkedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int, dtype: torch.dtype):
        """h [N, d], weight [vocab, d], targets [N] (IGNORE where not scored) -> mean loss."""
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(dtype)
            scored = targets != IGNORE
            count = scored.sum()
            grad_h = torch.empty(h.shape, device=h.device, dtype=dtype)
            grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32)
            loss_sum = torch.zeros((), device=h.device, dtype=torch.float32)
            for start in range(0, h.shape[0], chunk):
                hc = h[start:start + chunk].to(dtype)
                tc, mc = targets[start:start + chunk], scored[start:start + chunk]
                logits = (hc @ w.t()).float()
                lse = torch.logsumexp(logits, dim=-1)
                cols = tc.clamp_min(0)[:, None]  # each token's target column (any, where unscored)
                picked = logits.gather(1, cols)[:, 0]
                loss_sum += torch.where(mc, lse - picked, 0.0).sum()
                g = torch.exp(logits - lse[:, None])  # softmax
                g.scatter_add_(1, cols, torch.full_like(picked, -1.0)[:, None])
                g = (torch.where(mc[:, None], g, 0.0) / count).to(dtype)
                grad_h[start:start + chunk] = g @ w
                grad_w += (g.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (h.dtype, weight.dtype)
        return loss_sum / count

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        return (grad_h * grad_out).to(h_dtype), (grad_w * grad_out).to(w_dtype), None, None, None


def chunked_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Mean cross-entropy of ``h [..., d] W^T`` against ``targets [...]`` over the scored
    positions, ``chunk`` tokens at a time (see the module's docstring)."""
    if not isinstance(chunk, int) or chunk <= 0:
        raise ValueError(f"train.ce_chunk={chunk!r}: the chunked cross-entropy needs a positive number of tokens")
    return ChunkedLinearCE.apply(h.flatten(0, -2), weight, targets.flatten(), chunk, matmul_dtype(h))


def compute_loss(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, ce_chunk: int = 0) -> torch.Tensor:
    """Mean cross-entropy over the scored positions (targets != -100); ``ce_chunk`` tokens at a
    time through the LM head when positive (the model needs ``hidden`` and ``head_weight``)."""
    if ce_chunk:
        return chunked_cross_entropy(model.hidden(inputs), model.head_weight(), targets, ce_chunk)
    logits = model(inputs)
    cfg = getattr(model, "cfg", None)
    if cfg is not None and fused_ce_enabled() and on_triton(cfg.recurrence, logits.device):
        return cross_entropy(logits.flatten(0, 1), targets.flatten(), IGNORE)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
