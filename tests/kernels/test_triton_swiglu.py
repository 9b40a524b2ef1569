"""The joint input projections (CARVELAB_JOINT_PROJ): the fused SwiGLU (kernels/triton_swiglu.py)
against torch's silu(a) * b, and the mixer's and MLP's joint matmuls against one matmul per
projection, inside a training step.

    TRITON_INTERPRET=1 python -m pytest tests/kernels/test_triton_swiglu.py -q
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from carvelab.carve_models.mixer import GatedDeltaMixer
from carvelab.carve_models.presets import preset_config
from carvelab.kernels.fused import joint_proj, swiglu
from tests.kernels.fused_step import assert_step_unchanged

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


@pytest.mark.parametrize("shape", [(2, 7, 2 * 40), (3, 2 * 130), (1, 17, 2 * 128)])
def test_swiglu_equals_torch_forward_and_backward(shape):
    gen = torch.Generator().manual_seed(shape[-1])
    h = (2 * torch.randn(shape, generator=gen)).to(DEVICE).requires_grad_()
    a, b = h.chunk(2, -1)
    got, want = swiglu(h), F.silu(a) * b
    assert got.shape == want.shape and got.dtype == h.dtype
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    dy = torch.randn(want.shape, generator=gen).to(DEVICE)
    torch.testing.assert_close(torch.autograd.grad(got, h, dy)[0], torch.autograd.grad(want, h, dy)[0],
                               rtol=1e-5, atol=1e-5)


def test_swiglu_keeps_bf16_and_refuses_an_odd_axis():
    h = torch.randn(4, 2 * 24).to(DEVICE).bfloat16()
    assert swiglu(h).dtype == torch.bfloat16
    torch.testing.assert_close(swiglu(h).float(), (F.silu(h[:, :24].float()) * h[:, 24:].float()), rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match=r"last axis \(7\) must be even"):
        swiglu(torch.zeros(2, 7))


def test_the_mixer_projects_once_and_hands_on_column_slices():
    cfg = preset_config("gdn2", d_model=32, n_layers=1, n_heads=2, vocab_size=16, chunk_size=16, backend="triton")
    torch.manual_seed(0)
    mixer = GatedDeltaMixer(cfg).to(DEVICE)
    x = torch.randn(2, 9, 32).to(DEVICE)
    with joint_proj(True):
        joint = mixer._projections(x)
    with joint_proj(False):
        separate = mixer._projections(x)
    assert len({t.data_ptr() - t.storage_offset() * t.element_size() for t in joint}) == 1  # one tensor
    assert not joint[0].is_contiguous() and all(t.is_contiguous() for t in separate)
    for j, s in zip(joint, separate):
        torch.testing.assert_close(j, s, rtol=1e-5, atol=1e-6)


def test_a_training_step_with_it_equals_the_step_without():
    assert_step_unchanged(joint_proj, DEVICE, touched="up_proj")
