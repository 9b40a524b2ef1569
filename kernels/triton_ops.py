"""Autograd Functions around the Triton kernels, and the unified entry point.

Four Functions, each a pure recurrence with hand-written backward kernels:

- ``RecurrentFn``  (q, a, u, x, g, β, S_0) -> (o, S_T): the fused recurrent kernels of
  ``triton_recurrent`` (key axis with β = None, value axis with β = b).
- ``KeyChunkFn``   (q, k, b, u, v, w, g, S_0) -> (o, S_T): the chunked WY kernels of
  ``triton_chunk`` (key axis only), which form a = b⊙k and x = w⊙v as they load them.
- ``ContentChunkFn`` (q, k, u, v, w, g, pre, b0, U, V, S_0) -> (o, S_T): the content gate
  on the erase gate, key axis, as one sequential-over-chunks kernel each way
  (``triton_content``), which also forms x = w⊙v as it loads it.
- ``CovarianceFn`` (k, g, r, P_0) -> (u, P_T): the propagate-mode P-pass of
  ``triton_covariance``.

``triton_gated_delta`` activates nothing itself except the content gate. The chunked
kernels take the gates b and w with k and v and return all four gradients (the fused
content kernels likewise take w with v); for the recurrent kernels it forms ``a = b⊙k``
and ``x = w⊙v`` in torch, so autograd carries the gradients of the gates, k and v through
those products.

Content gate. The gate of chunk c depends on the outputs of chunk c−1, so chunk c cannot
be set up before chunk c−1 has run. Two paths compute the same recurrence:

- the fused kernels (``fuses_content``: chunked kernel, ``target="erase"``, key axis, a
  content chunk of TRITON_CHUNK_SIZES; ``CARVELAB_FUSED_CONTENT=1``, the default): one
  program per (batch, head) walks the chunks and forms each chunk's gate in-kernel, two
  launches per call, no CUDA graph and no memory pool;
- the per-chunk loop (everything else: ``target="decay"``, the value axis, the recurrent
  kernel, or ``CARVELAB_FUSED_CONTENT=0``): a torch loop over content chunks. Per chunk,
  ``m_c`` (mean output of the previous chunk) gives ``U(V m_c)``, the target gate is
  activated, and one recurrence Function call carries the state S (and, with
  ``target="decay"`` in propagate mode, one P-pass call carries P). Autograd handles the
  cross-chunk terms through ``m_c`` and through S and P.

Cost of the loop, per content chunk (``LAUNCHES_PER_CALL``): 5 kernel launches forward
and 5 backward with the chunked kernels (1 and 3 with the recurrent ones), plus 1 and 1
for the P-pass with a decay target, plus about six small torch ops (content map, gate
activation, mean) each way, all serialised behind the previous chunk. The inputs are cut
into chunks once, by one transposing copy whose backward is one stack (slicing per chunk
would cost a full-size zero fill and add per chunk in the backward). So the loop
multiplies the launch count by about T / chunk_size and is bound by the host's cost per
launch and op, not by the kernels: on an H100 (B=4, T=4096, H=16, d=128, bf16, chunk 64)
the forward took as long to issue as to run, and fwd+bwd was about 10x the plain kernel's
time while its kernels summed to 2x. So on CUDA tensors ``triton_gated_delta`` captures
the loop, forward and backward, into CUDA graphs once per shape and replays them
(``cuda_graph``): fwd+bwd came to 2.3x the plain kernel (BENCHMARKS.md), at the price of
one graph memory pool per layer.
"""
from __future__ import annotations

import logging

import torch

from carvelab.kernels import cuda_graph as _graph
from carvelab.kernels import triton_chunk as _chunk
from carvelab.kernels import triton_content as _content
from carvelab.kernels import triton_covariance as _cov
from carvelab.kernels import triton_recurrent as _rec
from carvelab.kernels._args import (
    Canonical,
    RecurrenceOutput,
    activate_target,
    canonicalize,
    initial_cov_or_eye,
    initial_state_or_zeros,
)
from carvelab.kernels._switch import Switch
from carvelab.kernels.options import TRITON_CHUNK_SIZES, RecurrenceOptions, check_triton_chunk, resolve_precision

