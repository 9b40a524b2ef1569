"""Argument checking and broadcasting shared by every recurrence backend.

Every backend (reference, torch chunked, Triton) takes the same arguments,
``fn(q, k, v, g, b, w, r=None, options=None, *, content=None, initial_state=None,
initial_cov=None)`` with ``options`` a ``RecurrenceOptions`` (``kernels.options``; the
settings, validated when built); this module turns them into one canonical fp32 layout so
the backends only differ in algorithm:

    q, k   [B, T, H, dk]      v [B, T, H, dv]
    g      [B, T, H, dk]      log-decay (<= 0); a [B, T, H] scalar decay is expanded
    b      [B, T, H, n_b]     erase gate, n_b = dk (key axis) or dv (value axis);
                              a [B, T, H] per-head gate is expanded
    w      [B, T, H, dv]      write gate; a [B, T, H] scalar gate is expanded
    r      [B, T, H]          observation noise (> 0), propagate mode only

With a content gate the target tensor (``b`` for ``target="erase"``, ``g`` for
``target="decay"``) holds the gate *pre-activation* instead of the gate, because the
per-chunk correction must be added before the nonlinearity. A [B, T, H] target is then
kept with a trailing axis of size 1 (a per-head gate stays per head).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch

from carvelab.kernels.options import CONTENT_TARGETS, ERASE_SCALES, RecurrenceOptions, recurrence_options


class ContentGate(NamedTuple):
    """CARVE's content-aware gate, one low-rank map per head.

    ``delta_c = U_h (V_h m_c)`` is added to the target gate's pre-activation for every
    token of chunk c, where ``m_c`` is the mean recurrence output of chunk c-1
    (``m_0 = 0``).

    U: [H, n, rank]  (n = width of the target gate: dk, dv or 1)
    V: [H, rank, dv]
    target: "erase" (b = erase_scale * sigmoid(pre + delta)) or
            "decay" (g = -exp(A_log) * softplus(pre + delta))
    A_log: [H], required for target "decay".
    erase_scale: 1.0 (eigenvalue range [0, 1]) or 2.0 ([-1, 1]; options.ERASE_SCALES).
    """

    U: torch.Tensor
    V: torch.Tensor
    target: str = "erase"
    A_log: Optional[torch.Tensor] = None
    erase_scale: float = 1.0


class RecurrenceOutput(NamedTuple):
    """o: [B, T, H, dv]; state: [B, H, dk, dv] fp32; cov: [B, H, dk, dk] fp32 or None."""

    o: torch.Tensor
    state: torch.Tensor
    cov: Optional[torch.Tensor]


@dataclass
class Canonical:
    """Inputs in the canonical fp32 layout (see the module docstring)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    g: torch.Tensor
    b: torch.Tensor
    w: torch.Tensor
    r: Optional[torch.Tensor]
    erase_axis: str
    covariance: str
    content: Optional[ContentGate]
    chunk_size: int
    initial_state: Optional[torch.Tensor]
    initial_cov: Optional[torch.Tensor]
    scale: float

    @property
    def dims(self) -> tuple[int, int, int, int, int]:
        B, T, H, dk = self.q.shape
        return B, T, H, dk, self.v.shape[-1]


def keyword_settings(backend: Callable) -> Callable:
    """``backend`` (tensors, options) as a public entry point that also takes the settings
    as keywords: ``fn(q, k, v, g, b, w, r=None, options=None, *, content=None,
    initial_state=None, initial_cov=None, **settings)`` with ``settings`` any fields of
    ``RecurrenceOptions``, laid over ``options`` by ``options.recurrence_options``."""

    @functools.wraps(backend)
    def entry(q, k, v, g, b, w, r=None, options=None, *, content=None, initial_state=None, initial_cov=None,
              **settings):
        return backend(q, k, v, g, b, w, r, recurrence_options(options, **settings), content=content,
                       initial_state=initial_state, initial_cov=initial_cov)

    return entry


def _expand_last(name: str, x: torch.Tensor, lead: tuple[int, ...], n: int, keep_one: bool) -> torch.Tensor:
    """Accept [*lead] or [*lead, n] (or [*lead, 1] when ``keep_one``); return [*lead, n']."""
    if tuple(x.shape) == lead:
        x = x.unsqueeze(-1)
        return x if keep_one else x.expand(*lead, n)
    if tuple(x.shape[:-1]) != lead or x.shape[-1] not in ((n, 1) if keep_one else (n,)):
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}; expected {list(lead)} or {list(lead) + [n]}"
        )
    return x


