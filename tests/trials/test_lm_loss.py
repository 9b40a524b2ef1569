"""The chunked linear cross-entropy (trials/lm_loss.py) against the plain loss on the full
logits: loss and every parameter's gradient, fp32 and under bf16 autocast, tied and untied
heads, with unscored positions, a last chunk shorter than the others, and a training run."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from carvelab.carve_models.lm import HybridLM
from carvelab.carve_models.presets import preset_config
from carvelab.trials.lm_loss import IGNORE, chunked_cross_entropy, compute_loss


def _batch(vocab: int, B: int = 3, T: int = 20, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (B, T), generator=gen)
    y = torch.randint(0, vocab, (B, T), generator=gen)
    y[torch.rand(B, T, generator=gen) < 0.4] = IGNORE  # MQAR-like: most positions are not scored
    return x, y


def _grads(model, x, y, ce_chunk, autocast=False):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = compute_loss(model, x, y, ce_chunk)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("chunk", [7, 60, 1000])  # a ragged last chunk, one chunk per batch row, all at once
def test_chunked_loss_and_gradients_equal_the_plain_loss_in_fp32(tied, chunk):
    cfg = preset_config("gdn2", d_model=32, n_layers=2, n_heads=2, vocab_size=50, tie_embeddings=tied)
    torch.manual_seed(0)
    model = HybridLM(cfg)
    x, y = _batch(cfg.vocab_size)
    plain_loss, plain = _grads(model, x, y, 0)
    loss, grads = _grads(model, x, y, chunk)
    assert float(loss) == pytest.approx(float(plain_loss), rel=1e-6)
    assert grads.keys() == plain.keys()
    for name in plain:
        assert _rel(grads[name], plain[name]) < 1e-5, name


def test_under_bf16_autocast_the_chunked_loss_stays_within_bf16_rounding_of_the_plain_one():
    cfg = preset_config("gdn2", d_model=32, n_layers=2, n_heads=2, vocab_size=50, tie_embeddings=False)
    torch.manual_seed(0)
    model = HybridLM(cfg)
    x, y = _batch(cfg.vocab_size)
    plain_loss, plain = _grads(model, x, y, 0, autocast=True)
    loss, grads = _grads(model, x, y, 16, autocast=True)
    assert float(loss) == pytest.approx(float(plain_loss), rel=1e-3)
    for name in plain:
        assert _rel(grads[name], plain[name]) < 1e-2, name  # bf16 products, dW summed per chunk in fp32


def test_the_function_alone_matches_cross_entropy_and_scales_with_the_incoming_gradient():
    torch.manual_seed(0)
    h = torch.randn(2, 9, 8, requires_grad=True)
    w = torch.randn(11, 8, requires_grad=True)
    t = torch.randint(0, 11, (2, 9))
    t[0, :4] = IGNORE
    ref = F.cross_entropy((h @ w.t()).flatten(0, 1), t.flatten(), ignore_index=IGNORE)
    rh, rw = torch.autograd.grad(3.0 * ref, (h, w))
    out = chunked_cross_entropy(h, w, t, 4)
    gh, gw = torch.autograd.grad(3.0 * out, (h, w))
    assert torch.allclose(out, ref, rtol=1e-6, atol=1e-7)
    assert torch.allclose(gh, rh, rtol=1e-5, atol=1e-7) and torch.allclose(gw, rw, rtol=1e-5, atol=1e-7)
    # every position unscored: 0 / 0, as F.cross_entropy gives
    assert torch.isnan(chunked_cross_entropy(h, w, torch.full_like(t, IGNORE), 4))
    with pytest.raises(ValueError, match="train.ce_chunk=0"):
        chunked_cross_entropy(h, w, t, 0)


def test_a_short_training_run_follows_the_same_losses_with_either_loss():
    from carvelab.search_space.trial_config import TrainConfig
    from carvelab.trials.training import make_optimizer, optimizer_step

    cfg = preset_config("gdn2", d_model=32, n_layers=1, n_heads=2, vocab_size=40)
    runs = {}
    for chunk in (0, 13):
        torch.manual_seed(0)
        model = HybridLM(cfg)
        opt = make_optimizer(model, TrainConfig(lr=1e-2))
        losses = []
        x, y = _batch(cfg.vocab_size)  # one batch, memorised
        for step in range(6):
            losses.append(float(optimizer_step(model, opt, x, y, 1.0, torch.autocast("cpu", enabled=False),
                                               ce_chunk=chunk)))
        runs[chunk] = losses
    assert runs[13] == pytest.approx(runs[0], rel=1e-5)
    assert runs[0][-1] < runs[0][0]  # it trains


def test_ce_chunk_is_a_validated_train_setting():
    from carvelab.search_space.trial_config import TrainConfig

    assert TrainConfig().ce_chunk == 0
    assert dataclasses.replace(TrainConfig(), ce_chunk=4096).ce_chunk == 4096
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="train.ce_chunk"):
            TrainConfig(ce_chunk=bad)