logger = logging.getLogger(__name__)

KERNELS = ("chunk", "recurrent")

FUSED_CONTENT_ENV = "CARVELAB_FUSED_CONTENT"

# Kernel launches per Function call, forward + backward (for the cost model above).
LAUNCHES_PER_CALL = {"chunk": (5, 5), "recurrent": (1, 3), "covariance": (1, 1)}


def launch_counts() -> dict[str, int]:
    """Kernel launches so far, by kernel family and direction (e.g. ``chunk_fwd``)."""
    return dict(_rec.LAUNCHES + _chunk.LAUNCHES + _cov.LAUNCHES + _content.LAUNCHES)


def _c(t):
    return None if t is None else t.contiguous()


def _zeros_if_none(grad, like):
    return torch.zeros_like(like, dtype=torch.float32) if grad is None else grad.float().contiguous()


class RecurrentFn(torch.autograd.Function):
    """(q, a, u, x, g, beta, s0) -> (o fp32 [B,T,H,dv], S_T fp32); see ``triton_recurrent``."""

    @staticmethod
    def forward(ctx, q, a, u, x, g, beta, s0, scale, segment):
        q, a, u, x, g, beta = map(_c, (q, a, u, x, g, beta))
        o, s_out, delta, ckpt = _rec.recurrent_forward(q, a, u, x, g, beta, s0.float().contiguous(), scale, segment)
        ctx.save_for_backward(q, a, u, x, g, beta, delta, ckpt, s_out)
        ctx.scale, ctx.segment = scale, segment
        return o, s_out

    @staticmethod
    def backward(ctx, do, ds_out):
        q, a, u, x, g, beta, delta, ckpt, s_out = ctx.saved_tensors
        do, ds_out = _zeros_if_none(do, delta), _zeros_if_none(ds_out, s_out)
        dq, da, du, dx, dbeta, ds0 = _rec.recurrent_backward(
            q, a, u, x, g, beta, delta, ckpt, do, ds_out, ctx.scale, ctx.segment,
        )
        dg = _rec.decay_grad(q, dq, a, da, u, du, s_out, ds_out)
        return dq, da, du, dx, dg, dbeta, ds0, None, None


class KeyChunkFn(torch.autograd.Function):
    """(q, k, b, u, v, w, g, s0) -> (o [B,T,H,dv] in out_dtype, S_T fp32); see ``triton_chunk``.
    b is [B,T,H,dk] or [B,T,H,1], w [B,T,H,dv] or [B,T,H,1] (``gate_arg``) or None (v is x)."""

    @staticmethod
    def forward(ctx, q, k, b, u, v, w, g, s0, scale, block_t, precision, out_dtype):
        q, k, b, u, v, w, g = map(_c, (q, k, b, u, v, w, g))
        o, s_out, saved = _chunk.chunk_forward(q, k, b, u, v, w, g, s0.float().contiguous(), scale, block_t,
                                               precision, out_dtype)
        ctx.save_for_backward(q, k, b, u, v, w, s_out, *saved)
        ctx.scale, ctx.block_t, ctx.dv, ctx.precision = scale, block_t, v.shape[-1], precision
        return o, s_out

    @staticmethod
    def backward(ctx, do, ds_out):
        q, k, b, u, v, w, s_out, *saved = ctx.saved_tensors
        B, T, H, _ = q.shape
        do = _zeros_if_none(do, q.new_empty(B, T, H, ctx.dv))
        ds_out = _zeros_if_none(ds_out, s_out)
        dq, dk, db, du, dv, dw, dg, ds0 = _chunk.chunk_backward(q, k, b, u, v, w, saved, s_out, do, ds_out,
                                                                ctx.scale, ctx.block_t, ctx.precision)
        return dq, dk, db, du, dv, dw, dg, ds0, None, None, None, None


