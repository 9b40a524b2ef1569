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

The model's other fused pieces (the short convolution, the norms, the joint projections, the
decay gate) and their switches are ``kernels.fused``.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from carvelab.kernels._args import RecurrenceOutput, keyword_settings
from carvelab.kernels.options import BACKENDS, RecurrenceOptions, check_triton_chunk, resolve_precision

__all__ = ["BACKENDS", "IMPLEMENTATIONS", "gated_delta", "resolve_backend", "resolve_precision"]

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
