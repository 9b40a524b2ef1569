"""Analytic costs of a ``ModelConfig``: parameters, forward FLOPs per token, state bytes.

These are known before training, so the pruner and the Pareto fronts can use them as
cost objectives. Notation: d = d_model, H = n_heads, dk / dv the mixer head dims,
C = chunk_size, w = conv_size, m = mlp_width, V = vocab_size, L_r / L_a the numbers of
recurrent / attention layers, W = window.

Parameters (``param_count``): ``sum(p.numel())`` of ``HybridLM(cfg)`` built on the meta
device (no memory, no initialisation), tied embeddings counted once.

Forward FLOPs per token (``flops_per_token``; a multiply-add counts 2)::

    2 · (every nn.Linear weight of the built model + V·d for a tied LM head)
    + per recurrent layer: 2·w·H·(2dk + dv)                         short convs
      + H · [ 8·dk·dv                    state: decay 1, erase read 2, write 2, read-out 2, add 1
              + 4·C·(dk + dv)            chunked WY: rows of QKᵀ, KKᵀ (2·C·dk each) and of the
                                         two C×C by C×dv products (2·C·dv each)
              + s·C²/3                   the triangular solve (I+T)⁻¹ amortised over the chunk;
                                         s = dv for a value-axis erase gate of more than one
                                         gate per head (one solve per value column), else 1
              + 6·dk²                    propagate only: P̄ = DPD, P̄k, rank-1 downdate
              + dv + 2·rank·(dv + n_t)/C ] content gate only: chunk mean, U(V m) per chunk
    + per attention layer: 4·d·W̄, W̄ = mean over positions t = 1..seq_len of min(t, W)
      (QKᵀ and the weighted sum of values over the attended keys)

Norms, activations, RoPE and the softmax are left out (O(d) per token). The gate widths
(the erase gate's ``n_b``, the content target's ``n_t``) are read off the built mixer, so a
gate form (``gates.GATE_FORMS``) is costed by what it builds.

State bytes at inference (``state_bytes``; fp32, times ``batch``)::

    per recurrent layer: 4·H·dk·dv                  S
                       + 4·H·dk²                    P (propagate)
                       + 4·(w − 1)·H·(2dk + dv)     the short convs' last w−1 inputs
                       + 4·2·H·dv                   content gate: the previous chunk's mean
                                                    and the running sum of this chunk
    per attention layer: 4·2·W·d                    the K and V cache of the window
"""
from __future__ import annotations

import torch
from torch import nn

from carvelab.carve_models.config import ModelConfig
from carvelab.carve_models.mixer import GatedDeltaMixer

FP32_BYTES = 4


def _meta_model(cfg: ModelConfig) -> nn.Module:
    """``HybridLM(cfg)`` on the meta device: its module tree and shapes, no storage."""
    from carvelab.carve_models.lm import HybridLM

    with torch.device("meta"):
        return HybridLM(cfg)


def _layer_counts(cfg: ModelConfig) -> tuple[int, int]:
    """(recurrent, attention) mixers; none without sequence mixing."""
    if not cfg.sequence_mixing:
        return 0, 0
    kinds = cfg.layer_kinds()
    return kinds.count("recurrent"), kinds.count("attention")


def param_count(cfg: ModelConfig) -> int:
    """Number of parameters of ``HybridLM(cfg)`` (tied embeddings counted once)."""
    return sum(p.numel() for p in _meta_model(cfg).parameters())


def _linear_weights(cfg: ModelConfig, model: nn.Module) -> int:
    """Weights of every linear map a token goes through (2 FLOPs each), the LM head included."""
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return n + (cfg.vocab_size * cfg.d_model if cfg.tie_embeddings else 0)


def _recurrence_flops(cfg: ModelConfig, model: nn.Module) -> float:
    """Per token, one recurrent layer, all heads: state + chunked WY (+ P, + content);
    gate widths from the built mixer (0 when ``model`` has none)."""
    mixer = next((m for m in model.modules() if isinstance(m, GatedDeltaMixer)), None)
    if mixer is None:
        return 0.0
    H, dk, dv, C = cfg.n_heads, cfg.head_dim_k, cfg.head_dim_v, cfg.chunk_size
    solves = dv if (cfg.erase_axis == "value" and mixer.gates.n_b > 1) else 1
    per_head = 8 * dk * dv + 4 * C * (dk + dv) + solves * C * C / 3
    if cfg.covariance == "propagate":
        per_head += 6 * dk * dk
    if mixer.content is not None:
        per_head += dv + 2 * cfg.content_rank * (dv + mixer.content.U.shape[1]) / C
    return H * per_head


def mean_attended(seq_len: int, window: int) -> float:
    """Mean over positions t = 1..seq_len of min(t, window): keys each query attends to."""
    full = min(seq_len, window)
    total = full * (full + 1) / 2 + (seq_len - full) * window
    return total / seq_len


def flops_breakdown(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
    """Forward FLOPs per token by part: ``linear`` (every linear map, the LM head included),
    ``conv`` (the short convolutions), ``recurrence`` (the recurrences' own products) and
    ``attention`` (scores and weighted values); formulas in the module docstring."""
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len <= 0:
        raise ValueError(f"seq_len={seq_len!r} must be a positive integer")
    from carvelab.carve_models.conv import ShortConv

    model = _meta_model(cfg)
    n_rec, n_att = _layer_counts(cfg)
    return {
        "linear": 2.0 * _linear_weights(cfg, model),
        "conv": 2.0 * sum(m.weight.numel() for m in model.modules() if isinstance(m, ShortConv)),
        "recurrence": n_rec * _recurrence_flops(cfg, model),
        "attention": n_att * 4 * cfg.d_model * mean_attended(seq_len, cfg.window),
    }


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs per token at sequence length ``seq_len`` (the sum of ``flops_breakdown``)."""
    return sum(flops_breakdown(cfg, seq_len).values())


def state_bytes(cfg: ModelConfig, batch: int = 1) -> int:
    """Bytes of inference state (fp32) for ``batch`` sequences (see the module docstring)."""
    if not isinstance(batch, int) or isinstance(batch, bool) or batch <= 0:
        raise ValueError(f"batch={batch!r} must be a positive integer")
    H, dk, dv = cfg.n_heads, cfg.head_dim_k, cfg.head_dim_v
    n_rec, n_att = _layer_counts(cfg)
    rec = H * dk * dv + (cfg.conv_size - 1) * H * (2 * dk + dv)
    if cfg.covariance == "propagate":
        rec += H * dk * dk
    if cfg.content_gate:
        rec += 2 * H * dv
    att = 2 * cfg.window * cfg.d_model
    return FP32_BYTES * batch * (n_rec * rec + n_att * att)
