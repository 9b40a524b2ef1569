"""The fused short convolution (kernels/triton_conv.py) against torch's conv1d + SiLU (+ l2norm),
forward and backward, and inside the mixer with CARVELAB_FUSED_CONV on and off.

    TRITON_INTERPRET=1 python -m pytest tests/kernels/test_triton_conv.py -q
"""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch
import torch.nn.functional as F

from carvelab.carve_models.mixer import GatedDeltaMixer, l2norm
from carvelab.carve_models.presets import preset_config
from carvelab.kernels.fused import fused_conv, short_conv, short_convs
from tests.kernels.fused_step import assert_step_unchanged

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


def torch_conv(x, weight, heads=0, eps=1e-6):
    """The torch path's maps in fp32: carve_models.conv.ShortConv, then mixer.l2norm per head."""
    y = F.silu(F.conv1d(F.pad(x.transpose(1, 2), (weight.shape[-1] - 1, 0)), weight, groups=x.shape[-1]))
    y = y.transpose(1, 2)
    if heads:
        B, T, C = x.shape
        y = l2norm(y.reshape(B, T, heads, C // heads), eps).reshape(B, T, C)
    return y


@pytest.mark.parametrize("C, heads, T, width", [
    (48, 2, 37, 4),    # heads of 24 channels (not a power of two), T not a multiple of the token tile
    (100, 0, 37, 4),   # no norm: channel tiles, the last one partial
    (64, 4, 70, 4),
    (32, 0, 5, 2),     # fewer tokens than the width's reach on every row
])
def test_short_conv_equals_torch_forward_and_backward(C, heads, T, width):
    gen = torch.Generator().manual_seed(C + T)
    x = torch.randn(2, T, C, generator=gen).to(DEVICE).requires_grad_()
    w = torch.randn(C, 1, width, generator=gen).to(DEVICE).requires_grad_()
    got, want = short_conv(x, w, heads), torch_conv(x, w, heads)
    assert got.is_contiguous() and got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    dy = torch.randn(want.shape, generator=gen).to(DEVICE)
    got_grads = torch.autograd.grad(got, (x, w), dy)
    want_grads = torch.autograd.grad(want, (x, w), dy)
    for name, g, r in zip(("dx", "dw"), got_grads, want_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_a_column_slice_is_read_in_place_as_if_it_were_contiguous():
    gen = torch.Generator().manual_seed(4)
    h = torch.randn(2, 21, 3 * 32, generator=gen).to(DEVICE).requires_grad_()
    w = torch.randn(32, 1, 4, generator=gen).to(DEVICE)
    part = h[..., 32:64]  # the mixer's joint projection: k between q and v
    got = short_conv(part, w, heads=2)
    want = torch_conv(part.detach().contiguous(), w, heads=2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    dy = torch.randn(want.shape, generator=gen).to(DEVICE)
    (dh,) = torch.autograd.grad(got, h, dy)
    x = part.detach().contiguous().requires_grad_()
    (dx,) = torch.autograd.grad(torch_conv(x, w, heads=2), x, dy)
    torch.testing.assert_close(dh[..., 32:64], dx, rtol=1e-5, atol=1e-5)
    assert not dh[..., :32].any() and not dh[..., 64:].any()


@pytest.mark.parametrize("dk, dv, heads, T", [(16, 32, 2, 37), (24, 24, 3, 5)])
def test_q_k_v_in_one_launch_equal_three_calls(dk, dv, heads, T):
    """short_convs over (q, k, v), column slices of one joint projection as in the mixer, gives
    exactly what three short_conv calls give, outputs and every gradient."""
    gen = torch.Generator().manual_seed(dk + T)
    Ck, Cv = heads * dk, heads * dv
    h = torch.randn(2, T, 2 * Ck + Cv + 8, generator=gen).to(DEVICE).requires_grad_()
    ws = [torch.randn(C, 1, 4, generator=gen).to(DEVICE).requires_grad_() for C in (Ck, Ck, Cv)]
    xs = h[..., :Ck], h[..., Ck:2 * Ck], h[..., 2 * Ck:2 * Ck + Cv]
    got = short_convs([(xs[0], ws[0], heads), (xs[1], ws[1], heads), (xs[2], ws[2], 0)])
    want = [short_conv(x, w, hd) for x, w, hd in zip(xs, ws, (heads, heads, 0))]
    for g, r in zip(got, want):
        assert g.dtype == r.dtype and g.is_contiguous() and torch.equal(g, r)
    dys = [torch.randn(r.shape, generator=gen).to(DEVICE) for r in want]
    got_grads = torch.autograd.grad(got, (h, *ws), dys)
    want_grads = torch.autograd.grad(want, (h, *ws), dys)
    for name, g, r in zip(("dh", "dw_q", "dw_k", "dw_v"), got_grads, want_grads):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert not got_grads[0][..., 2 * Ck + Cv:].any()


def test_short_convs_refuses_mismatched_inputs():
    x, w = torch.zeros(1, 4, 8), torch.zeros(8, 1, 4)
    with pytest.raises(ValueError, match="one to three"):
        short_convs([(x, w, 0)] * 4)
    with pytest.raises(ValueError, match="of one B and T"):
        short_convs([(x, w, 0), (torch.zeros(1, 5, 8), w, 0)])
    with pytest.raises(ValueError, match="of one\nW|of one W"):
        short_convs([(x, w, 0), (x, torch.zeros(8, 1, 3), 0)])


def test_short_conv_is_causal():
    x = torch.randn(1, 20, 16).to(DEVICE)
    w = torch.randn(16, 1, 4).to(DEVICE)
    y = short_conv(x, w)
    x2 = x.clone()
    x2[:, 12:] += 1.0  # a change from token 12 on leaves every earlier output as it was
    assert torch.equal(short_conv(x2, w)[:, :12], y[:, :12]) and not torch.equal(short_conv(x2, w)[:, 12:], y[:, 12:])


def test_bf16_input_keeps_its_dtype_without_the_norm_and_is_fp32_with_it():
    x = torch.randn(2, 9, 32).to(DEVICE).bfloat16()
    w = torch.randn(32, 1, 4).to(DEVICE)
    assert short_conv(x, w).dtype == torch.bfloat16 and short_conv(x, w, heads=2).dtype == torch.float32
    torch.testing.assert_close(short_conv(x, w, heads=2), torch_conv(x.float(), w, heads=2), rtol=1e-5, atol=1e-6)


def test_heads_must_split_the_channels():
    with pytest.raises(ValueError, match=r"30 channels do not split into heads=4"):
        short_conv(torch.zeros(1, 4, 30), torch.zeros(30, 1, 4), heads=4)


def _mixer(backend: str):
    cfg = preset_config("gdn2", d_model=32, n_layers=1, n_heads=2, vocab_size=16, chunk_size=16, seed=0)
    torch.manual_seed(0)
    return GatedDeltaMixer(dataclasses.replace(cfg, backend=backend)).to(DEVICE)


def test_the_mixer_runs_it_only_when_on_and_on_triton():
    x = torch.randn(2, 24, 32).to(DEVICE)
    triton_mixer, torch_mixer = _mixer("triton"), _mixer("torch")
    with fused_conv(True):
        q, _, v = triton_mixer._qkv(*triton_mixer._projections(x)[:3])
        assert q.is_contiguous() and v.is_contiguous()  # the fused kernels' output
        assert not torch_mixer._fused_conv(x)  # the torch path keeps torch's ops
    with fused_conv(False):
        q_off, _, v_off = triton_mixer._qkv(*triton_mixer._projections(x)[:3])
        assert not q_off.is_contiguous()  # conv1d's transposed view: what the fused path removes
    torch.testing.assert_close(q, q_off, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v, v_off, rtol=1e-5, atol=1e-6)


def test_a_training_step_with_it_equals_the_step_without():
    assert_step_unchanged(fused_conv, DEVICE, touched="conv")
