"""The one entry point the model layers call: ``gated_delta(..., options)``.

``gated_delta(q, k, v, g, b, w, r=None, options=None, *, content=None, initial_state=None,
initial_cov=None, **settings)``: ``options`` a ``RecurrenceOptions`` (``kernels.options``),
and any of its fields may be given as keywords instead (``backend="torch"``), laid over it.

Backends:
    reference  token-by-token specification (kernels/reference.py), any device
    torch      chunked WY path (kernels/chunk.py); value-axis erase is routed to the
               per-column chunked solve, which is exact but dv times the inverse work
    triton     Triton kernels (chunked WY for the key axis, fused recurrent for the
               value axis); CUDA tensors, or CPU tensors under TRITON_INTERPRET=1
    auto       triton on CUDA tensors, torch on CPU tensors

``resolve_backend`` tells which implementation a call will actually use, so a trial can
record it; no backend ever falls back to another silently. ``resolve_precision``
(``options``) does the same for ``precision="auto"`` (fast on the Triton kernels, exact
elsewhere).

``short_conv(x, weight, heads)``: the mixer's short convolution + SiLU (+ per-head l2norm) as
Triton kernels on the [B, T, C] layout (``triton_conv``), which the mixer runs where its
recurrence runs on Triton and ``fused_conv_enabled()`` (``CARVELAB_FUSED_CONV``, default 1).
``rms_norm(x, weight, eps, gate)``: RMSNorm (times silu(gate)) as one Triton kernel each way
(``triton_norm``), which the model's norms run where its recurrence runs on Triton and
``fused_norm_enabled()`` (``CARVELAB_FUSED_NORM``, default 1). ``swiglu(h)``: SwiGLU's gating
of a joint [gate | up] projection (``triton_swiglu``); with ``joint_proj_enabled()``
(``CARVELAB_JOINT_PROJ``, default 0) the MLPs project gate and up as one matmul and run it,
and the mixers project q, k, v and the output gate as one matmul, where their recurrence runs
on Triton. ``decay_gate(f, dt_bias, A_log)``: the log-decay gate as one Triton kernel each way
(``triton_gates``), which the decay gates run with ``fused_gates_enabled()``
(``CARVELAB_FUSED_GATES``, default 0) where the recurrence runs on Triton.
``on_triton(options, device)`` is that condition.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from carvelab.kernels._args import RecurrenceOutput, keyword_settings
from carvelab.kernels._switch import Switch
from carvelab.kernels.options import BACKENDS, RecurrenceOptions, check_triton_chunk, resolve_precision

__all__ = ["BACKENDS", "IMPLEMENTATIONS", "decay_gate", "fused_conv", "fused_conv_enabled", "fused_gates",
           "fused_gates_enabled", "fused_norm", "fused_norm_enabled", "gated_delta", "joint_proj", "joint_proj_enabled", "on_triton", "resolve_backend", "resolve_precision",
           "rms_norm", "short_conv", "swiglu"]

# Names of the implementations ``resolve_backend`` can answer.
IMPLEMENTATIONS = (
    "reference", "torch_chunk", "torch_chunk_value", "triton_chunk", "triton_recurrent",
)


def resolve_backend(backend: str, device: torch.device, erase_axis: str, chunk_size: int = 64) -> str:
    """Map a requested backend to the implementation that will run (see IMPLEMENTATIONS);
    ValueError when that implementation cannot run ``chunk_size`` (options.check_triton_chunk)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; choose one of {list(BACKENDS)}")
    device = torch.device(device)
    if backend == "auto":
        backend = "triton" if device.type == "cuda" else "torch"
    if backend == "reference":
        return "reference"
    if backend == "torch":
        return "torch_chunk" if erase_axis == "key" else "torch_chunk_value"
    from carvelab.kernels._triton_common import triton_interpreted

    if device.type != "cuda" and not triton_interpreted():
        raise ValueError(
            "backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors); "
            f"got tensors on {device}"
        )
    check_triton_chunk(chunk_size)
    return "triton_chunk" if erase_axis == "key" else "triton_recurrent"


@keyword_settings
def gated_delta(q, k, v, g, b, w, r, options: RecurrenceOptions, *, content, initial_state, initial_cov
                ) -> RecurrenceOutput:
    """Run the unified recurrence on ``options.backend``; tensors as in the reference.
    ``options.precision="auto"`` is resolved for the implementation that runs
    (``resolve_precision``)."""
    impl = resolve_backend(options.backend, q.device, options.erase_axis, options.chunk_size)
    options = replace(options, precision=resolve_precision(options.precision, impl))
    if impl == "reference":
        from carvelab.kernels.reference import gated_delta_reference as fn
    elif impl == "torch_chunk":
        from carvelab.kernels.chunk import chunk_gated_delta as fn
    elif impl == "torch_chunk_value":
        from carvelab.kernels.chunk import chunk_gated_delta_value as fn
    elif impl == "triton_chunk":
        from carvelab.kernels.triton_ops import triton_chunk_gated_delta as fn
    else:
        from carvelab.kernels.triton_ops import triton_recurrent_gated_delta as fn
    return fn(q, k, v, g, b, w, r, options, content=content, initial_state=initial_state, initial_cov=initial_cov)