class ContentChunkFn(torch.autograd.Function):
    """(q, k, u, v, w, g, pre, b0, U, V, s0) -> (o in out_dtype, S_T fp32): the fused
    content-gate kernels of ``triton_content`` (erase target, key axis); w as for
    ``KeyChunkFn``. ``b0`` is the caller's whole-tensor activation of ``pre`` and gets no
    gradient (``pre`` gets all of it)."""

    @staticmethod
    def forward(ctx, q, k, u, v, w, g, pre, b0, U, V, s0, scale, erase_scale, block_t, precision, out_dtype):
        q, k, u, v, w, g, pre, b0, U, V = map(_c, (q, k, u, v, w, g, pre, b0, U, V))
        o, s_out, saved = _content.content_forward(q, k, u, v, w, g, pre, b0, U, V, s0.float().contiguous(), scale,
                                                   erase_scale, block_t, precision, out_dtype)
        ctx.save_for_backward(q, k, u, v, w, U, V, s_out, *saved)
        ctx.settings = (scale, erase_scale, block_t, precision)
        ctx.dv = v.shape[-1]
        return o, s_out

    @staticmethod
    def backward(ctx, do, ds_out):
        q, k, u, v, w, U, V, s_out, *saved = ctx.saved_tensors
        B, T, H, _ = q.shape
        do = _zeros_if_none(do, q.new_empty(B, T, H, ctx.dv))
        ds_out = _zeros_if_none(ds_out, s_out)
        dq, dk, du, dv, dw, dg, dpre, dU, dV, ds0 = _content.content_backward(
            q, k, u, v, w, U, V, saved, s_out, do, ds_out, *ctx.settings)
        return dq, dk, du, dv, dw, dg, dpre, None, dU, dV, ds0, None, None, None, None, None


class CovarianceFn(torch.autograd.Function):
    """(k, g, r, p0) -> (u fp32 [B,T,H,dk], P_T fp32); see ``triton_covariance``."""

    @staticmethod
    def forward(ctx, k, g, r, p0, segment):
        k, g, r = map(_c, (k, g, r))
        u, p_out, ckpt = _cov.covariance_forward(k, g, r, p0.float().contiguous(), segment)
        ctx.save_for_backward(k, g, r, ckpt)
        ctx.segment = segment
        return u, p_out

    @staticmethod
    def backward(ctx, du, dp_out):
        k, g, r, ckpt = ctx.saved_tensors
        B, _, H, K = k.shape
        du = _zeros_if_none(du, k)
        dp_out = _zeros_if_none(dp_out, k.new_empty(B, H, K, K))
        dk, dg, dr, dp0 = _cov.covariance_backward(k, g, r, ckpt, du, dp_out, ctx.segment)
        return dk, dg, dr, dp0, None


def chunk_block(chunk_size: int) -> int:
    """Tokens per WY chunk of the kernel: the requested chunk if it is one of
    TRITON_CHUNK_SIZES; a shorter content chunk (e.g. 20) runs as one padded 64-token block.
    Longer chunks are refused before this (``options.check_triton_chunk``)."""
    return chunk_size if chunk_size in TRITON_CHUNK_SIZES else max(TRITON_CHUNK_SIZES)


def gate_arg(b):
    """A gate (b or w) as the chunked kernels take it: one broadcast over its channels (last
    stride 0, as ``canonicalize`` expands a per-token gate) as its one column [.., 1], so the
    kernels read one value per token instead of a materialised copy; any other as it is."""
    return b[..., :1] if b is not None and b.shape[-1] > 1 and b.stride(-1) == 0 else b


