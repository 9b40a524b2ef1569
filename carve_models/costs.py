"""Analytic costs of a ``ModelConfig``: parameters, forward FLOPs per token, state bytes.

These are known before training, so the pruner and the Pareto fronts can use them as
cost objectives. Notation: d = d_model, H = n_heads, dk / dv the mixer head dims,
C = chunk_size, w = conv_size, m = mlp_width, V = vocab_size, L_r / L_a the numbers of
recurrent / attention layers, W = window.

Parameters (``param_count``, equal to ``sum(p.numel())`` of the built ``HybridLM``)::

    total     = V·d [+ V·d untied head] + d (final norm) + Σ_layers (2d + 3·d·m + mixer)
    attention = 4·d²                                            (q, k, v, o; no biases)
    recurrent = d·H·(2dk + dv)  q, k, v        + w·H·(2dk + dv)  short convs
              + d·H·dv + dv + H·dv·d            output gate, gated norm, output proj
              + decay:  channel d·H·dk + H·dk + H | scalar d·H + 2H | none 0
              + erase:  d·H·n_b  (n_b = 1 head | dk key axis | dv value axis; absent when
                        tie_gates with propagate, where beta = 1/(1+r))
              + write:  (d + 1)·H·n_w  (n_w = 1 scalar | dv per_value; absent when tied)
              + noise:  d·H (propagate)
              + content: H·n_t·rank + H·rank·dv (n_t = width of the target gate)

Forward FLOPs per token (``flops_per_token``; a multiply-add counts 2)::

    2 · (every linear weight of the layers + V·d for the LM head)
    + per recurrent layer: 2·w·H·(2dk + dv)                         short convs
      + H · [ 8·dk·dv                    state: decay 1, erase read 2, write 2, read-out 2, add 1
              + 4·C·(dk + dv)            chunked WY: rows of QKᵀ, KKᵀ (2·C·dk each) and of the
                                         two C×C by C×dv products (2·C·dv each)
              + s·C²/3                   the triangular solve (I+T)⁻¹ amortised over the chunk;
                                         s = dv for a value-axis channel erase gate (one solve
                                         per value column), else 1
              + 6·dk²                    propagate only: P̄ = DPD, P̄k, rank-1 downdate
              + dv + 2·rank·(dv + n_t)/C ] content gate only: chunk mean, U(V m) per chunk
    + per attention layer: 4·d·W̄, W̄ = mean over positions t = 1..seq_len of min(t, W)
      (QKᵀ and the weighted sum of values over the attended keys)

Norms, activations, RoPE and the softmax are left out (O(d) per token).

State bytes at inference (``state_bytes``; fp32, times ``batch``)::

    per recurrent layer: 4·H·dk·dv                  S
                       + 4·H·dk²                    P (propagate)
                       + 4·(w − 1)·H·(2dk + dv)     the short convs' last w−1 inputs
                       + 4·2·H·dv                   content gate: the previous chunk's mean
                                                    and the running sum of this chunk
    per attention layer: 4·2·W·d                    the K and V cache of the window
"""
from __future__ import annotations

from carvelab.carve_models.config import ModelConfig
from carvelab.carve_models.gates import content_target_width, erase_width

FP32_BYTES = 4


def _mixer_linear_weights(cfg: ModelConfig) -> int:
    """Weights of the recurrent mixer's linear maps (the part that costs 2 FLOPs each)."""
    d, H, dk, dv = cfg.d_model, cfg.n_heads, cfg.head_dim_k, cfg.head_dim_v
    n = d * H * (2 * dk + dv) + d * H * dv + H * dv * d
    n += {"channel": d * H * dk, "scalar": d * H, "none": 0}[cfg.decay]
    if not (cfg.tie_gates and cfg.covariance == "propagate"):
        n += d * H * erase_width(cfg)
    if not cfg.tie_gates:
        n += d * H * (1 if cfg.write_gate == "scalar" else dv)
    if cfg.covariance == "propagate":
        n += d * H
    return n


def _mixer_other_params(cfg: ModelConfig) -> int:
    """Biases, convs, norms, decay vectors and the content gate of a recurrent mixer."""
    H, dk, dv = cfg.n_heads, cfg.head_dim_k, cfg.head_dim_v
    n = cfg.conv_size * H * (2 * dk + dv) + dv
    n += {"channel": H * dk + H, "scalar": 2 * H, "none": 0}[cfg.decay]
    if not cfg.tie_gates:
        n += H * (1 if cfg.write_gate == "scalar" else dv)
    if cfg.content_gate:
        n += H * content_target_width(cfg) * cfg.content_rank + H * cfg.content_rank * dv
    return n


def _layer_counts(cfg: ModelConfig) -> tuple[int, int]:
    """(recurrent, attention) mixers; none without sequence mixing."""
    if not cfg.sequence_mixing:
        return 0, 0
    kinds = cfg.layer_kinds()
    return kinds.count("recurrent"), kinds.count("attention")


def param_count(cfg: ModelConfig) -> int:
    """Number of parameters of ``HybridLM(cfg)`` (tied embeddings counted once)."""
    d = cfg.d_model
    n_rec, n_att = _layer_counts(cfg)
    per_layer = 2 * d + 3 * d * cfg.mlp_width
    mixers = n_rec * (_mixer_linear_weights(cfg) + _mixer_other_params(cfg)) + n_att * 4 * d * d
    head = 0 if cfg.tie_embeddings else cfg.vocab_size * d
    return cfg.vocab_size * d + head + d + cfg.n_layers * per_layer + mixers


def _recurrence_flops(cfg: ModelConfig) -> float:
    """Per token, one recurrent layer, all heads: convs + state + chunked WY (+ P, + content)."""
    H, dk, dv, C = cfg.n_heads, cfg.head_dim_k, cfg.head_dim_v, cfg.chunk_size
    solves = dv if (cfg.erase_axis == "value" and cfg.erase_gate == "channel") else 1
    per_head = 8 * dk * dv + 4 * C * (dk + dv) + solves * C * C / 3
    if cfg.covariance == "propagate":
        per_head += 6 * dk * dk
    if cfg.content_gate:
        per_head += dv + 2 * cfg.content_rank * (dv + content_target_width(cfg)) / C
    return 2 * cfg.conv_size * H * (2 * dk + dv) + H * per_head


def mean_attended(seq_len: int, window: int) -> float:
    """Mean over positions t = 1..seq_len of min(t, window): keys each query attends to."""
    full = min(seq_len, window)
    total = full * (full + 1) / 2 + (seq_len - full) * window
    return total / seq_len


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs per token at sequence length ``seq_len`` (formula in the module docstring)."""
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len <= 0:
        raise ValueError(f"seq_len={seq_len!r} must be a positive integer")
    d = cfg.d_model
    n_rec, n_att = _layer_counts(cfg)
    linear = cfg.n_layers * 3 * d * cfg.mlp_width + n_rec * _mixer_linear_weights(cfg)
    linear += n_att * 4 * d * d + cfg.vocab_size * d
    attention = n_att * 4 * d * mean_attended(seq_len, cfg.window)
    return 2.0 * linear + n_rec * _recurrence_flops(cfg) + attention


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