_FUSED_CONV = Switch("CARVELAB_FUSED_CONV", on="the fused Triton short convolution (kernels/triton_conv.py)",
                     off="torch's conv1d, SiLU and l2norm")


def fused_conv_enabled() -> bool:
    """``CARVELAB_FUSED_CONV`` (default 1), or the innermost ``fused_conv(...)`` block: whether
    the mixer runs its short convolutions on ``short_conv`` (where its recurrence is on Triton)."""
    return _FUSED_CONV.enabled()


def fused_conv(enabled: bool):
    """Within this block the mixer's short convolutions run fused (True) or on torch ops (False)."""
    return _FUSED_CONV.override(enabled)


def short_conv(x: torch.Tensor, weight: torch.Tensor, heads: int = 0, eps: float = 1e-6) -> torch.Tensor:
    """silu(causal depthwise conv(x, weight)) of x [B, T, C] (weight [C, 1, W]) on the Triton
    kernels of ``triton_conv``; with ``heads`` > 0 each head's channels l2-normalised (fp32)."""
    from carvelab.kernels.triton_conv import short_conv as fn

    return fn(x, weight, heads, eps)


_FUSED_NORM = Switch("CARVELAB_FUSED_NORM", on="the fused Triton RMSNorms (kernels/triton_norm.py)",
                     off="torch's elementwise RMSNorms")


def fused_norm_enabled() -> bool:
    """``CARVELAB_FUSED_NORM`` (default 1), or the innermost ``fused_norm(...)`` block: whether
    the model's RMSNorms (and the mixer's gated one) run on ``rms_norm`` (where its recurrence
    is on Triton)."""
    return _FUSED_NORM.enabled()


def fused_norm(enabled: bool):
    """Within this block the model's norms run fused (True) or on torch ops (False)."""
    return _FUSED_NORM.override(enabled)


def on_triton(options: RecurrenceOptions, device: torch.device) -> bool:
    """Whether a recurrence with ``options`` runs on the Triton kernels on ``device``: where the
    fused convolution, norms, projections and gates may run, so every fused piece of a model
    moves together. False where it cannot run there (``resolve_backend`` refuses: a model
    without recurrent layers never calls it, so its norms stay on torch ops)."""
    try:
        return resolve_backend(options.backend, device, options.erase_axis, options.chunk_size).startswith("triton")
    except ValueError:
        return False


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, gate: torch.Tensor | None = None
             ) -> torch.Tensor:
    """RMSNorm of x [..., D] with ``weight`` [D] (times silu(``gate``) when given) on the Triton
    kernels of ``triton_norm``; x's dtype out."""
    from carvelab.kernels.triton_norm import rms_norm as fn

    return fn(x, weight, eps, gate)


_JOINT_PROJ = Switch("CARVELAB_JOINT_PROJ", on="one matmul for the mixer's q, k, v, z and one for the MLP's gate, up "
                     "(with the fused SwiGLU, kernels/triton_swiglu.py)", off="one matmul per projection", default="0")


def joint_proj_enabled() -> bool:
    """``CARVELAB_JOINT_PROJ`` (default 0), or the innermost ``joint_proj(...)`` block: whether the
    mixers and MLPs project their input once for all the maps that read it (where the
    recurrence is on Triton)."""
    return _JOINT_PROJ.enabled()


def joint_proj(enabled: bool):
    """Within this block the input projections run joint (True) or one by one (False)."""
    return _JOINT_PROJ.override(enabled)


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """silu(a) ⊙ b of h = [a | b] [..., 2F] on the Triton kernels of ``triton_swiglu``."""
    from carvelab.kernels.triton_swiglu import swiglu as fn

    return fn(h)


_FUSED_GATES = Switch("CARVELAB_FUSED_GATES", on="the fused Triton decay gate (kernels/triton_gates.py)",
                      off="torch's elementwise gate activations", default="0")


def fused_gates_enabled() -> bool:
    """``CARVELAB_FUSED_GATES`` (default 0), or the innermost ``fused_gates(...)`` block: whether the
    decay gates run on ``decay_gate`` (where the recurrence is on Triton)."""
    return _FUSED_GATES.enabled()


def fused_gates(enabled: bool):
    """Within this block the decay gates run fused (True) or on torch ops (False)."""
    return _FUSED_GATES.override(enabled)


def decay_gate(f: torch.Tensor, dt_bias: torch.Tensor, a_log: torch.Tensor) -> torch.Tensor:
    """g = -exp(A_log) * softplus(f + dt_bias) (per head, fp32) on the Triton kernels of
    ``triton_gates``."""
    from carvelab.kernels.triton_gates import decay_gate as fn

    return fn(f, dt_bias, a_log)