def _recurrence(c: Canonical, kernel, precision, q, k, u, v, w, g, b, s0, out_dtype=torch.float32):
    """One recurrence call over [B, L, H, *] tensors (gates activated; w None: v is x
    already); returns (o, S_L). The chunked kernel writes o in out_dtype, the recurrent
    kernel in fp32."""
    if c.erase_axis == "key" and kernel == "chunk":
        return KeyChunkFn.apply(q, k, gate_arg(b), u, v, gate_arg(w), g, s0, c.scale, chunk_block(c.chunk_size),
                                precision, out_dtype)
    x = v if w is None else w * v
    if c.erase_axis == "key":
        return RecurrentFn.apply(q, b * k, u, x, g, None, s0, c.scale, c.chunk_size)
    return RecurrentFn.apply(q, k, u, x, g, b, s0, c.scale, c.chunk_size)


def _write_dirs(c: Canonical, k, g, r, p0):
    """(u, P_end) for one span: u = k (reset) or the P-pass output (propagate)."""
    if c.covariance == "reset":
        return k, None
    return CovarianceFn.apply(k, g, r, p0, c.chunk_size)


def _whole_sequence(c: Canonical, kernel, precision, q, k):
    u, p_out = _write_dirs(c, k, c.g, c.r, initial_cov_or_eye(c) if c.covariance == "propagate" else None)
    o, s_out = _recurrence(c, kernel, precision, q, k, u, c.v, c.w, c.g, c.b, initial_state_or_zeros(c),
                           out_dtype=c.v.dtype)  # the final output: no fp32 copy to convert
    return o, s_out, p_out


_FUSED = Switch(FUSED_CONTENT_ENV, on="fused content-gate kernels", off="the per-chunk loop")


def fused_content(enabled: bool):
    """Within this block, run fusable content gates on the fused kernels (True) or on the
    per-chunk loop (False), whatever ``CARVELAB_FUSED_CONTENT`` says."""
    return _FUSED.override(enabled)


def fused_content_enabled() -> bool:
    """``CARVELAB_FUSED_CONTENT``: 1 (default) runs a fusable content gate on the fused
    kernels, 0 on the per-chunk loop (replayed from CUDA graphs on a GPU); a
    ``fused_content(...)`` block overrides it."""
    return _FUSED.enabled()


def content_fuses(target: str, kernel: str, erase_axis: str, chunk_size: int) -> bool:
    """Whether a content gate with these settings runs on the fused kernels
    (``triton_content``): the chunked kernel, the erase target, the key axis, a content
    chunk that is one WY chunk (TRITON_CHUNK_SIZES), and ``fused_content_enabled()``.
    Anything else runs the per-chunk loop, which computes the same recurrence."""
    return (kernel == "chunk" and target == "erase" and erase_axis == "key" and chunk_size in TRITON_CHUNK_SIZES
            and fused_content_enabled())


def fuses_content(content, kernel: str, options: RecurrenceOptions) -> bool:
    """``content_fuses`` for one call (False without a content gate)."""
    return content is not None and content_fuses(content.target, kernel, options.erase_axis, options.chunk_size)


def _content_fused(c: Canonical, kernel, precision, q, k):
    """The whole content-gate call on ``ContentChunkFn``; see ``triton_content``."""
    B, T, H, dk, _ = c.dims
    content = c.content
    u, p_out = _write_dirs(c, k, c.g, c.r, initial_cov_or_eye(c) if c.covariance == "propagate" else None)
    with torch.no_grad():  # the ungated model's own activation of the same logits (bit-identity at U = 0)
        b0 = torch.sigmoid(c.b)
        b0 = b0 if content.erase_scale == 1.0 else content.erase_scale * b0
    U = content.U.float().expand(H, dk, content.U.shape[-1])  # one gate per head: the same row for every channel
    o, s_out = ContentChunkFn.apply(
        q, k, u, c.v, gate_arg(c.w), c.g, c.b.expand(B, T, H, dk), b0.expand(B, T, H, dk), U, content.V.float(),
        initial_state_or_zeros(c), c.scale, content.erase_scale, c.chunk_size, precision,
        c.v.dtype,  # the final output: no fp32 copy to convert
    )
    return o, s_out, p_out


