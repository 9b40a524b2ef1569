"""The fused decay gate (kernels/triton_gates.py) against the torch path (carve_models.gates),
forward and backward, and inside a training step with CARVELAB_FUSED_GATES on and off.

    TRITON_INTERPRET=1 python -m pytest tests/kernels/test_triton_gates.py -q
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from carvelab.carve_models.gates import ChannelDecay
from carvelab.carve_models.presets import preset_config
from carvelab.kernels import triton_gates
from carvelab.kernels.fused import decay_gate, fused_gates, fused_gates_enabled
from tests.kernels.fused_step import assert_step_unchanged

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


def torch_decay(f, dt_bias, a_log):
    """carve_models.gates.DecayGate's map: -exp(A_log) * softplus(f + dt_bias), per head."""
    H = a_log.shape[0]
    u = (f.float() + dt_bias.float()).unflatten(-1, (H, -1))
    return (-torch.exp(a_log.float()).view(-1, 1) * F.softplus(u)).flatten(-2)


@pytest.mark.parametrize("shape, heads", [((2, 9, 24), 3), ((2, 9, 4), 4), ((3, 5, 96), 2)])
def test_decay_gate_equals_torch_forward_and_backward(shape, heads):
    gen = torch.Generator().manual_seed(shape[-1] + heads)
    # pre-activations from the initial dt (about -7 to -2) up past softplus's threshold of 20
    f = torch.randn(shape, generator=gen) * 8 - 2
    f.view(-1)[:2] = torch.tensor([25.0, -30.0])
    f = f.to(DEVICE).requires_grad_()
    dt_bias = torch.randn(shape[-1], generator=gen).to(DEVICE).requires_grad_()
    a_log = torch.rand(heads, generator=gen).mul(2.7).to(DEVICE).requires_grad_()
    got, want = decay_gate(f, dt_bias, a_log), torch_decay(f, dt_bias, a_log)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert ((f + dt_bias) > 20).any() and ((f + dt_bias) < -6).any()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    dg = torch.randn(want.shape, generator=gen).to(DEVICE)
    inputs = (f, dt_bias, a_log)
    for name, g, r in zip(("df", "d dt_bias", "dA_log"), torch.autograd.grad(got, inputs, dg),
                          torch.autograd.grad(want, inputs, dg)):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_softplus_keeps_its_precision_at_the_initial_decay_rates():
    # dt in [1e-3, 1e-1] at init: softplus(u) ≈ e^u is small and log(1 + e^u) would lose digits
    u = torch.linspace(-7.0, -2.0, 64)
    got = decay_gate(u.view(1, 1, -1).to(DEVICE), torch.zeros(64).to(DEVICE), torch.zeros(1).to(DEVICE))
    exact = -torch.log1p(torch.exp(u.double()))
    torch.testing.assert_close(got.view(-1).cpu().double(), exact, rtol=5e-7, atol=0)  # a few fp32 ulps
    naive = -torch.log(1 + torch.exp(u))  # what the exact log1p avoids
    assert ((naive.double() - exact).abs() / exact.abs()).max() > 1e-5


def test_the_sums_cover_every_program(monkeypatch):
    monkeypatch.setattr(triton_gates, "MAX_PROGRAMS", 3)
    gen = torch.Generator().manual_seed(9)
    f = torch.randn(40, 30, 16, generator=gen).to(DEVICE).requires_grad_()
    dt_bias = torch.randn(16, generator=gen).to(DEVICE).requires_grad_()
    a_log = torch.randn(2, generator=gen).to(DEVICE).requires_grad_()
    BR, _, P = triton_gates._launch(1200, 16)
    assert P == 3 and BR * P < 1200
    dg = torch.randn(40, 30, 16, generator=gen).to(DEVICE)
    got = torch.autograd.grad(decay_gate(f, dt_bias, a_log), (f, dt_bias, a_log), dg)
    want = torch.autograd.grad(torch_decay(f, dt_bias, a_log), (f, dt_bias, a_log), dg)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-4)


def test_a_bf16_projection_gets_a_bf16_gradient_and_bad_shapes_are_refused():
    f = torch.randn(2, 3, 8).to(DEVICE).bfloat16().requires_grad_()
    g = decay_gate(f, torch.zeros(8).to(DEVICE), torch.zeros(2).to(DEVICE))
    assert g.dtype == torch.float32 and torch.autograd.grad(g.sum(), f)[0].dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"last axis 8 needs dt_bias of shape \(8,\) and a multiple of A_log's 3 heads"):
        decay_gate(torch.zeros(1, 1, 8), torch.zeros(8), torch.zeros(3))


def test_the_switch_is_on_by_default_and_the_gate_uses_it_only_on_triton_and_not_for_a_content_target(monkeypatch):
    monkeypatch.delenv("CARVELAB_FUSED_GATES", raising=False)
    assert fused_gates_enabled()
    calls = []
    real = triton_gates.DecayGateFn.apply
    monkeypatch.setattr(triton_gates.DecayGateFn, "apply", lambda *a: calls.append(a) or real(*a))
    x = torch.randn(2, 5, 32).to(DEVICE)
    for backend, switch, pre, fuses in (("triton", True, False, True), ("triton", False, False, False),
                                        ("torch", True, False, False), ("triton", True, True, False)):
        cfg = preset_config("gdn2", d_model=32, n_layers=1, n_heads=2, vocab_size=16, chunk_size=16, backend=backend)
        gate = ChannelDecay(cfg).to(DEVICE)
        calls.clear()
        with fused_gates(switch):
            gate(x, pre=pre)
        assert bool(calls) == fuses, (backend, switch, pre)
    monkeypatch.setenv("CARVELAB_FUSED_GATES", "2")
    with pytest.raises(ValueError, match=r"CARVELAB_FUSED_GATES='2' is not allowed; use 1 .* or 0"):
        fused_gates_enabled()


def test_a_training_step_with_it_equals_the_step_without():
    assert_step_unchanged(fused_gates, DEVICE, touched="dt_bias")
