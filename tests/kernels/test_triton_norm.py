"""The fused RMSNorms (kernels/triton_norm.py) against the torch path (carve_models.norm),
forward and backward, and inside the model with CARVELAB_FUSED_NORM on and off.

    TRITON_INTERPRET=1 python -m pytest tests/kernels/test_triton_norm.py -q
"""
from __future__ import annotations

import os

import pytest
import torch

from carvelab.carve_models.norm import GatedRMSNorm, RMSNorm
from carvelab.carve_models.presets import preset_config
from carvelab.kernels import triton_norm
from carvelab.kernels.fused import fused_norm, rms_norm
from tests.kernels.fused_step import assert_step_unchanged

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


def torch_norm(x, weight, eps, gate=None):
    """The torch path's maps (carve_models.norm), fp32."""
    norm = RMSNorm(x.shape[-1], eps) if gate is None else GatedRMSNorm(x.shape[-1], eps)
    return torch.func.functional_call(norm, {"weight": weight}, (x,) if gate is None else (x, gate))


@pytest.mark.parametrize("shape, gated", [
    ((2, 37, 24), False),    # D not a power of two, rows not a multiple of the row tile
    ((2, 37, 24), True),
    ((3, 5, 4, 16), True),   # [B, T, H, dv]: the mixer's per-head gated norm
    ((4, 300), False),       # D wider than the row tile's share: one row per tile row
])
def test_rms_norm_equals_torch_forward_and_backward(shape, gated):
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen).to(DEVICE).requires_grad_()
    w = (1 + 0.3 * torch.randn(shape[-1], generator=gen)).to(DEVICE).requires_grad_()
    z = torch.randn(shape, generator=gen).to(DEVICE).requires_grad_() if gated else None
    got, want = rms_norm(x, w, 1e-6, z), torch_norm(x, w, 1e-6, z)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    dy = torch.randn(shape, generator=gen).to(DEVICE)
    inputs = (x, w) + ((z,) if gated else ())
    for name, g, r in zip(("dx", "dw", "dz"), torch.autograd.grad(got, inputs, dy), torch.autograd.grad(want, inputs, dy)):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_the_weight_gradient_sums_over_every_program(monkeypatch):
    # fewer programs than row tiles: each program loops over several and sums its own part
    monkeypatch.setattr(triton_norm, "MAX_PROGRAMS", 3)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(500, 32, generator=gen).to(DEVICE).requires_grad_()
    w = torch.randn(32, generator=gen).to(DEVICE).requires_grad_()
    assert triton_norm._launch(500, 32)[2] == 3 and triton_norm._launch(500, 32)[0] * 3 < 500
    dy = torch.randn(500, 32, generator=gen).to(DEVICE)
    got = torch.autograd.grad(rms_norm(x, w), (x, w), dy)
    want = torch.autograd.grad(torch_norm(x, w, 1e-6), (x, w), dy)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_bf16_gate_and_fp32_x_give_fp32_out_and_a_bf16_gate_gradient():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 8, 16, generator=gen).to(DEVICE).requires_grad_()
    z = torch.randn(3, 8, 16, generator=gen).to(DEVICE).bfloat16().requires_grad_()
    w = torch.ones(16).to(DEVICE).requires_grad_()
    y = rms_norm(x, w, 1e-6, z)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, torch_norm(x, w, 1e-6, z), rtol=1e-5, atol=1e-6)
    (dz,) = torch.autograd.grad(y.sum(), (z,))
    assert dz.dtype == torch.bfloat16


def test_a_gate_sliced_from_a_wider_tensor_is_read_in_place():
    gen = torch.Generator().manual_seed(6)
    B, T, H, D = 2, 5, 3, 16
    x = torch.randn(B, T, H, D, generator=gen).to(DEVICE).requires_grad_()
    h = torch.randn(B, T, 2 * H * D + 8, generator=gen).to(DEVICE).requires_grad_()
    w = torch.randn(D, generator=gen).to(DEVICE).requires_grad_()
    z = h[..., H * D:2 * H * D].view(B, T, H, D)  # the joint projection's output gate
    assert triton_norm._gate_layout(z)[1:] == (H, 2 * H * D + 8)
    got, want = rms_norm(x, w, 1e-6, z), torch_norm(x, w, 1e-6, z)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    dy = torch.randn(want.shape, generator=gen).to(DEVICE)
    for g, r in zip(torch.autograd.grad(got, (x, w, h), dy), torch.autograd.grad(want, (x, w, h), dy)):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_dh", [True, False])  # the last add's h may be read by nothing but its norm
