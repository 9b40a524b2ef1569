"""The vocabulary of the recurrence: every axis's allowed values, declared once.

The model config (``carve_models.config``), argument checking (``_args``), dispatch and
the sweep validation read these tuples; nothing else spells them out.

Chunk sizes. ``chunk_size`` is the WY chunk of the chunked paths (and, with a content
gate, the content chunk too). The torch chunked path runs every value of CHUNK_SIZES as
asked; the Triton kernels have WY chunks of TRITON_CHUNK_SIZES tokens only, so a model
whose chunk is larger is refused on the Triton backend (its speed and its analytic cost
would describe different chunks) rather than run on smaller chunks.
"""
from __future__ import annotations

DECAYS = ("channel", "scalar", "none")      # per key channel (KDA / GDN-2), one per head (GDN), none (DeltaNet)
ERASE_AXES = ("key", "value")               # where the erase mask b acts
ERASE_GATES = ("channel", "head")           # b per channel of the erase axis, or one beta per head
WRITE_GATES = ("scalar", "per_value")       # w one per head, or per value channel
COVARIANCES = ("reset", "propagate")        # delta rule, or Bayesian covariance propagation
CONTENT_TARGETS = ("erase", "decay")        # the gate CARVE's content gate corrects
CHUNK_SIZES = (16, 32, 64, 128)             # model chunk sizes (WY chunk; content chunk with the gate)
TRITON_CHUNK_SIZES = (16, 32, 64)           # WY chunks the Triton kernels run


def check_triton_chunk(chunk_size: int) -> None:
    """Raise ValueError when the Triton kernels cannot run ``chunk_size``-token WY chunks."""
    if chunk_size > max(TRITON_CHUNK_SIZES):
        raise ValueError(
            f"chunk_size={chunk_size} is not allowed on the Triton backend: its WY chunks are "
            f"{list(TRITON_CHUNK_SIZES)} tokens; choose one of those, or backend='torch' "
            f"(which runs {list(CHUNK_SIZES)})"
        )
