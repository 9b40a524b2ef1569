"""Decay-weighted pair matrices of one chunk, without overflow.

The chunked recurrence needs, for a right vector y (the write direction u) and a few
left vectors x (the query, the read direction), the strictly lower matrices

    P[t, s] = Σ_i x_t[i] y_s[i] exp(G_t[i] - G_s[i]),    s < t,

with G = cumsum(g) the cumulative log-decay in the chunk (g <= 0). Forming it as
``(x ⊙ exp(G)) (y ⊙ exp(-G))ᵀ`` overflows as soon as the decay over the chunk passes
~88 nats (fp32), e.g. g = -20 per token over 5 tokens. Instead the chunk is cut into
sub-chunks of ``SUB`` tokens:

- t and s in different sub-chunks: split at R = G just before t's sub-chunk (a boundary
  between them), ``(x_t exp(G_t - R)) · (y_s exp(R - G_s))``; both exponents are <= 0
  and each row block is one matmul.
- t and s in the same sub-chunk: ``exp(Σ_{s<r<=t} g_r)`` per pair and channel, exactly in
  log space; only the S(S-1)/2 strict pairs of each sub-chunk are formed.

Everything that depends on y and the decays only (``PairFactors``) is computed once and
contracted with each x (``strict_pairs``); with a content gate on the erase target this
lets the query pairs of all chunks be formed at once while the read pairs of chunk c
wait for chunk c-1.

Shapes: x, y, g, G [..., C, d] with C a multiple of ``SUB`` (or at most ``SUB``).
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch

# Sub-chunk length: the granularity of the decay reference points.
SUB = 16


class PairFactors(NamedTuple):
    """The y- and decay-dependent halves of the pair terms of a chunk of C = n·S tokens.

    weighted [..., n, P, d]: y_s ⊙ exp(Σ_{s<r<=t} g_r) for the P strict pairs (t, s) of
                              each sub-chunk (order of ``torch.tril_indices(S, S, -1)``)
    decay_in [..., n, S, d]: exp(G_t - R_I), R_I = G just before sub-chunk I (R_0 = 0)
    right    [..., n, C, d]: y_s ⊙ exp(R_I - G_s) for s before sub-chunk I, else 0
                              (formed as y_s exp(G_end(J) - G_s) · exp(R_I - G_end(J)), s in J)
    """

    weighted: torch.Tensor
    decay_in: torch.Tensor
    right: torch.Tensor


def pair_factors(y: torch.Tensor, g: torch.Tensor, G: torch.Tensor) -> PairFactors:
    """See ``PairFactors``; y, g, G [..., C, d]."""
    C = G.shape[-2]
    S = min(SUB, C)
    n = C // S
    window, pick_s, _, _ = _sub_chunk_pairs(S, g.device, g.dtype)
    log_decay = window @ g.unflatten(-2, (n, S))                              # [..., n, P, d]
    # a 0/1 matmul rather than indexing: its backward is a matmul, not a scatter
    weighted = (pick_s @ y.unflatten(-2, (n, S))) * torch.exp(log_decay)
    Gb = G.unflatten(-2, (n, S))
    G_end = Gb[..., -1, :]                                                    # [..., n, d]
    ref = torch.cat([torch.zeros_like(G_end[..., :1, :]), G_end[..., :-1, :]], -2)   # R_I
    decay_in = torch.exp(Gb - ref.unsqueeze(-2))
    # y_s exp(R_I - G_s) = [y_s exp(G_end(J) - G_s)] · exp(R_I - G_end(J)) for s in block J < I:
    # two factors <= 1, the second only [n, n, d]
    to_end = y.unflatten(-2, (n, S)) * torch.exp(G_end.unsqueeze(-2) - Gb)    # [..., n(J), S, d]
    log_between = (ref.unsqueeze(-2) - G_end.unsqueeze(-3)).masked_fill(_not_earlier(n, G.device), float("-inf"))
    right = to_end.unsqueeze(-4) * torch.exp(log_between).unsqueeze(-2)       # [..., n(I), n(J), S, d]
    return PairFactors(weighted, decay_in, right.flatten(-3, -2))


def strict_pairs(x: torch.Tensor, f: PairFactors) -> torch.Tensor:
    """P[t, s] = Σ_i x_t[i] y_s[i] exp(G_t[i] - G_s[i]) for s < t, else 0: [..., C, C]."""
    n, S = f.decay_in.shape[-3:-1]
    C = n * S
    _, _, own, flat_idx = _sub_chunk_pairs(S, x.device, x.dtype)
    xb = x.unflatten(-2, (n, S))
    every = f.weighted @ xb.transpose(-1, -2)                                 # [..., n, P, S(t')]
    values = every.gather(-1, own.expand(*every.shape[:-1], 1)).squeeze(-1)   # t' = t of the pair
    within = values.new_zeros(*values.shape[:-1], S * S).index_copy(-1, flat_idx, values)
    off = (xb * f.decay_in) @ f.right.transpose(-1, -2)                       # [..., n, S, C]
    eye = torch.eye(n, dtype=x.dtype, device=x.device).view(n, 1, n, 1)
    full = off.unflatten(-1, (n, S)) + within.unflatten(-1, (S, S)).unsqueeze(-2) * eye
    return full.reshape(*full.shape[:-4], C, C)


def diagonal_terms(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The s = t terms Σ_i x_t[i] y_t[i] (no decay): [..., C, d] -> [..., C]."""
    return (x * y).sum(-1)


@lru_cache(maxsize=None)
def _sub_chunk_pairs(S: int, device: torch.device, dtype: torch.dtype):
    """Constants for the P = S(S-1)/2 strict pairs (t, s) of a sub-chunk.

    window [P, S]: row p selects the tokens r with s_p < r <= t_p;  pick_s [P, S]: s_p;
    own [P, 1]: t_p as an index;  flat_idx [P]: t_p * S + s_p.
    """
    t_idx, s_idx = torch.tril_indices(S, S, -1, device=device)
    r = torch.arange(S, device=device)
    s = s_idx.unsqueeze(-1)
    window = ((s < r) & (r <= t_idx.unsqueeze(-1))).to(dtype)
    return window, (s == r).to(dtype), t_idx.unsqueeze(-1), t_idx * S + s_idx


@lru_cache(maxsize=None)
def _not_earlier(n: int, device: torch.device) -> torch.Tensor:
    """[n(I), n(J), 1] bool: sub-chunk J is not before sub-chunk I."""
    block = torch.arange(n, device=device)
    return (block.unsqueeze(0) >= block.unsqueeze(1)).unsqueeze(-1)
