"""``ModelConfig``: the typed description of one point of the architecture space.

Every field is validated in ``__post_init__``; errors are ``ValueError`` naming the
field, the bad value and what is allowed. The recurrence's settings (erase axis,
covariance, chunk size, backend, precision) are checked by building ``recurrence``, a
``kernels.options.RecurrenceOptions``, so the kernels' declaration owns their allowed
values; the gate forms are checked against ``kernels.options.gate_forms``. Sweep files address these fields as
``model.<field>`` (the six canonical axes map onto ``erase_axis``, ``content_gate``
(+ ``content_rank``, ``content_target``), ``write_gate``, ``hybrid_ratio``,
``chunk_size`` and ``covariance``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import List, Optional

from carvelab.carve_models.mixers import kinds as mixer_kinds
from carvelab.kernels.options import (
    CHUNK_SIZES,
    CONTENT_TARGETS,
    EIGEN_RANGES,
    GATE_KINDS,
    RecurrenceOptions,
    gate_forms,
)

INITS = ("default", "matched")


def parse_hybrid_ratio(ratio: str) -> tuple[int, int]:
    """"H:A" -> (H, A): H recurrent layers then A attention layers per block."""
    parts = str(ratio).split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(
            f"model.hybrid_ratio={ratio!r} must look like 'H:A' with non-negative integers, "
            "e.g. '1:0' (purely recurrent), '3:1', '1:1'"
        )
    h, a = int(parts[0]), int(parts[1])
    if h + a == 0:
        raise ValueError(f"model.hybrid_ratio={ratio!r} has no layers; H + A must be >= 1")
    return h, a


@dataclass
class ModelConfig:
    """A hybrid LM of gated-delta mixers and sliding-window attention.

    Sizes: ``d_model``; ``n_heads`` heads per mixer with key dim
    ``dk = d_model * expand_k / n_heads`` and value dim ``dv = d_model * expand_v / n_heads``.
    Attention layers use ``n_heads`` heads of ``d_model / n_heads``.
    """

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 2
    expand_k: float = 1.0
    expand_v: float = 1.0
    mlp_hidden: Optional[int] = None  # SwiGLU hidden width; None = 8/3 d_model rounded up to 32
    # --- the mixer's design axes ---
    decay: str = "channel"           # channel-wise (KDA/GDN-2), scalar per head (GDN), none (DeltaNet)
    erase_axis: str = "key"          # where the erase mask b acts
    erase_gate: str = "channel"      # b per channel of the erase axis, or one beta per head (b = beta*1)
    write_gate: str = "per_value"    # w per value channel, or one scalar per head
    tie_gates: bool = False          # w = beta, the erase gate's own beta (KDA/GDN); needs head/scalar
    covariance: str = "reset"        # delta rule (reset) or Bayesian covariance propagation
    eigen_range: str = "[0,1]"       # erase transition's eigenvalues: "[0,1]" (b in (0,1)) or "[-1,1]" (b in (0,2))
    content_gate: bool = False       # CARVE's state-readout gate
    content_rank: int = 4
    content_target: str = "erase"
    chunk_size: int = 64             # WY chunk; a model property when the content gate is on
    conv_size: int = 4
    # --- hybrid stack ---
    hybrid_ratio: str = "1:0"
    block: Optional[List[str]] = None  # the repeating block of layer kinds (carve_models.mixers), e.g.
    #                                    [recurrent, recurrent, recurrent, attention]; null = from hybrid_ratio
    window: int = 128                # sliding-window attention span (tokens, incl. itself)
    sequence_mixing: bool = True     # false: every mixer is removed (the no-mixing control)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    # --- construction ---
    init: str = "default"            # matched: every parameter seeded by (seed, its name)
    seed: int = 0
    backend: str = "auto"            # kernel backend, see carvelab.kernels.dispatch
    precision: str = "auto"          # products of the Triton kernels (kernels.options): exact | fast;
    #                                  auto = fast on the Triton backend, exact on torch / reference
    # (erase_axis, covariance, chunk_size, backend, precision: ``recurrence``, one RecurrenceOptions)

    def __post_init__(self) -> None:
        self.validate()

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "content_rank", "conv_size", "window"):
            _positive_int(name, getattr(self, name))
        for name in ("expand_k", "expand_v", "rope_theta", "norm_eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"model.{name}={value!r} must be a positive number")
        if self.mlp_hidden is not None:
            _positive_int("mlp_hidden", self.mlp_hidden)
        for name in GATE_KINDS:
            _one_of(name, getattr(self, name), gate_forms(name))
        for name, allowed in (("content_target", CONTENT_TARGETS), ("init", INITS), ("eigen_range", EIGEN_RANGES)):
            _one_of(name, getattr(self, name), allowed)
        for name in ("tie_gates", "content_gate", "tie_embeddings", "sequence_mixing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"model.{name}={getattr(self, name)!r} must be true or false")
        _one_of("chunk_size", self.chunk_size, CHUNK_SIZES)
        try:
            self.recurrence  # building the options checks the recurrence's settings
        except ValueError as exc:
            raise ValueError(f"model.{exc}") from None
        for name, expand in (("expand_k", self.expand_k), ("expand_v", self.expand_v)):
            total = self.d_model * expand
            if total != int(total) or int(total) % self.n_heads:
                raise ValueError(
                    f"model.d_model * model.{name} = {total} must be an integer divisible by "
                    f"model.n_heads={self.n_heads} (it is split into equal heads)"
                )
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}")
        parse_hybrid_ratio(self.hybrid_ratio)
        if self.block is not None:
            if not isinstance(self.block, list) or not self.block:
                raise ValueError(f"model.block={self.block!r} must be a non-empty list of layer kinds {mixer_kinds()}")
            for kind in self.block:
                if kind not in mixer_kinds():
                    raise ValueError(f"model.block: {kind!r} is not a layer kind; choose from {mixer_kinds()}")
            if self.hybrid_ratio != "1:0":
                raise ValueError(f"model.block={self.block} and model.hybrid_ratio={self.hybrid_ratio!r} both "
                                 "describe the stack; set one (hybrid_ratio 'H:A' is H recurrent then A attention)")
        attn_head_dim = self.d_model // self.n_heads
        if "attention" in self.layer_kinds() and attn_head_dim % 2:
            raise ValueError(
                f"model.d_model / model.n_heads = {attn_head_dim} must be even when "
                f"model.hybrid_ratio={self.hybrid_ratio!r} has attention layers (RoPE rotates channel pairs)"
            )
        if self.tie_gates and (self.erase_gate != "head" or self.write_gate != "scalar"):
            raise ValueError(
                "model.tie_gates=true needs model.erase_gate='head' and model.write_gate='scalar' "
                f"(got erase_gate={self.erase_gate!r}, write_gate={self.write_gate!r})"
            )
        if self.eigen_range != "[0,1]" and self.covariance == "propagate":
            raise ValueError(
                f"model.eigen_range={self.eigen_range!r} needs model.covariance='reset': under 'propagate' the "
                "erase transition is I - u (b*k)^T with the Kalman direction u, whose eigenvalues the erase "
                "gate's range does not set; use eigen_range '[0,1]' with propagate"
            )
        if self.content_gate and self.content_target == "decay" and self.decay == "none":
            raise ValueError("model.content_target='decay' needs a decay; model.decay='none' has none")

    # ---------------------------------------------------------------- derived settings
    @property
    def recurrence(self) -> RecurrenceOptions:
        """The settings the mixers run their recurrence with (``kernels.options``)."""
        return RecurrenceOptions(erase_axis=self.erase_axis, covariance=self.covariance, chunk_size=self.chunk_size,
                                 precision=self.precision, backend=self.backend)

    @property
    def head_dim_k(self) -> int:
        return int(self.d_model * self.expand_k) // self.n_heads

    @property
    def head_dim_v(self) -> int:
        return int(self.d_model * self.expand_v) // self.n_heads

    @property
    def mlp_width(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return -(-int(8 * self.d_model / 3) // 32) * 32

    def layer_kinds(self) -> list[str]:
        """The layer kind of each of the n_layers, repeating ``block`` (default: the H:A block)."""
        h, a = parse_hybrid_ratio(self.hybrid_ratio)
        block = list(self.block) if self.block is not None else ["recurrent"] * h + ["attention"] * a
        return [block[i % len(block)] for i in range(self.n_layers)]

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _one_of(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"model.{name}={value!r} is not allowed; choose one of {list(allowed)}")


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"model.{name}={value!r} must be a positive integer")