def _time_chunks(x: torch.Tensor, C: int) -> list:
    """x [B, T, H, *] as contiguous pieces of C tokens (the last may be shorter).

    One transposing copy up front; autograd then joins the pieces' gradients with one
    stack. Slicing instead would cost one full-size zero fill and add per piece in the
    backward, and one strided copy per piece when a kernel needs contiguous input."""
    B, T = x.shape[:2]
    n = T // C
    pieces = list(x[:, :n * C].reshape(B, n, C, *x.shape[2:]).transpose(0, 1).contiguous().unbind(0)) if n else []
    if T % C:
        pieces.append(x[:, n * C:].contiguous())
    return pieces


def _content_map(content) -> torch.Tensor:
    """[H, dv, n]: delta_h = m_h @ map_h, i.e. U_h (V_h m_h) as one batched product per chunk."""
    return torch.matmul(content.U.float(), content.V.float()).transpose(1, 2)


def _content_chunks(c: Canonical, kernel, precision, q, k):
    """Torch loop over content chunks; see the module docstring."""
    B, T, H, dk, dv = c.dims
    content, C = c.content, c.chunk_size
    n_b = dk if c.erase_axis == "key" else dv
    s, p = initial_state_or_zeros(c), None
    u_all = None
    if c.covariance == "propagate":
        p = initial_cov_or_eye(c)
        if content.target == "erase":  # P never sees the erase gate: one pass for all chunks
            u_all, p = _write_dirs(c, k, c.g, c.r, p)
    n_chunks = -(-T // C)
    qs, ks, xs, gs, bs = (_time_chunks(t, C) for t in (q, k, c.w * c.v, c.g, c.b))
    rs = _time_chunks(c.r, C) if c.r is not None else [None] * n_chunks
    us = _time_chunks(u_all, C) if u_all is not None else [None] * n_chunks
    cmap = _content_map(content)
    m = q.new_zeros(H, B, dv, dtype=torch.float32)  # mean output of the previous chunk, per head
    outs = []
    for i in range(n_chunks):
        delta = torch.bmm(m, cmap).transpose(0, 1)  # [B, H, n]
        g, b = gs[i], bs[i]
        if content.target == "erase":
            b = activate_target(content, b, delta).expand(-1, -1, -1, n_b)
        else:
            g = activate_target(content, g, delta).expand(-1, -1, -1, dk)
        u = us[i]
        if u is None:
            u, p_c = _write_dirs(c, ks[i], g, rs[i], p)
            p = p if p_c is None else p_c
        o, s = _recurrence(c, kernel, precision, qs[i], ks[i], u, xs[i], None, g, b, s)
        outs.append(o)
        m = o.mean(1).transpose(0, 1)
    return torch.cat(outs, 1), s, p


def triton_gated_delta(
    q, k, v, g, b, w, r=None, options: RecurrenceOptions = RecurrenceOptions(), *, content=None,
    initial_state=None, initial_cov=None, kernel="chunk",
) -> RecurrenceOutput:
    """The unified recurrence on Triton kernels; arguments and result as in the reference.

    kernel: "chunk" (chunked WY, key axis only) or "recurrent" (fused recurrent, either
    axis; also usable on key-axis points to cross-check the chunked kernels).
    ``options.precision`` sets the chunked kernels' products (the recurrent kernels compute
    in fp32 under either; ``auto`` is ``fast`` here); ``options.chunk_size`` must be at
    most max(TRITON_CHUNK_SIZES).

    A content gate runs on the fused kernels where ``fuses_content``; otherwise, on CUDA
    tensors, the whole per-chunk loop (forward and backward) is captured once per shape and
    replayed as CUDA graphs (``cuda_graph``; ``CARVELAB_CUDA_GRAPHS=0`` runs it eagerly).
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r} is not allowed; choose one of {list(KERNELS)}")
    check_triton_chunk(options.chunk_size)
    precision = resolve_precision(options.precision, "triton_" + kernel)
    if content is None or fuses_content(content, kernel, options) or not _graph.should_replay(q.device):
        return _triton_gated_delta(q, k, v, g, b, w, r, options, content, initial_state, initial_cov, kernel,
                                   precision)
    tensors = (q, k, v, g, b, w, r, initial_state, initial_cov, content.U, content.V, content.A_log)

    def run(q, k, v, g, b, w, r, s0, p0, U, V, A_log):
        out = _triton_gated_delta(q, k, v, g, b, w, r, options, content._replace(U=U, V=V, A_log=A_log), s0, p0,
                                  kernel, precision)
        return tuple(t for t in out if t is not None)

    key = ("triton_gated_delta", content.target, content.erase_scale, options, kernel, precision)
    outs = _graph.graphed_call(run, tensors, key)
    return RecurrenceOutput(outs[0], outs[1], outs[2] if len(outs) > 2 else None)


def _triton_gated_delta(
    q, k, v, g, b, w, r, options, content, initial_state, initial_cov, kernel, precision,
) -> RecurrenceOutput:
    """``triton_gated_delta`` run eagerly, its kernel and precision checked."""
    c = canonicalize(
        q, k, v, g, b, w, r, options, content=content, initial_state=initial_state, initial_cov=initial_cov,
        keep_dtypes=(torch.float32, torch.bfloat16),  # the kernels upcast on load; products are fp32
    )
    if kernel == "chunk" and c.erase_axis == "value":
        raise ValueError(
            "erase_axis='value' has no shared WY solve (the erase mask varies across dv); "
            "the chunked Triton kernel allows erase_axis='key' only; use kernel='recurrent'"
        )
    B, T, H, dk, dv = c.dims
    if T == 0:
        p = initial_cov_or_eye(c).clone() if c.covariance == "propagate" else None
        return RecurrenceOutput(v.new_zeros(B, 0, H, dv), initial_state_or_zeros(c).clone(), p)
    if c.content is None:
        run = _whole_sequence
    else:
        run = _content_fused if fuses_content(c.content, kernel, options) else _content_chunks
    o, s_out, p_out = run(c, kernel, precision, c.q, c.k)
    return RecurrenceOutput(o.to(v.dtype), s_out, p_out)


def triton_chunk_gated_delta(
    q, k, v, g, b, w, r=None, options: RecurrenceOptions = RecurrenceOptions(), *, content=None,
    initial_state=None, initial_cov=None,
):
    """The unified recurrence on the chunked WY kernels (erase_axis="key" only).

    Same arguments, semantics and ``RecurrenceOutput`` as ``gated_delta_reference``.
    The kernel's WY chunk is ``options.chunk_size`` (one of TRITON_CHUNK_SIZES); with a
    content gate it is also the content chunk (see the module docstring).
    """
    return triton_gated_delta(q, k, v, g, b, w, r, options, content=content, initial_state=initial_state,
                              initial_cov=initial_cov, kernel="chunk")


def triton_recurrent_gated_delta(
    q, k, v, g, b, w, r=None, options: RecurrenceOptions = RecurrenceOptions(), *, content=None,
    initial_state=None, initial_cov=None,
):
    """The unified recurrence on the fused recurrent kernels, for either erase axis.

    Same arguments, semantics and ``RecurrenceOutput`` as ``gated_delta_reference``;
    ``options.chunk_size`` is the content-gate chunk and the checkpoint interval of the backward.
    """
    return triton_gated_delta(q, k, v, g, b, w, r, options, content=content, initial_state=initial_state,
                              initial_cov=initial_cov, kernel="recurrent")
