"""The model's fused pieces besides the recurrence, each a Triton kernel per direction, and the
switches that turn them on (``_switch.Switch``: an environment variable, 1 or 0, overridden by a
``with piece(enabled):`` block):

    short_conv   the mixer's short convolution + SiLU (+ q, k's per-head l2norm) on [B, T, C]
                 (``short_convs``: q, k and v in one launch each way)
                 (``triton_conv``)            CARVELAB_FUSED_CONV, default 1
    rms_norm     RMSNorm, times silu(gate) for the mixer's output norm, and ``add_rms_norm``,
                 a residual add with the norm that reads its result (``triton_norm``)
                                              CARVELAB_FUSED_NORM, default 1
    swiglu       SwiGLU's gating of a joint [gate | up] projection (``triton_swiglu``); the
                 switch also makes the mixer project q, k, v, z as one matmul
                                              CARVELAB_JOINT_PROJ, default 1
    decay_gate   -exp(A_log) softplus(f + dt_bias) (``triton_gates``)
                                              CARVELAB_FUSED_GATES, default 1
    cross_entropy  the training loss on the logits (``triton_ce``)
                                              CARVELAB_FUSED_CE, default 1
    cast_all     not a kernel: under autocast, every projection weight cast to bf16 in one
                 pass each way (``weight_cast``)  CARVELAB_CAST_ONCE, default 1

A model piece uses its kernel where its switch is on and ``on_triton(options, device)``: the
model's recurrence runs on the Triton kernels there, so every fused piece moves with it (and
on the torch path a model stays on torch ops). Each kernel computes the same map as the torch
ops it replaces, in fp32; the tests compare them forward and backward. ``PIECES`` names the
six for tools: a trial's backend tag, the step benchmark's variants.
"""
from __future__ import annotations

from typing import Callable, ContextManager, NamedTuple

import torch

from carvelab.kernels._switch import Switch
from carvelab.kernels.dispatch import resolve_backend
from carvelab.kernels.options import RecurrenceOptions

__all__ = ["PIECES", "add_rms_norm", "cast_all", "cast_once", "cast_once_enabled", "cross_entropy", "decay_gate", "fused_ce", "fused_ce_enabled", "fused_conv", "fused_conv_enabled", "fused_gates", "fused_gates_enabled", "fused_norm",
           "fused_norm_enabled", "joint_proj", "joint_proj_enabled", "on_triton", "rms_norm", "short_conv", "short_convs", "swiglu"]


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


def short_convs(items: list, eps: float = 1e-6) -> tuple:
    """``short_conv`` of one to three (x, weight, heads) of one batch and length (the mixer's
    q, k and v) in one launch forward and two backward (``triton_conv.short_convs``)."""
    from carvelab.kernels.triton_conv import short_convs as fn

    return fn(items, eps)


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


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, gate: torch.Tensor | None = None,
             out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """RMSNorm of x [..., D] with ``weight`` [D] (times silu(``gate``) when given) on the Triton
    kernels of ``triton_norm``; ``out_dtype`` (default x's dtype) out."""
    from carvelab.kernels.triton_norm import rms_norm as fn

    return fn(x, weight, eps, gate, out_dtype)


def add_rms_norm(x: torch.Tensor, d: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                 out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, RMSNorm(h)) with h = x + d on the Triton kernels of ``triton_norm``: a residual add
    and the norm that reads its result in one launch each way."""
    from carvelab.kernels.triton_norm import add_rms_norm as fn

    return fn(x, d, weight, eps, out_dtype)


_JOINT_PROJ = Switch("CARVELAB_JOINT_PROJ", on="one matmul for the mixer's q, k, v, z and one for the MLP's gate, up "
                     "(with the fused SwiGLU, kernels/triton_swiglu.py)", off="one matmul per projection")


def joint_proj_enabled() -> bool:
    """``CARVELAB_JOINT_PROJ`` (default 1), or the innermost ``joint_proj(...)`` block: whether the
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
                      off="torch's elementwise gate activations")


def fused_gates_enabled() -> bool:
    """``CARVELAB_FUSED_GATES`` (default 1), or the innermost ``fused_gates(...)`` block: whether the
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


_FUSED_CE = Switch("CARVELAB_FUSED_CE", on="the fused Triton cross-entropy (kernels/triton_ce.py)",
                   off="torch's cross-entropy on fp32 logits")


def fused_ce_enabled() -> bool:
    """``CARVELAB_FUSED_CE`` (default 1), or the innermost ``fused_ce(...)`` block: whether the
    training loss runs on ``cross_entropy`` (where the model's recurrence is on Triton)."""
    return _FUSED_CE.enabled()


def fused_ce(enabled: bool):
    """Within this block the training loss runs fused (True) or on torch ops (False)."""
    return _FUSED_CE.override(enabled)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean cross-entropy of logits [N, V] against targets [N] (``ignore_index`` rows left out)
    on the Triton kernels of ``triton_ce``; fp32 inside, the gradient in the logits' dtype."""
    from carvelab.kernels.triton_ce import cross_entropy as fn

    return fn(logits, targets, ignore_index)


_CAST_ONCE = Switch("CARVELAB_CAST_ONCE", on="every projection weight cast to bf16 at once (kernels/weight_cast.py)",
                    off="each projection casts its own weight")


def cast_once_enabled() -> bool:
    """``CARVELAB_CAST_ONCE`` (default 1), or the innermost ``cast_once(...)`` block: whether a
    model under autocast casts all its projection weights at once (where its recurrence is on
    Triton)."""
    return _CAST_ONCE.enabled()


def cast_once(enabled: bool):
    """Within this block the projection weights are cast at once (True) or one by one (False)."""
    return _CAST_ONCE.override(enabled)


def cast_all(weights: list, dtype: torch.dtype) -> list:
    """``[w.to(dtype) for w in weights]`` in one pass each way (``weight_cast``)."""
    from carvelab.kernels.weight_cast import cast_all as fn

    return fn(weights, dtype)


class Piece(NamedTuple):
    """One fused piece: its switch (``enabled()``, ``override(on)``: a ``with`` block), the tag a
    trial's backend carries while it is on, and whether only the recurrent mixer has it (the
    norms and the MLP's projection are in every model)."""
    enabled: Callable[[], bool]
    override: Callable[[bool], ContextManager]
    tag: str
    mixer_only: bool


PIECES = {
    "conv": Piece(fused_conv_enabled, fused_conv, "+fused_conv", True),
    "norm": Piece(fused_norm_enabled, fused_norm, "+fused_norm", False),
    "joint": Piece(joint_proj_enabled, joint_proj, "+joint_proj", False),
    "gates": Piece(fused_gates_enabled, fused_gates, "+fused_gates", True),
    "ce": Piece(fused_ce_enabled, fused_ce, "+fused_ce", False),
    "cast": Piece(cast_once_enabled, cast_once, "+cast_once", False),
}
