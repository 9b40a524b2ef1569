"""The vocabulary of the recurrence: every axis's allowed values, declared once.

The model config (``carve_models.config``), argument checking (``_args``), dispatch and
the sweep validation read these tuples; nothing else spells them out.

Chunk sizes. ``chunk_size`` is the WY chunk of the chunked paths (and, with a content
gate, the content chunk too). The torch chunked path runs every value of CHUNK_SIZES as
asked; the Triton kernels have WY chunks of TRITON_CHUNK_SIZES tokens only, so a model
whose chunk is larger is refused on the Triton backend (its speed and its analytic cost
would describe different chunks) rather than run on smaller chunks.

Precision. ``exact``: the chunked Triton kernels multiply fp32 inputs in fp32 (``ieee``)
and bf16 inputs in 3xTF32, so bf16 and fp32 runs meet fp32-level error budgets.
``fast``: bf16 tensor-core operands with fp32 accumulation in every product, one-pass
TF32 in the WY inverse's in-chunk solve; state, gates and accumulators stay fp32 (what
flash-linear-attention's chunked kernels do). The recurrent and covariance kernels have
no tensor-core products and compute in fp32 under either value; the torch and reference
backends run ``exact`` only and refuse ``fast``.

Eigenvalue range. With unit-norm k the erase transition ``I - k (b⊙k)ᵀ`` (key axis; per
value column ``I - b_j k kᵀ`` on the value axis) has eigenvalues 1 and ``1 - b``-weighted
values in ``[0, 1]`` while ``b ∈ (0, 1)``. ``[-1,1]`` scales the erase gate to ``(0, 2)``
(flash-linear-attention's ``allow_neg_eigval``, Grazzi et al. 2024), so a token can
reflect the state (``b = 2``: a Householder reflection), which state tracking such as
parity needs. Every backend takes ``b`` as given, so the range is a property of the gate
(``carve_models.gates``) and, with a content gate on the erase gate, of
``ContentGate.erase_scale``, which the backends apply after the sigmoid.
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
PRECISIONS = ("exact", "fast")              # products of the chunked Triton kernels (below)
EIGEN_RANGES = ("[0,1]", "[-1,1]")          # eigenvalues of the erase transition (below)
ERASE_SCALES = {"[0,1]": 1.0, "[-1,1]": 2.0}  # b = scale * sigmoid(logits)


def check_triton_chunk(chunk_size: int) -> None:
    """Raise ValueError when the Triton kernels cannot run ``chunk_size``-token WY chunks."""
    if chunk_size > max(TRITON_CHUNK_SIZES):
        raise ValueError(
            f"chunk_size={chunk_size} is not allowed on the Triton backend: its WY chunks are "
            f"{list(TRITON_CHUNK_SIZES)} tokens; choose one of those, or backend='torch' "
            f"(which runs {list(CHUNK_SIZES)})"
        )


def check_precision(precision: str, implementation: str) -> None:
    """Raise ValueError unless ``implementation`` (dispatch.IMPLEMENTATIONS) runs ``precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not allowed; choose one of {list(PRECISIONS)}")
    if precision == "fast" and not implementation.startswith("triton"):
        raise ValueError(
            f"precision='fast' runs on the Triton backend only; the {implementation!r} implementation "
            "computes in fp32 (precision='exact')"
        )