def canonicalize(
    q, k, v, g, b, w, r, options: RecurrenceOptions, *, content=None, initial_state=None, initial_cov=None,
    keep_dtypes=(),
) -> Canonical:
    """Check every tensor against ``options`` (naming the bad one) and bring it into the
    canonical layout; the settings themselves were checked when ``options`` was built.

    q, k, v become fp32 unless their dtype is in ``keep_dtypes`` (kernels that upcast on
    load take bf16 as is, which saves a copy of each); gates are always fp32."""
    if not isinstance(options, RecurrenceOptions):
        raise TypeError(f"options must be a RecurrenceOptions; got {type(options).__name__}")
    if isinstance(r, RecurrenceOptions):
        raise TypeError("a RecurrenceOptions was passed as r: options come after r (pass r=None, or options=...)")
    erase_axis, covariance = options.erase_axis, options.covariance
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be [B, T, H, dk]; got {tuple(q.shape)} and {tuple(k.shape)}")
    B, T, H, dk = q.shape
    if v.dim() != 4 or tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(f"v must be [B, T, H, dv] with B, T, H = {B, T, H}; got {tuple(v.shape)}")
    dv = v.shape[-1]
    lead = (B, T, H)
    target = None
    if content is not None:
        if content.target not in CONTENT_TARGETS:
            raise ValueError(f"content.target={content.target!r} is not allowed; choose one of {list(CONTENT_TARGETS)}")
        target = content.target
        if target == "decay" and content.A_log is None:
            raise ValueError("content.A_log is required when content.target='decay'")
        if content.erase_scale not in ERASE_SCALES.values():
            raise ValueError(f"content.erase_scale={content.erase_scale!r} is not allowed; choose one of "
                             f"{sorted(ERASE_SCALES.values())} (eigenvalue ranges {list(ERASE_SCALES)})")
        if target == "decay" and content.erase_scale != 1.0:
            raise ValueError("content.erase_scale applies to target='erase'; with target='decay' the erase "
                             "gate b is passed activated (scale it before the call)")
    n_b = dk if erase_axis == "key" else dv
    g = _expand_last("g", g.float(), lead, dk, keep_one=target == "decay")
    b = _expand_last("b", b.float(), lead, n_b, keep_one=target == "erase")
    w = _expand_last("w", w.float(), lead, dv, keep_one=False)
    if covariance == "propagate":
        if r is None or tuple(r.shape) != lead:
            raise ValueError(f"covariance='propagate' needs r of shape {list(lead)}; got {None if r is None else tuple(r.shape)}")
        r = r.float()
    elif r is not None:
        raise ValueError("r (observation noise) is only used with covariance='propagate'")
    if content is not None:
        n = (g if target == "decay" else b).shape[-1]
        rank = content.U.shape[-1]
        if tuple(content.U.shape) != (H, n, rank) or tuple(content.V.shape) != (H, rank, dv):
            raise ValueError(
                f"content gate U must be [H, n, rank] = [{H}, {n}, rank] and V [H, rank, dv] = "
                f"[{H}, rank, {dv}]; got U {tuple(content.U.shape)}, V {tuple(content.V.shape)}"
            )
    if initial_state is not None and tuple(initial_state.shape) != (B, H, dk, dv):
        raise ValueError(f"initial_state must be [B, H, dk, dv] = {[B, H, dk, dv]}; got {tuple(initial_state.shape)}")
    if initial_cov is not None:
        if covariance != "propagate":
            raise ValueError("initial_cov is only used with covariance='propagate'")
        if tuple(initial_cov.shape) != (B, H, dk, dk):
            raise ValueError(f"initial_cov must be [B, H, dk, dk] = {[B, H, dk, dk]}; got {tuple(initial_cov.shape)}")
    def upcast(x):
        return x if x.dtype in keep_dtypes else x.float()

    return Canonical(
        q=upcast(q), k=upcast(k), v=upcast(v), g=g, b=b, w=w, r=r,
        erase_axis=erase_axis, covariance=covariance, content=content, chunk_size=options.chunk_size,
        initial_state=None if initial_state is None else initial_state.float(),
        initial_cov=None if initial_cov is None else initial_cov.float(),
        scale=dk ** -0.5 if options.scale is None else float(options.scale),
    )


def content_delta(content: ContentGate, m: torch.Tensor) -> torch.Tensor:
    """delta = U_h (V_h m) for m [B, H, dv]; returns [B, H, n] in fp32."""
    low = torch.einsum("hrv,bhv->bhr", content.V.float(), m)
    return torch.einsum("hnr,bhr->bhn", content.U.float(), low)


def activate_target(content: ContentGate, pre: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Apply the target gate's nonlinearity to ``pre + delta``.

    pre: [B, L, H, n] pre-activation of the tokens of one chunk; delta: [B, H, n].
    """
    x = pre + delta.unsqueeze(1)
    if content.target == "erase":
        y = torch.sigmoid(x)
        return y if content.erase_scale == 1.0 else content.erase_scale * y
    return -torch.exp(content.A_log.float()).view(1, 1, -1, 1) * torch.nn.functional.softplus(x)


def initial_cov_or_eye(c: Canonical) -> torch.Tensor:
    B, _, H, dk, _ = c.dims
    if c.initial_cov is not None:
        return c.initial_cov
    return torch.eye(dk, device=c.q.device).expand(B, H, dk, dk)


def initial_state_or_zeros(c: Canonical) -> torch.Tensor:
    B, _, H, dk, dv = c.dims
    if c.initial_state is not None:
        return c.initial_state
    return c.q.new_zeros(B, H, dk, dv)
