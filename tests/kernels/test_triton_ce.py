"""The fused cross-entropy (kernels/triton_ce.py) against torch's on fp32 logits, forward and
backward, and inside a training step with CARVELAB_FUSED_CE on and off.

    TRITON_INTERPRET=1 python -m pytest tests/kernels/test_triton_ce.py -q
"""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from carvelab.kernels.fused import cross_entropy, fused_ce
from tests.kernels.fused_step import assert_step_unchanged

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


def _case(N: int, V: int, dtype: torch.dtype, seed: int, ignored=(1, 4)):
    gen = torch.Generator().manual_seed(seed)
    x = (4 * torch.randn(N, V, generator=gen)).to(dtype).to(DEVICE)
    t = torch.randint(0, V, (N,), generator=gen)
    t[list(ignored)] = -100
    return x, t.to(DEVICE)


@pytest.mark.parametrize("N, V", [(9, 37), (6, 4096 + 5), (5, 2 * 4096 + 17)])  # one, two, three blocks of a row
def test_cross_entropy_equals_torch_forward_and_backward(N, V):
    x, t = _case(N, V, torch.float32, V)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = cross_entropy(x1, t, -100), F.cross_entropy(x2, t, ignore_index=-100)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    (got * 1.7).backward()
    (want * 1.7).backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-7)
    assert not x1.grad[1].any() and not x1.grad[4].any()  # ignored rows: no gradient


def test_bf16_logits_give_torch_on_their_fp32_copy_and_a_bf16_gradient():
    x, t = _case(7, 300, torch.bfloat16, 0)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = cross_entropy(x1, t, -100), F.cross_entropy(x2.float(), t, ignore_index=-100)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    got.backward()
    want.backward()
    assert x1.grad.dtype == torch.bfloat16
    torch.testing.assert_close(x1.grad.float(), x2.grad.float(), rtol=8e-3, atol=1e-6)  # one bf16 rounding apart


def test_a_strided_view_of_the_logits_is_read_in_place():
    x, t = _case(6, 50, torch.float32, 2)
    wide = torch.cat([x, torch.zeros(6, 14, device=DEVICE)], 1)[:, :50]
    assert not wide.is_contiguous()
    torch.testing.assert_close(cross_entropy(wide, t, -100), F.cross_entropy(x, t, ignore_index=-100))


def test_a_target_outside_the_vocabulary_gives_nan_and_bad_shapes_are_refused():
    x, t = _case(4, 10, torch.float32, 3, ignored=())
    t[2] = 10
    assert math.isnan(cross_entropy(x, t, -100).item())
    with pytest.raises(ValueError, match=r"logits must be \[N, V\] and targets \[N\]"):
        cross_entropy(x, t[:3], -100)
    with pytest.raises(ValueError, match="targets must be int32 or int64"):
        cross_entropy(x, t.float(), -100)


def test_every_row_ignored_gives_nan_as_torch_does():
    x, t = _case(3, 8, torch.float32, 4, ignored=(0, 1, 2))
    assert math.isnan(cross_entropy(x, t, -100).item()) and math.isnan(F.cross_entropy(x, t).item())


def test_the_loss_fuses_only_when_on_with_a_recurrence_on_triton(monkeypatch):
    from carvelab.carve_models.lm import HybridLM
    from carvelab.carve_models.presets import preset_config
    from carvelab.kernels import triton_ce
    from carvelab.trials.lm_loss import compute_loss

    calls = []
    real = triton_ce.CrossEntropyFn.apply
    monkeypatch.setattr(triton_ce.CrossEntropyFn, "apply", lambda *a: calls.append(a) or real(*a))
    x = torch.randint(0, 16, (2, 8)).to(DEVICE)
    for backend, switch, fuses in (("triton", True, True), ("triton", False, False), ("torch", True, False)):
        cfg = preset_config("gdn2", d_model=32, n_layers=1, n_heads=2, vocab_size=16, chunk_size=16, backend=backend)
        calls.clear()
        with fused_ce(switch):
            compute_loss(HybridLM(cfg).to(DEVICE), x, x)
        assert bool(calls) == fuses, (backend, switch)


def test_a_training_step_with_it_equals_the_step_without():
    assert_step_unchanged(fused_ce, DEVICE, touched="embed")
