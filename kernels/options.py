"""The vocabulary of the recurrence, declared once: ``RecurrenceOptions`` and the allowed values.

``RecurrenceOptions`` is the frozen set of a recurrence call's settings (everything that is
not a tensor); it checks itself when built, so every backend (reference, torch chunked,
Triton), the dispatcher and the model config (``carve_models.config.ModelConfig.recurrence``)
share one validation. The gate forms (decay, erase gate, write gate) are the model's
vocabulary: their names live here so the config can check them without building layers,
and ``register_gate_form`` adds a name (``carve_models.gates.register_gate_form`` is the
public way: it registers the form's class too).

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

import numbers
from dataclasses import dataclass, fields, replace
from typing import Optional

ERASE_AXES = ("key", "value")               # where the erase mask b acts
COVARIANCES = ("reset", "propagate")        # delta rule, or Bayesian covariance propagation
CONTENT_TARGETS = ("erase", "decay")        # the gate CARVE's content gate corrects
CHUNK_SIZES = (16, 32, 64, 128)             # model chunk sizes (WY chunk; content chunk with the gate)
TRITON_CHUNK_SIZES = (16, 32, 64)           # WY chunks the Triton kernels run
PRECISIONS = ("exact", "fast")              # products of the chunked Triton kernels (below)
PRECISION_SETTINGS = ("auto",) + PRECISIONS  # auto: fast on the Triton kernels, exact elsewhere
BACKENDS = ("auto", "triton", "torch", "reference")  # see kernels.dispatch
EIGEN_RANGES = ("[0,1]", "[-1,1]")          # eigenvalues of the erase transition (below)
ERASE_SCALES = {"[0,1]": 1.0, "[-1,1]": 2.0}  # b = scale * sigmoid(logits)

# Gate forms, by gate kind (the model's ``decay`` / ``erase_gate`` / ``write_gate``); the kernels
# see only the gate's width (per channel or one per head). Extended by ``register_gate_form``.
_GATE_FORMS: dict[str, list[str]] = {
    "decay": ["channel", "scalar", "none"],  # per key channel (KDA / GDN-2), one per head (GDN), none (DeltaNet)
    "erase_gate": ["channel", "head"],       # b per channel of the erase axis, or one beta per head
    "write_gate": ["scalar", "per_value"],   # w one per head, or per value channel
}
GATE_KINDS = tuple(_GATE_FORMS)


def _choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}")


def gate_forms(kind: str) -> tuple[str, ...]:
    """The form names gate ``kind`` (one of GATE_KINDS) allows, built-in and registered."""
    _choice("gate kind", kind, GATE_KINDS)
    return tuple(_GATE_FORMS[kind])


def register_gate_form(kind: str, name: str) -> None:
    """Allow ``name`` as a form of gate ``kind``; registering a known name again does nothing.

    Only the name: ``carve_models.gates.register_gate_form`` also registers the layer that
    builds it, and is the one a new form should call."""
    _choice("gate kind", kind, GATE_KINDS)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"gate form name {name!r} must be an identifier, e.g. 'grouped'")
    if name not in _GATE_FORMS[kind]:
        _GATE_FORMS[kind].append(name)


@dataclass(frozen=True)
class RecurrenceOptions:
    """The settings of one recurrence call: everything but its tensors; checked when built.

    erase_axis  ERASE_AXES: where the erase mask acts
    covariance  COVARIANCES: delta rule (reset) or covariance propagation
    chunk_size  positive int: WY chunk of the chunked paths, and the content-gate chunk;
                CHUNK_SIZES are the model's sizes, TRITON_CHUNK_SIZES the Triton kernels'
    scale       read-out scale, positive; None = dk^-1/2
    precision   PRECISION_SETTINGS (see the module docstring; auto = resolve_precision)
    backend     BACKENDS: read by ``dispatch.gated_delta`` only (a backend called directly
                is the implementation); 'triton' refuses chunks beyond TRITON_CHUNK_SIZES,
                and 'torch' / 'reference' refuse precision 'fast'

    The content gate's ``target`` and ``erase_scale`` stay in ``ContentGate`` with its
    tensors: the target decides U's shape and which gate tensor arrives pre-activation, so
    it is a property of those tensors, checked with them (``_args.canonicalize``), and a
    call without a content gate has no target to set.
    """

    erase_axis: str = "key"
    covariance: str = "reset"
    chunk_size: int = 64
    scale: Optional[float] = None
    precision: str = "exact"
    backend: str = "auto"

    def __post_init__(self) -> None:
        _choice("erase_axis", self.erase_axis, ERASE_AXES)
        _choice("covariance", self.covariance, COVARIANCES)
        if not isinstance(self.chunk_size, int) or isinstance(self.chunk_size, bool) or self.chunk_size < 1:
            raise ValueError(f"chunk_size={self.chunk_size!r} must be a positive int")
        if self.scale is not None and not (
            isinstance(self.scale, numbers.Real) and not isinstance(self.scale, bool) and 0 < self.scale < float("inf")
        ):
            raise ValueError(f"scale={self.scale!r} must be a positive number, or None for dk^-1/2")
        _choice("precision", self.precision, PRECISION_SETTINGS)
        _choice("backend", self.backend, BACKENDS)
        if self.backend == "triton":
            check_triton_chunk(self.chunk_size)
        if self.precision == "fast" and self.backend in ("torch", "reference"):
            raise ValueError(
                f"precision='fast' runs on the Triton backend only; backend={self.backend!r} computes in fp32: "
                "use precision 'exact' or 'auto', or backend 'triton' / 'auto'"
            )


SETTINGS = tuple(f.name for f in fields(RecurrenceOptions))


def recurrence_options(options: Optional[RecurrenceOptions] = None, **settings) -> RecurrenceOptions:
    """``options`` (None: every default) with the keyword ``settings`` (SETTINGS) replaced.

    The one place keyword settings become options, for the public entry points that keep
    them (``dispatch.gated_delta``, ``reference.gated_delta_reference``)."""
    if options is not None and not isinstance(options, RecurrenceOptions):
        raise TypeError(f"options must be a RecurrenceOptions; got {type(options).__name__}")
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise TypeError(f"unknown recurrence setting(s) {unknown}; the settings are {list(SETTINGS)}")
    if options is None:
        return RecurrenceOptions(**settings)
    return replace(options, **settings) if settings else options


def check_triton_chunk(chunk_size: int) -> None:
    """Raise ValueError when the Triton kernels cannot run ``chunk_size``-token WY chunks."""
    if chunk_size > max(TRITON_CHUNK_SIZES):
        raise ValueError(
            f"chunk_size={chunk_size} is not allowed on the Triton backend: its WY chunks are "
            f"{list(TRITON_CHUNK_SIZES)} tokens; choose one of those, or backend='torch' "
            f"(which runs {list(CHUNK_SIZES)})"
        )


def check_precision(precision: str, implementation: str) -> None:
    """Raise ValueError unless ``implementation`` (a backend or dispatch.IMPLEMENTATIONS) runs
    ``precision`` (one of PRECISION_SETTINGS)."""
    _choice("precision", precision, PRECISION_SETTINGS)
    if precision == "fast" and not implementation.startswith("triton"):
        raise ValueError(
            f"precision='fast' runs on the Triton backend only; the {implementation!r} implementation "
            "computes in fp32 (precision='exact')"
        )


def resolve_precision(precision: str, implementation: str) -> str:
    """``auto`` -> ``fast`` on a Triton implementation, ``exact`` elsewhere; an explicit value
    is returned as given once ``implementation`` can run it (``check_precision``)."""
    check_precision(precision, implementation)
    if precision == "auto":
        return "fast" if implementation.startswith("triton") else "exact"
    return precision
