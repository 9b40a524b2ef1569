"""Per-chunk WY (UT transform) set-up and the chunk-to-chunk state step.

Shapes: every function takes tensors with arbitrary leading (batch) axes ``...`` and a
chunk of ``C`` tokens, ``C`` a multiple of ``SUB`` (or at most ``SUB``)::

    q, k, u, g, b_key  [..., C, dk]     x = w ⊙ v, b_value  [..., C, dv]
    S                  [..., dk, dv]    the state at the start of the chunk

``g`` is the per-token log-decay; ``G = cumsum(g)`` within the chunk. ``u`` is the write
direction (``k`` in reset mode, the covariance-propagated direction otherwise) and ``q``
arrives already multiplied by the output scale. Every ``exp`` has a non-positive
argument, so strong decays underflow to 0 instead of overflowing (see ``_pairs``).

The set-up has two stages: ``chunk_decay`` needs only (q, u, g); ``key_chunk`` /
``value_chunk`` add the erase gate b (and k, x). With a content gate on the erase
target the first stage runs for all chunks at once and only the second waits for the
previous chunk. The maths is derived in ``kernels/README.md``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from carvelab.kernels._pairs import SUB, PairFactors, diagonal_terms, pair_factors, strict_pairs


def padded_chunk(chunk_size: int) -> int:
    """Chunk length rounded up to a whole number of sub-chunks (padded tokens are inert)."""
    if chunk_size <= SUB:
        return chunk_size
    return -(-chunk_size // SUB) * SUB


class ChunkDecay(NamedTuple):
    """What a chunk's set-up needs before the erase gate is known.

    qg [..., C, dk]: q_t ⊙ exp(G_t)            Qm [..., C, C]: Q[t, s], s <= t (query · write)
    ug [..., C, dk]: u_s ⊙ exp(G_C - G_s)      eG [..., C, dk]: exp(G_t)
    gamma [..., dk]: exp(G_C)                   weighted, decay_in, right: ``PairFactors`` of u
    """

    qg: torch.Tensor
    Qm: torch.Tensor
    ug: torch.Tensor
    gamma: torch.Tensor
    eG: torch.Tensor
    weighted: torch.Tensor
    decay_in: torch.Tensor
    right: torch.Tensor

    @property
    def factors(self) -> PairFactors:
        return PairFactors(self.weighted, self.decay_in, self.right)


def chunk_decay(q: torch.Tensor, u: torch.Tensor, g: torch.Tensor) -> ChunkDecay:
    """Decay factors and the query pair matrix of a chunk; see ChunkDecay."""
    G = g.cumsum(-2)
    eG = torch.exp(G)
    f = pair_factors(u, g, G)
    Qm = strict_pairs(q, f) + torch.diag_embed(diagonal_terms(q, u))
    ug = u * torch.exp(G[..., -1:, :] - G)
    return ChunkDecay(q * eG, Qm, ug, eG[..., -1, :], eG, *f)


class KeyChunk(NamedTuple):
    """Key-axis chunk after the shared solve A = (I + M)^-1.

    Wx [..., C, dv] = A X,  We [..., C, dk] = A Ẽ  (so Δ = Wx - We S_0), plus the decay
    factors the output and the state step need.
    """

    qg: torch.Tensor
    Qm: torch.Tensor
    ug: torch.Tensor
    gamma: torch.Tensor
    Wx: torch.Tensor
    We: torch.Tensor


def key_chunk(dec: ChunkDecay, k: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> KeyChunk:
    """WY set-up of key-axis chunks: one unit-lower-triangular solve shared by all columns.

    M[t, s] = Σ_i e_t[i] u_s[i] exp(G_t[i] - G_s[i]) (s < t) with e = b ⊙ k, and
    (I + M) [Wx | We] = [X | Ẽ] with Ẽ rows exp(G_t) ⊙ e_t.
    """
    e = b * k
    M, Ee = strict_pairs(e, dec.factors), e * dec.eG
    C, dk, dv = k.shape[-2], k.shape[-1], x.shape[-1]
    if C < dk + dv:
        # fewer columns to solve for: form A once, then two matmuls (faster than a
        # triangular solve with dk + dv right-hand sides on CPU)
        A = unit_lower_solve(M, torch.eye(C, dtype=k.dtype, device=k.device).expand_as(M))
        return KeyChunk(dec.qg, dec.Qm, dec.ug, dec.gamma, A @ x, A @ Ee)
    Wx, We = unit_lower_solve(M, torch.cat([x, Ee], -1)).split([dv, dk], -1)
    return KeyChunk(dec.qg, dec.Qm, dec.ug, dec.gamma, Wx, We)


def unit_lower_solve(M: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve (I + M) W = rhs for a strictly lower triangular M [..., C, C].

    ``unitriangular=True``: the solver takes the diagonal as ones and never reads it, so
    the strictly lower M stands for I + M.
    """
    return torch.linalg.solve_triangular(M, rhs, upper=False, unitriangular=True)


def key_step(S: torch.Tensor, ch: KeyChunk) -> tuple[torch.Tensor, torch.Tensor]:
    """Δ = Wx - We S_0 and S_C = exp(G_C) ⊙ S_0 + Ũᵀ Δ.  Returns (Δ [..., C, dv], S_C)."""
    delta = ch.Wx - ch.We @ S
    return delta, ch.gamma.unsqueeze(-1) * S + ch.ug.transpose(-1, -2) @ delta


class ValueChunk(NamedTuple):
    """Value-axis chunk: the right-hand side pieces and K (no solve yet; it depends on S).

    x [..., C, dv] = w ⊙ v,  b [..., C, dv],  Km [..., C, C] = K[t, s] (s < t),
    kg [..., C, dk] = k_t ⊙ exp(G_t).
    """

    qg: torch.Tensor
    Qm: torch.Tensor
    ug: torch.Tensor
    gamma: torch.Tensor
    x: torch.Tensor
    b: torch.Tensor
    Km: torch.Tensor
    kg: torch.Tensor


def value_chunk(dec: ChunkDecay, k: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> ValueChunk:
    """Value-axis set-up; the per-column solves happen in ``value_step``."""
    Km = strict_pairs(k, dec.factors)
    return ValueChunk(dec.qg, dec.Qm, dec.ug, dec.gamma, x, b.expand_as(x), Km, k * dec.eG)


def value_step(S: torch.Tensor, ch: ValueChunk) -> tuple[torch.Tensor, torch.Tensor]:
    """Column j solves (I + diag(b[:, j]) K) δ_j = X[:, j] - b[:, j] ⊙ (K̃ S_0)[:, j].

    dv unit-lower-triangular solves of size C (one per value column): a mask that varies
    over dv gives every column its own matrix. Returns (Δ [..., C, dv], S_C).
    """
    rhs = ch.x - ch.b * (ch.kg @ S)
    L = ch.b.transpose(-1, -2).unsqueeze(-1) * ch.Km.unsqueeze(-3)          # [..., dv, C, C]
    cols = unit_lower_solve(L, rhs.transpose(-1, -2).unsqueeze(-1))
    delta = cols.squeeze(-1).transpose(-1, -2)
    return delta, ch.gamma.unsqueeze(-1) * S + ch.ug.transpose(-1, -2) @ delta


def chunk_output(S0: torch.Tensor, delta: torch.Tensor, ch) -> torch.Tensor:
    """o_t = (q_t ⊙ exp(G_t))ᵀ S_0 + Σ_{s<=t} Q[t, s] δ_s  ->  [..., C, dv] (q pre-scaled)."""
    return ch.qg @ S0 + ch.Qm @ delta