def test_the_residual_add_fused_into_the_norm_equals_add_then_norm(with_dh):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 9, 40, generator=gen).to(DEVICE).requires_grad_()
    d = torch.randn(2, 9, 40, generator=gen).to(DEVICE).requires_grad_()
    w = (1 + 0.3 * torch.randn(40, generator=gen)).to(DEVICE).requires_grad_()
    h, y = triton_norm.add_rms_norm(x, d, w, 1e-6)
    h_want = x + d
    y_want = torch_norm(h_want, w, 1e-6)
    torch.testing.assert_close(h, h_want, rtol=0, atol=0)
    torch.testing.assert_close(y, y_want, rtol=1e-5, atol=1e-6)
    dh, dy = (torch.randn(2, 9, 40, generator=gen).to(DEVICE) for _ in range(2))
    got = torch.autograd.grad((y * dy).sum() + ((h * dh).sum() if with_dh else 0), (x, d, w))
    want = torch.autograd.grad((y_want * dy).sum() + ((h_want * dh).sum() if with_dh else 0), (x, d, w))
    for name, g, r in zip(("dx", "dd", "dw"), got, want):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_the_fused_residual_keeps_the_streams_dtype_and_casts_the_branch_gradient():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(4, 24, generator=gen).to(DEVICE).requires_grad_()
    d = torch.randn(4, 24, generator=gen).to(DEVICE).bfloat16().requires_grad_()
    h, y = triton_norm.add_rms_norm(x, d, torch.ones(24).to(DEVICE), 1e-6, torch.bfloat16)
    assert h.dtype == torch.float32 and y.dtype == torch.bfloat16
    torch.testing.assert_close(h, x + d, rtol=0, atol=0)  # bf16 + fp32 in fp32, as torch adds them
    dx, dd = torch.autograd.grad(y.float().sum() + h.sum(), (x, d))
    assert dx.dtype == torch.float32 and dd.dtype == torch.bfloat16
    torch.testing.assert_close(dd.float(), dx, rtol=8e-3, atol=0)  # the same gradient, rounded once


def test_the_model_fuses_its_residual_adds_where_its_norms_are_fused(monkeypatch):
    from carvelab.carve_models.lm import HybridLM

    calls = []
    real = triton_norm.AddRMSNormFn.apply
    monkeypatch.setattr(triton_norm.AddRMSNormFn, "apply", lambda *a: calls.append(a) or real(*a))
    ids = torch.randint(0, 16, (2, 8)).to(DEVICE)
    for backend, switch, adds in (("triton", True, 4), ("triton", False, 0), ("torch", True, 0)):
        cfg = preset_config("gdn2", d_model=32, n_layers=2, n_heads=2, vocab_size=16, chunk_size=16, backend=backend)
        calls.clear()
        with fused_norm(switch):
            HybridLM(cfg).to(DEVICE)(ids)
        assert len(calls) == adds, (backend, switch)  # two adds per layer, each into the next norm


def test_bad_shapes_are_refused_with_what_was_given():
    with pytest.raises(ValueError, match=r"weight of shape \(8,\) does not match x's last axis 16"):
        rms_norm(torch.zeros(2, 16), torch.ones(8))
    with pytest.raises(ValueError, match=r"gate of shape \(2, 8\) does not match x's \(2, 16\)"):
        rms_norm(torch.zeros(2, 16), torch.ones(16), gate=torch.zeros(2, 8))
    with pytest.raises(ValueError, match=r"add_rms_norm: d of shape \(2, 8\) does not match x's \(2, 16\)"):
        triton_norm.add_rms_norm(torch.zeros(2, 16), torch.zeros(2, 8), torch.ones(16))


def test_norms_fuse_only_when_on_with_a_recurrence_on_triton(monkeypatch):
    calls = []
    real = triton_norm.RMSNormFn.apply
    monkeypatch.setattr(triton_norm.RMSNormFn, "apply", lambda *a: calls.append(a) or real(*a))
    x = torch.randn(2, 5, 32).to(DEVICE)
    for backend, switch, fuses in (("triton", True, True), ("triton", False, False), ("torch", True, False)):
        cfg = preset_config("gdn2", d_model=32, n_layers=1, n_heads=2, vocab_size=16, chunk_size=16, backend=backend)
        calls.clear()
        with fused_norm(switch):
            RMSNorm(32, recurrence=cfg.recurrence).to(DEVICE)(x)
        assert bool(calls) == fuses, (backend, switch)
    with fused_norm(True):  # a norm built without a recurrence stays on torch ops
        calls.clear()
        RMSNorm(32).to(DEVICE)(x)
        assert not calls


def test_where_the_recurrence_cannot_run_on_triton_the_norms_stay_on_torch(monkeypatch):
    # backend="triton" on CPU tensors without the interpreter: the recurrence would refuse, but an
    # attention-only model never calls it, and its norms must not refuse in its place
    from carvelab.kernels.fused import on_triton
    from carvelab.kernels.options import RecurrenceOptions

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not on_triton(RecurrenceOptions(backend="triton"), torch.device("cpu"))
    cfg = preset_config("gdn2", d_model=32, n_layers=1, n_heads=2, vocab_size=16, hybrid_ratio="0:1", backend="triton")
    with fused_norm(True):
        RMSNorm(32, recurrence=cfg.recurrence)(torch.randn(2, 3, 32))


def test_a_training_step_with_it_equals_the_step_without():
    assert_step_unchanged(fused_norm, DEVICE, touched="o_norm")
