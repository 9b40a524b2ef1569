"""Helpers shared by the Triton kernels (recurrent, chunked, covariance) and their launchers.

Nothing here imports another module of ours, so every kernel module can use it and calls
keep one direction: dispatch -> triton_ops (entry points, autograd Functions) ->
triton_chunk / triton_recurrent / triton_covariance (launchers and kernels) -> this module.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def triton_interpreted() -> bool:
    """True when Triton runs kernels on the host (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def block_size(n: int, cap: int) -> int:
    """Power-of-two tile >= 16 covering ``n`` (``tl.dot`` needs 16), at most ``cap``."""
    return max(16, min(triton.next_power_of_2(n), cap))


def key_block(K: int) -> int:
    """The key tile: every kernel keeps all of dk in one tile (at most 256 channels)."""
    if K > 256:
        raise ValueError(f"dk={K} is not supported by the Triton kernels; dk must be <= 256")
    return block_size(K, 256)


def dot_precision(*tensors: torch.Tensor) -> str:
    """``tl.dot`` precision: exact fp32 for fp32 inputs; for bf16 inputs 3xTF32 on tensor
    cores (plain TF32 loses about 5e-3 relative through the WY inverse)."""
    return "ieee" if all(t.dtype == torch.float32 for t in tensors) else "tf32x3"


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
