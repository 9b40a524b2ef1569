"""Every projection weight cast at once (kernels/weight_cast.py, CARVELAB_CAST_ONCE): the same
values and gradients as one cast per weight, and a training step under autocast that is
bit-identical with the switch on and off.

    TRITON_INTERPRET=1 python -m pytest tests/kernels/test_weight_cast.py -q
"""
from __future__ import annotations

import os

import pytest
import torch

from carvelab.carve_models.lm import HybridLM
from carvelab.carve_models.presets import preset_config
from carvelab.kernels import weight_cast
from carvelab.kernels.fused import cast_all, cast_once
from carvelab.trials.lm_loss import compute_loss

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


def test_cast_all_equals_one_cast_per_weight_both_ways():
    gen = torch.Generator().manual_seed(0)
    ws = [torch.randn(s, generator=gen).to(DEVICE).requires_grad_() for s in ((3, 4), (7,), (2, 5, 3))]
    got = cast_all(ws, torch.bfloat16)
    want = [w.to(torch.bfloat16) for w in ws]
    dys = [torch.randn(w.shape, generator=gen).to(DEVICE).bfloat16() for w in ws]
    for g, r in zip(got, want):
        assert g.dtype == torch.bfloat16 and g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=0, atol=0)
    g_got = torch.autograd.grad(got, ws, dys)
    g_want = torch.autograd.grad(want, ws, dys)
    for g, r in zip(g_got, g_want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, r, rtol=0, atol=0)


def test_mixed_weights_are_refused_with_what_was_given():
    with pytest.raises(ValueError, match=r"share one dtype and device; got \['torch.float16 on cpu', 'torch.float32 on cpu'\]"):
        cast_all([torch.zeros(2), torch.zeros(2, dtype=torch.float16)], torch.bfloat16)
    assert cast_all([], torch.bfloat16) == []


@pytest.mark.parametrize("ce_chunk", [0, 16])  # the logits, or the final norm's output through the chunked loss
def test_a_training_step_under_autocast_is_bit_identical_with_the_weights_cast_at_once(monkeypatch, ce_chunk):
    calls = []
    real = weight_cast.CastAllFn.apply
    monkeypatch.setattr(weight_cast.CastAllFn, "apply", lambda *a: calls.append(a) or real(*a))
    cfg = preset_config("kda", d_model=32, n_layers=2, n_heads=2, vocab_size=16, chunk_size=16, hybrid_ratio="1:1",
                        tie_embeddings=False, backend="triton", precision="exact")
    ids = torch.randint(0, 16, (2, 16), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    runs = []
    for on in (True, False):
        torch.manual_seed(0)
        net = HybridLM(cfg).to(DEVICE)
        with cast_once(on), torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = compute_loss(net, ids, ids, ce_chunk)
        loss.backward()
        runs.append((loss.detach(), {n: p.grad for n, p in net.named_parameters()}))
    assert len(calls) == 1  # one cast of every weight, in the run with the switch on
    linears = sum(isinstance(m, torch.nn.Linear) for m in net.modules()) - (1 if ce_chunk else 0)
    assert len(calls[0]) == 1 + linears  # the dtype, then the weights (the head's when the model applies it)
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=0, atol=0)
    for name, grad in runs[0][1].items():
        torch.testing.assert_close(grad, runs[1][1][name], rtol=0, atol=0, msg=lambda m: f"{name}: {m}")


def test_without_autocast_nothing_is_cast(monkeypatch):
    calls = []
    monkeypatch.setattr(weight_cast.CastAllFn, "apply", lambda *a: calls.append(a))
    cfg = preset_config("gdn2", d_model=32, n_layers=1, n_heads=2, vocab_size=16, chunk_size=16, backend="triton")
    with cast_once(True):
        HybridLM(cfg).to(DEVICE)(torch.zeros(1, 4, dtype=torch.long, device=DEVICE))
    assert not calls
