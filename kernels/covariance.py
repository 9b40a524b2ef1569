"""The P-pass of covariance propagation: write directions from k, g and r alone.

In ``covariance="propagate"`` mode the covariance ``P_t`` never sees ``v`` or the state
``S``, so one sequential pass over the tokens yields every write direction ``u_t``; the
state recursion that follows is key-axis with the asymmetric factors ``(u_t, b_t ⊙ k_t)``
and the chunked WY solve applies to it unchanged. Per token (``D_t = Diag(exp(g_t))``)::

    P̄_t = D_t P_{t-1} D_t + (I - D_t²)
    c_t = k_tᵀ P̄_t k_t + r_t
    u_t = P̄_t k_t (1 + r_t) / c_t
    P_t = P̄_t - P̄_t k_t k_tᵀ P̄_t / c_t
"""
from __future__ import annotations

import torch


def propagate_step(P, k, d, r):
    """One covariance step. P [B, H, dk, dk]; k, d = exp(g) [B, H, dk]; r [B, H].

    Returns (u [B, H, dk], P_t).
    """
    P_bar = d.unsqueeze(-1) * P * d.unsqueeze(-2) + torch.diag_embed(1 - d * d)
    Pk = (P_bar @ k.unsqueeze(-1)).squeeze(-1)
    c = (k * Pk).sum(-1) + r
    u = Pk * ((1 + r) / c).unsqueeze(-1)
    return u, P_bar - Pk.unsqueeze(-1) * Pk.unsqueeze(-2) / c[..., None, None]


def propagate_pass(P: torch.Tensor, k: torch.Tensor, g: torch.Tensor, r: torch.Tensor):
    """Run the covariance recursion over L tokens.

    P [B, H, dk, dk] (covariance before the first token); k, g [B, L, H, dk]; r [B, L, H].
    Returns (u [B, L, H, dk], P after the last token).
    """
    us = []
    d = torch.exp(g)
    for t in range(k.shape[1]):
        u, P = propagate_step(P, k[:, t], d[:, t], r[:, t])
        us.append(u)
    if not us:
        return torch.zeros_like(k), P
    return torch.stack(us, 1), P
