"""The torch chunked path of the unified gated delta recurrence.

    chunk_gated_delta(q, k, v, g, b, w, r=None, options=RecurrenceOptions(), *,
                      content=None, initial_state=None, initial_cov=None) -> RecurrenceOutput
    chunk_gated_delta_value(...same, options=RecurrenceOptions(erase_axis="value")...)

Same tensors, shapes and result as ``gated_delta_reference`` (see
``carvelab.kernels._args``); plain torch ops, so autograd gives every gradient. Both
compute in fp32 and refuse ``options.precision="fast"``.

``chunk_gated_delta`` is the key-axis family: per chunk of C tokens one WY / UT transform
with a single triangular solve shared by all dv value columns (``_wy.key_chunk``).
``chunk_gated_delta_value`` is the value-axis erase, exact through dv per-column solves
(``_wy.value_step``). In propagate mode a sequential P-pass (``covariance``) first yields
the write directions u_t.

Without a content gate every chunk's set-up runs for all chunks at once, a short loop over
chunks carries the state, and the outputs are formed for all chunks after it. With a
content gate chunk c's gate depends on the outputs of chunk c-1, so the set-up (and, for
a decay target in propagate mode, the P-pass) of chunk c runs inside the loop. Both use
the same per-chunk functions, so with an all-zero content map the two give bit-identical
results. Derivation and numerics: ``kernels/README.md``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F

from carvelab.kernels._args import (
    Canonical,
    ContentGate,
    RecurrenceOutput,
    activate_target,
    canonicalize,
    content_delta,
    initial_cov_or_eye,
    initial_state_or_zeros,
)
from carvelab.kernels._wy import (
    chunk_decay,
    chunk_output,
    key_chunk,
    key_step,
    padded_chunk,
    value_chunk,
    value_step,
)
from carvelab.kernels.covariance import propagate_pass
from carvelab.kernels.options import RecurrenceOptions, check_precision

logger = logging.getLogger(__name__)


class _Axis(NamedTuple):
    """One erase axis: the gate-dependent set-up stage and the sequential state step."""

    setup: Callable     # (ChunkDecay, k, b, x) -> chunk
    step: Callable      # (S, chunk) -> (Δ, S_next)


_KEY = _Axis(key_chunk, key_step)
_VALUE = _Axis(value_chunk, value_step)


_KEY_OPTIONS = RecurrenceOptions()
_VALUE_OPTIONS = RecurrenceOptions(erase_axis="value")


def chunk_gated_delta(
    q, k, v, g, b, w, r=None, options: RecurrenceOptions = _KEY_OPTIONS, *, content=None,
    initial_state=None, initial_cov=None,
) -> RecurrenceOutput:
    """Key-axis chunked WY path; arguments and result as ``gated_delta_reference``.

    Refuses ``erase_axis="value"``: see ``chunk_gated_delta_value``.
    """
    c = _canonical(q, k, v, g, b, w, r, options, content, initial_state, initial_cov)
    if c.erase_axis != "key":
        raise ValueError(
            f"erase_axis={c.erase_axis!r} is not supported by chunk_gated_delta, which needs "
            "erase_axis='key': a value-axis erase mask that varies over dv gives every value "
            "column its own triangular system, so there is no single shared WY solve. "
            "carvelab.kernels.dispatch.gated_delta routes the value axis to "
            "chunk_gated_delta_value (exact per-column solves)."
        )
    return _run(c, _KEY, v.dtype)


def chunk_gated_delta_value(
    q, k, v, g, b, w, r=None, options: RecurrenceOptions = _VALUE_OPTIONS, *, content=None,
    initial_state=None, initial_cov=None,
) -> RecurrenceOutput:
    """Value-axis chunked path with dv per-column solves; arguments as the reference.

    Exact for any value-axis mask, at dv times the solve work of the key-axis path.
    """
    c = _canonical(q, k, v, g, b, w, r, options, content, initial_state, initial_cov)
    if c.erase_axis != "value":
        raise ValueError(
            f"erase_axis={c.erase_axis!r} is not supported by chunk_gated_delta_value, which "
            "needs erase_axis='value'; use chunk_gated_delta for the key axis (one shared solve)"
        )
    return _run(c, _VALUE, v.dtype)


def _canonical(q, k, v, g, b, w, r, options, content, initial_state, initial_cov) -> Canonical:
    check_precision(options.precision, "torch_chunk")
    return canonicalize(q, k, v, g, b, w, r, options, content=content, initial_state=initial_state,
                        initial_cov=initial_cov)


@dataclass(frozen=True)
class _Chunks:
    """Token layout [B, T, H, d] <-> chunk layout [B, H, N, Cp, d].

    Chunks hold ``C`` tokens; the last one and every chunk up to ``Cp`` (a whole number
    of sub-chunks) are zero-padded. Padded tokens have k = q = x = 0 and g = 0, so they
    write nothing, erase nothing and decay nothing.
    """

    T: int
    C: int
    Cp: int

    @property
    def N(self) -> int:
        return -(-self.T // self.C)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, H, d] (any L) -> [B, H, ceil(L / C), Cp, d]."""
        B, L, H, d = x.shape
        n = -(-L // self.C)
        if n * self.C != L:
            x = F.pad(x, (0, 0, 0, 0, 0, n * self.C - L))
        x = x.reshape(B, n, self.C, H, d)
        if self.Cp != self.C:
            x = F.pad(x, (0, 0, 0, 0, 0, self.Cp - self.C))
        return x.permute(0, 3, 1, 2, 4).contiguous()

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        """[B, H, N, Cp, d] -> [B, T, H, d]."""
        B, H, N, _, d = y.shape
        y = y[:, :, :, : self.C].permute(0, 2, 3, 1, 4).reshape(B, N * self.C, H, d)
        return y[:, : self.T]


def _per_chunk(setup: NamedTuple) -> list[NamedTuple]:
    """Split a set-up whose fields are [B, H, N, ...] into N per-chunk set-ups.

    One ``unbind`` per field: its backward stacks the N gradients once, where indexing
    chunk by chunk would allocate a full-size zero gradient per chunk.
    """
    return [type(setup)(*fields) for fields in zip(*(f.unbind(2) for f in setup))]


def _run(c: Canonical, axis: _Axis, out_dtype: torch.dtype) -> RecurrenceOutput:
    B, T, H, _, dv = c.dims
    S0 = initial_state_or_zeros(c)
    P0 = initial_cov_or_eye(c) if c.covariance == "propagate" else None
    if T == 0:
        return RecurrenceOutput(c.v.new_zeros(B, 0, H, dv).to(out_dtype), S0, P0)
    chunks = _Chunks(T, c.chunk_size, padded_chunk(c.chunk_size))
    drive = _run_parallel if c.content is None else _run_content
    logger.debug("%s: %d chunks of %d (padded to %d), covariance=%s, content=%s", drive.__name__,
                 chunks.N, chunks.C, chunks.Cp, c.covariance, None if c.content is None else c.content.target)
    o, S, P = drive(c, axis, chunks, S0, P0)
    return RecurrenceOutput(chunks.merge(o).to(out_dtype), S, P)


def _directions(c: Canonical, g: torch.Tensor, P: Optional[torch.Tensor], lo: int, hi: int):
    """Write directions of tokens [lo, hi) in token layout, and the covariance after them."""
    if c.covariance == "reset":
        return c.k[:, lo:hi], P
    return propagate_pass(P, c.k[:, lo:hi], g, c.r[:, lo:hi])


def _run_parallel(c: Canonical, axis: _Axis, chunks: _Chunks, S0, P0):
    """No content gate: set-up of all chunks at once, a light scan, outputs at once."""
    u, P = _directions(c, c.g, P0, 0, chunks.T)
    split = chunks.split
    dec = chunk_decay(split(c.q * c.scale), split(u), split(c.g))
    setup = axis.setup(dec, split(c.k), split(c.b), split(c.w * c.v))
    S, starts, deltas = S0, [], []
    for chunk in _per_chunk(setup):
        starts.append(S)
        delta, S = axis.step(S, chunk)
        deltas.append(delta)
    o = chunk_output(torch.stack(starts, 2), torch.stack(deltas, 2), setup)
    return o, S, P


def _run_content(c: Canonical, axis: _Axis, chunks: _Chunks, S0, P0):
    """Content gate: chunk c's gate needs the mean output of chunk c-1, so its set-up is in the loop."""
    B, T, H, _, dv = c.dims
    gate_of = _ChunkGate(c)
    setups = (_DecayTargetSetups if c.content.target == "decay" else _EraseTargetSetups)(c, axis, chunks, P0)
    S, m, outs = S0, c.v.new_zeros(B, H, dv), []
    for n in range(chunks.N):
        lo, hi = n * chunks.C, min(T, (n + 1) * chunks.C)
        chunk = setups(n, lo, hi, gate_of(lo, hi, m))
        delta, S_next = axis.step(S, chunk)
        o_n = chunk_output(S, delta, chunk)
        S, m = S_next, o_n[:, :, : hi - lo].mean(-2)
        outs.append(o_n)
    return torch.stack(outs, 2), S, setups.P


class _EraseTargetSetups:
    """Erase target: the gate-free stage (``chunk_decay``) of all chunks at once, then per
    chunk only what depends on b."""

    def __init__(self, c: Canonical, axis: _Axis, chunks: _Chunks, P0) -> None:
        split = self.split = chunks.split
        u, self.P = _directions(c, c.g, P0, 0, c.dims[1])
        self.decays = _per_chunk(chunk_decay(split(c.q * c.scale), split(u), split(c.g)))
        self.k, self.x = split(c.k).unbind(2), split(c.w * c.v).unbind(2)
        self.axis = axis

    def __call__(self, n: int, lo: int, hi: int, gate: torch.Tensor):
        return self.axis.setup(self.decays[n], self.k[n], self.split(gate)[:, :, 0], self.x[n])


class _DecayTargetSetups:
    """Decay target: all of chunk c's set-up, and in propagate mode the P-pass of its
    tokens, depends on its decay."""

    def __init__(self, c: Canonical, axis: _Axis, chunks: _Chunks, P0) -> None:
        split = self.split = chunks.split
        self.q, self.k = split(c.q * c.scale).unbind(2), split(c.k).unbind(2)
        self.b, self.x = split(c.b).unbind(2), split(c.w * c.v).unbind(2)
        self.c, self.axis, self.P = c, axis, P0

    def __call__(self, n: int, lo: int, hi: int, gate: torch.Tensor):
        if self.c.covariance == "propagate":
            u, self.P = _directions(self.c, gate, self.P, lo, hi)
            u = self.split(u)[:, :, 0]
        else:
            u = self.k[n]
        dec = chunk_decay(self.q[n], u, self.split(gate)[:, :, 0])
        return self.axis.setup(dec, self.k[n], self.b[n], self.x[n])


class _ChunkGate:
    """The target gate of the tokens of one chunk, in token layout [B, L, H, n_gate]."""

    def __init__(self, c: Canonical) -> None:
        B, _, H, dk, dv = c.dims
        self.content = c.content
        decay = c.content.target == "decay"
        self.pre = c.g if decay else c.b
        self.width = dk if decay or c.erase_axis == "key" else dv
        # whole-tensor activation for the zero-correction tokens (see ``_chunk_gate``)
        with torch.no_grad():
            self.base = activate_target(c.content, self.pre, self.pre.new_zeros(B, H, self.pre.shape[-1]))

    def __call__(self, lo: int, hi: int, m: torch.Tensor) -> torch.Tensor:
        """Gate of tokens [lo, hi) given m [B, H, dv], the previous chunk's mean output."""
        pre = self.pre[:, lo:hi]
        gate = _chunk_gate(self.content, pre, self.base[:, lo:hi], content_delta(self.content, m))
        return gate.expand(*pre.shape[:-1], self.width)


def _chunk_gate(content: ContentGate, pre: torch.Tensor, base: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
    """Target gate of one chunk: act(pre + corr), pre/base [B, L, H, n], corr [B, H, n].

    Elementwise activations evaluated on a slice can differ in the last bit from the same
    activation evaluated on the whole tensor (vectorised body vs scalar tail). Where the
    correction is exactly zero (chunk 0, and every chunk while U = 0) the value is taken
    from ``base``, the whole-tensor activation of ``pre``, so the gated model reproduces
    the ungated one bit for bit; the gradient always flows through ``act(pre + corr)``.
    """
    y = activate_target(content, pre, corr)
    zero = (corr == 0).unsqueeze(1)
    return torch.where(zero, base, y.detach()) + (y - y.detach())
