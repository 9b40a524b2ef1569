"""A training step of a small hybrid CARVE model with one fused piece switched on, against
the same step with it off: the loss and every gradient must agree (shared by the fused
convolution's and the fused norms' tests)."""
from __future__ import annotations

import torch

from carvelab.carve_models.lm import HybridLM
from carvelab.carve_models.presets import preset_config
from carvelab.trials.lm_loss import compute_loss


def assert_step_unchanged(switch, device: str, touched: str) -> None:
    """``switch(enabled)`` a context manager (``fused_conv``, ``fused_norm``, ...); ``touched`` a
    fragment of a parameter name whose gradient the fused piece computes. The recurrence runs
    ``exact``: with ``fast`` (bf16 products) a last-bit difference in q or k can flip a bf16
    rounding, and a GPU then shows gradients apart by ~1e-5 that say nothing of the piece."""
    cfg = preset_config("carve", d_model=32, n_layers=2, n_heads=2, vocab_size=32, chunk_size=16,
                        hybrid_ratio="1:1", seed=3, backend="triton", precision="exact")
    gen = torch.Generator().manual_seed(1)
    x, y = (torch.randint(0, 32, (2, 40), generator=gen).to(device) for _ in range(2))

    def step(fused: bool):
        torch.manual_seed(0)
        model = HybridLM(cfg).to(device)
        with switch(fused):
            loss = compute_loss(model, x, y)
        loss.backward()
        return loss.detach(), {n: p.grad.detach() for n, p in model.named_parameters() if p.grad is not None}

    (loss_on, grads_on), (loss_off, grads_off) = step(True), step(False)
    torch.testing.assert_close(loss_on, loss_off, rtol=1e-5, atol=1e-6)
    assert grads_on.keys() == grads_off.keys() and any(touched in n for n in grads_on)
    for name in grads_on:
        torch.testing.assert_close(grads_on[name], grads_off[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
