"""The specification: the unified gated delta recurrence, token by token, in fp32.

Every fast path (torch chunked, Triton chunked, Triton fused recurrent) is tested
against this file. It is written for clarity, not speed.

Per batch element and head, with a state ``S`` [dk, dv] and ``D_t = Diag(exp(g_t))``::

    S̄_t = D_t S_{t-1}
    reset:      u_t = k_t
    propagate:  P̄_t = D_t P_{t-1} D_t + (I - D_t²)            (P_0 = I)
                c_t = k_tᵀ P̄_t k_t + r_t
                u_t = P̄_t k_t (1 + r_t) / c_t
                P_t = P̄_t - P̄_t k_t k_tᵀ P̄_t / c_t
    key axis   (b_t in (0,1)^dk): S_t = S̄_t + u_t (w_t ⊙ v_t - S̄_tᵀ (b_t ⊙ k_t))ᵀ
    value axis (b_t in (0,1)^dv): S_t = S̄_t + u_t (w_t ⊙ v_t - b_t ⊙ (S̄_tᵀ k_t))ᵀ
    o_t = S_tᵀ (scale · q_t)

Content gate (CARVE): for chunk c = t // chunk_size, ``m_c`` is the mean of ``o`` over
chunk c-1 (``m_0 = 0``) and ``U_h (V_h m_c)`` is added to the target gate's
pre-activation (see ``ContentGate``). Without a content gate ``chunk_size`` is unused.

Settings: a ``RecurrenceOptions`` (``kernels.options``), or its fields as keywords; the
reference computes in fp32 and refuses ``precision="fast"``. Shapes: see
``carvelab.kernels._args``. Returns ``RecurrenceOutput(o, state, cov)``
with ``o`` [B, T, H, dv] in the dtype of ``v``, the final state [B, H, dk, dv] fp32 and,
in propagate mode, the final covariance [B, H, dk, dk] fp32 (else None).
"""
from __future__ import annotations

import torch

from carvelab.kernels._args import (
    RecurrenceOutput,
    activate_target,
    canonicalize,
    content_delta,
    initial_cov_or_eye,
    initial_state_or_zeros,
    keyword_settings,
)
from carvelab.kernels.options import RecurrenceOptions, check_precision


def _propagate_step(P, k, d, r):
    """One covariance step. P [B,H,dk,dk], k/d [B,H,dk], r [B,H]. Returns (u, P_t)."""
    P_bar = d.unsqueeze(-1) * P * d.unsqueeze(-2) + torch.diag_embed(1 - d * d)
    Pk = torch.einsum("bhij,bhj->bhi", P_bar, k)
    c = (k * Pk).sum(-1) + r
    u = Pk * ((1 + r) / c).unsqueeze(-1)
    P_new = P_bar - Pk.unsqueeze(-1) * Pk.unsqueeze(-2) / c[..., None, None]
    return u, P_new


@keyword_settings
def gated_delta_reference(
    q, k, v, g, b, w, r, options: RecurrenceOptions, *, content, initial_state, initial_cov,
) -> RecurrenceOutput:
    """Token-by-token unified recurrence; see the module docstring for the maths.

    ``gated_delta_reference(q, k, v, g, b, w, r=None, options=None, *, content=None,
    initial_state=None, initial_cov=None, **settings)`` (``_args.keyword_settings``)."""
    check_precision(options.precision, "reference")
    c = canonicalize(
        q, k, v, g, b, w, r, options, content=content, initial_state=initial_state, initial_cov=initial_cov,
    )
    B, T, H, dk, dv = c.dims
    S = initial_state_or_zeros(c)
    P = initial_cov_or_eye(c) if c.covariance == "propagate" else None
    gs, bs = c.g, c.b
    outs = []
    delta = None
    for t in range(T):
        if c.content is not None and t % c.chunk_size == 0:
            if t == 0:
                m = c.q.new_zeros(B, H, dv)
            else:
                m = torch.stack(outs[t - c.chunk_size:t], 1).mean(1)
            delta = content_delta(c.content, m)
        g_t, b_t = gs[:, t], bs[:, t]
        if c.content is not None and c.content.target == "decay":
            g_t = activate_target(c.content, gs[:, t:t + 1], delta)[:, 0].expand(B, H, dk)
        if c.content is not None and c.content.target == "erase":
            b_t = activate_target(c.content, bs[:, t:t + 1], delta)[:, 0]
            b_t = b_t.expand(B, H, dk if c.erase_axis == "key" else dv)
        k_t, v_t, w_t = c.k[:, t], c.v[:, t], c.w[:, t]
        d = torch.exp(g_t)
        if P is None:
            u = k_t
        else:
            u, P = _propagate_step(P, k_t, d, c.r[:, t])
        S_bar = d.unsqueeze(-1) * S
        if c.erase_axis == "key":
            erased = torch.einsum("bhkv,bhk->bhv", S_bar, b_t * k_t)
        else:
            erased = b_t * torch.einsum("bhkv,bhk->bhv", S_bar, k_t)
        S = S_bar + u.unsqueeze(-1) * (w_t * v_t - erased).unsqueeze(-2)
        outs.append(torch.einsum("bhkv,bhk->bhv", S, c.scale * c.q[:, t]))
    o = torch.stack(outs, 1) if outs else c.v.new_zeros(B, 0, H, dv)
    return RecurrenceOutput(o.to(v.dtype), S, P)
