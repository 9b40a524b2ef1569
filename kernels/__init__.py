"""carvelab.kernels: the gated delta recurrence family.

The public surface, what the model layers and tools use:

- ``gated_delta(q, k, v, g, b, w, r, options, ...)``: the one entry point (``dispatch``);
  ``resolve_backend`` says which implementation a call will run.
- ``RecurrenceOptions``: a call's settings (erase axis, covariance, chunk size, scale,
  precision, backend), validated when built (``options``).
- ``gated_delta_reference``: the token-by-token fp32 specification (``reference``).
- ``ContentGate``, ``RecurrenceOutput``: the content gate's parameters and the result.
- ``options``: the vocabulary (every axis's allowed values, the gate forms, the kernels'
  chunk sizes).
- ``short_conv``, ``short_convs``, ``fused_conv_enabled``, ``fused_conv``: the mixer's short
  convolution as Triton kernels (``short_convs``: q, k and v in one launch) and its switch
  (``CARVELAB_FUSED_CONV``, default on; ``fused``).
- ``rms_norm``, ``fused_norm_enabled``, ``fused_norm``: RMSNorm (and the gated one) as Triton
  kernels and their switch (``CARVELAB_FUSED_NORM``, default on; ``fused``).
- ``swiglu``, ``joint_proj_enabled``, ``joint_proj``: SwiGLU's gating of a joint [gate | up]
  projection as Triton kernels, and the switch of the joint input projections
  (``CARVELAB_JOINT_PROJ``, default on; ``fused``).
- ``decay_gate``, ``fused_gates_enabled``, ``fused_gates``: the log-decay gate as Triton kernels
  and its switch (``CARVELAB_FUSED_GATES``, default on; ``fused``).

Everything else here (``_args``, ``chunk``, ``triton_*``, ``_triton_common``, ``tuning``,
``cuda_graph``) is internal; calls go one way: dispatch -> triton_ops (autograd
Functions) -> triton_chunk / triton_recurrent / triton_covariance (launchers, kernels) ->
_triton_common; fused -> triton_conv / triton_norm / triton_swiglu / triton_gates.
"""
from carvelab.kernels import options
from carvelab.kernels._args import ContentGate, RecurrenceOutput
from carvelab.kernels.dispatch import BACKENDS, gated_delta, resolve_backend
from carvelab.kernels.fused import (decay_gate, fused_conv, fused_conv_enabled, fused_gates, fused_gates_enabled,
                                   fused_norm, fused_norm_enabled, joint_proj, joint_proj_enabled, rms_norm,
                                   short_conv, short_convs, swiglu)
from carvelab.kernels.options import RecurrenceOptions
from carvelab.kernels.reference import gated_delta_reference

__all__ = ["BACKENDS", "ContentGate", "RecurrenceOptions", "RecurrenceOutput", "decay_gate", "fused_conv",
           "fused_conv_enabled", "fused_gates", "fused_gates_enabled",
           "fused_norm", "fused_norm_enabled", "gated_delta", "gated_delta_reference", "joint_proj",
           "joint_proj_enabled", "options", "resolve_backend", "rms_norm", "short_conv", "short_convs",
           "swiglu"]
