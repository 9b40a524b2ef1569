"""A training step of a tiny hybrid model through the Triton kernels (interpreter on CPU,
compiled on a GPU when TRITON_INTERPRET=0) gives the same loss and gradients as through
the reference recurrence."""
import dataclasses
import os

import pytest
import torch
import torch.nn.functional as F

from carvelab.carve_models.lm import HybridLM
from carvelab.carve_models.presets import preset_config

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


def loss_and_grads(cfg, x, y):
    torch.manual_seed(0)
    model = HybridLM(cfg).to(DEVICE)
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("preset, overrides", [
    ("gdn2", {}),
    ("carve", {}),
    ("gdn2", {"erase_axis": "value"}),
    ("bayes", {}),
], ids=["gdn2", "carve-content-gate", "value-axis", "bayes-propagate"])
def test_training_step_triton_equals_reference(preset, overrides, monkeypatch):
    cfg = preset_config(preset, d_model=32, n_layers=2, n_heads=2, vocab_size=32, chunk_size=16,
                        hybrid_ratio="1:1", init="matched", seed=3, **overrides)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 32, (2, 40), generator=gen).to(DEVICE)
    y = torch.randint(0, 32, (2, 40), generator=gen).to(DEVICE)
    ref_loss, ref_grads = loss_and_grads(dataclasses.replace(cfg, backend="reference"), x, y)
    def no_fallback(*args, **kwargs):
        raise AssertionError("the Triton backend fell back to the reference")

    monkeypatch.setattr("carvelab.kernels.reference.gated_delta_reference", no_fallback)
    monkeypatch.setattr("carvelab.kernels.chunk.chunk_gated_delta", no_fallback)
    monkeypatch.setattr("carvelab.kernels.chunk.chunk_gated_delta_value", no_fallback)
    tri_loss, tri_grads = loss_and_grads(dataclasses.replace(cfg, backend="triton", precision="exact"), x, y)
    assert HybridLM(dataclasses.replace(cfg, backend="triton")).kernel_implementation(torch.device(DEVICE)) in (
        "triton_chunk", "triton_recurrent")
    assert torch.allclose(tri_loss, ref_loss, rtol=1e-5, atol=0)
    assert ref_grads.keys() == tri_grads.keys()
    for name, g in ref_grads.items():
        err = (tri_grads[name] - g).abs().max() / g.abs().max().clamp_min(1e-12)
        assert err <= 1e-3, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("preset", ["gdn2", "carve", "bayes"])
def test_training_step_fast_precision_within_budget(preset):
    """precision='fast' (the default on the Triton backend): the loss within 5e-3 of the
    reference's and every parameter gradient within 2e-2 relative RMSE (the loosest of
    the kernel budgets, tests/kernels/test_triton_fast.py), under bf16 autocast on a GPU."""
    cfg = preset_config(preset, d_model=32, n_layers=2, n_heads=2, vocab_size=32, chunk_size=16,
                        hybrid_ratio="1:1", init="matched", seed=3)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 32, (2, 40), generator=gen).to(DEVICE)
    y = torch.randint(0, 32, (2, 40), generator=gen).to(DEVICE)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=DEVICE == "cuda")
    with autocast:
        ref_loss, ref_grads = loss_and_grads(dataclasses.replace(cfg, backend="reference"), x, y)
        fast_loss, fast_grads = loss_and_grads(dataclasses.replace(cfg, backend="triton"), x, y)
    assert dataclasses.replace(cfg, backend="triton").precision == "auto"
    assert abs(fast_loss - ref_loss) / ref_loss <= 5e-3
    for name, g in ref_grads.items():
        err = ((fast_grads[name] - g).float().square().mean().sqrt() / g.float().square().mean().sqrt().clamp_min(1e-12))
        assert err <= 2e-2, f"{name}: relative RMSE {err:.2e}"
