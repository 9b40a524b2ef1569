"""Helpers shared by the Triton kernels (recurrent, chunked, covariance) and their launchers.

Nothing here imports another module of ours but ``options`` (which imports nothing), so
every kernel module can use it and calls keep one direction: dispatch -> triton_ops (entry points, autograd Functions) ->
triton_chunk / triton_recurrent / triton_covariance (launchers and kernels) -> this module.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from carvelab.kernels.options import PRECISIONS


def triton_interpreted() -> bool:
    """True when Triton runs kernels on the host (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def block_size(n: int, cap: int) -> int:
    """Power-of-two tile >= 16 covering ``n`` (``tl.dot`` needs 16), at most ``cap``."""
    return max(16, min(triton.next_power_of_2(n), cap))


def row_launch(N: int, C: int, elements: int, max_programs: int) -> tuple[int, int, int]:
    """(rows per tile, channel tile, programs) of a row-wise kernel over [N, C]: each program
    holds all C channels of its rows (about ``elements`` values a tile, at most 64 rows) and
    loops over row tiles with the grid's stride, so at most ``max_programs`` partial sums."""
    BC = triton.next_power_of_2(C)
    BR = max(1, min(64, elements // BC))
    return BR, BC, max(1, min(triton.cdiv(N, BR), max_programs))


def key_block(K: int) -> int:
    """The key tile: every kernel keeps all of dk in one tile (at most 256 channels)."""
    if K > 256:
        raise ValueError(f"dk={K} is not supported by the Triton kernels; dk must be <= 256")
    return block_size(K, 256)


def dot_precision(*tensors: torch.Tensor) -> str:
    """``tl.dot`` precision of ``exact``: exact fp32 for fp32 inputs; for bf16 inputs 3xTF32
    on tensor cores (plain TF32 loses about 5e-3 relative through the WY inverse)."""
    return "ieee" if all(t.dtype == torch.float32 for t in tensors) else "tf32x3"


def dot_precisions(precision: str, *tensors: torch.Tensor) -> tuple[str, str]:
    """(products, WY solve) ``PREC`` of the chunked kernels for ``precision`` (options.PRECISIONS).

    ``exact``: ``dot_precision`` for both. ``fast``: bf16 operands with fp32 accumulation
    for every product except the in-chunk solve of the WY inverse, which multiplies in
    one-pass TF32 (as fla does). Under the interpreter bf16 operands are rounded exactly
    (``round_bf16``) and multiplied in fp32, and the solve runs in fp32 (no TF32 on a CPU)."""
    if precision == "exact":
        prec = dot_precision(*tensors)
        return prec, prec
    if precision == "fast":
        return ("bf16_host" if triton_interpreted() else "bf16"), ("ieee" if triton_interpreted() else "tf32")
    raise ValueError(f"precision={precision!r} is not allowed; choose one of {list(PRECISIONS)}")


@triton.jit
def round_bf16(x):
    """x (fp32) rounded to the nearest bf16 (ties to even), kept in fp32: bit for bit what
    a bf16 conversion gives, also under the interpreter (whose own conversion truncates)."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def mm(a, b, PREC: tl.constexpr):
    """a @ b accumulated in fp32. PREC: ``bf16`` rounds both operands to bf16 (tensor cores),
    ``bf16_host`` does the same under the interpreter (whose bf16 dot is unusable): operands
    rounded by ``round_bf16``, products exact in fp32; any other value is ``tl.dot``'s
    input_precision (ieee, tf32, tf32x3)."""
    if PREC == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif PREC == "bf16_host":
        return tl.dot(round_bf16(a), round_bf16(b), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def matrix_slice_ptr(base, i_mat, K: tl.constexpr, V: tl.constexpr, r0, c0, BR: tl.constexpr, BV: tl.constexpr):
    """Pointers and mask of the [BR, BV] tile at key row r0, value column c0 of matrix i_mat
    of a [.., K, V] tensor."""
    rk = r0 + tl.arange(0, BR)
    cv = c0 + tl.arange(0, BV)
    return base + i_mat * K * V + rk[:, None] * V + cv[None, :], (rk[:, None] < K) & (cv[None, :] < V)


@triton.jit
def matrix_tile_ptr(base, i_mat, K: tl.constexpr, V: tl.constexpr, c0, BK: tl.constexpr, BV: tl.constexpr):
    """Pointers and mask of the [BK, BV] tile (all key rows) at value column c0 of matrix i_mat."""
    return matrix_slice_ptr(base, i_mat, K, V, 0, c0, BK, BV)
