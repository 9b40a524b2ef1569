"""carvelab.kernels: the gated delta recurrence family.

- ``reference``: the token-by-token fp32 specification.
- ``chunk``: the torch chunked (WY / UT transform) path for the key-axis family.
- ``dispatch.gated_delta``: the one entry point the model layers call.
"""
from carvelab.kernels._args import ContentGate, RecurrenceOutput
from carvelab.kernels.reference import gated_delta_reference

__all__ = ["ContentGate", "RecurrenceOutput", "gated_delta_reference"]
