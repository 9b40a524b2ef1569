"""The fused pieces (kernels/fused.py): every switch's default and its refusal of a bad value,
and every kernel's buffers. The kernels write every entry of the buffers they allocate with
``torch.empty`` (outputs, gradients, per-program partial sums): with each such allocation
filled with NaN first, no NaN reaches a result. Shapes whose last tiles are partial.

    TRITON_INTERPRET=1 python -m pytest tests/kernels/test_fused_buffers.py -q
"""
from __future__ import annotations

import os

import pytest
import torch

from carvelab.kernels.fused import PIECES, add_rms_norm, cross_entropy, decay_gate, rms_norm, short_conv, swiglu

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


def _inputs(*shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(DEVICE).requires_grad_() for s in shapes]


CASES = {
    "short_conv, heads": lambda: (lambda x, w: short_conv(x, w, heads=2), _inputs((2, 37, 48), (48, 1, 4))),
    "short_conv": lambda: (short_conv, _inputs((2, 37, 100), (100, 1, 4))),
    "rms_norm, gated": lambda: (lambda x, w, z: rms_norm(x, w, 1e-6, z), _inputs((3, 7, 24), (24,), (3, 7, 24))),
    "add_rms_norm": lambda: (lambda x, d, w: sum(t.sum() for t in add_rms_norm(x, d, w)), _inputs((3, 7, 24), (3, 7, 24), (24,))),
    "swiglu": lambda: (swiglu, _inputs((3, 5, 2 * 130))),
    "decay_gate": lambda: (decay_gate, _inputs((2, 9, 24), (24,), (3,))),
    "cross_entropy": lambda: (lambda x: cross_entropy(x, torch.tensor([3, -100, 4100, 0, 7]).to(DEVICE), -100),
                              _inputs((5, 4096 + 9))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_allocated_entry_is_left_unwritten(monkeypatch, case):
    fn, inputs = CASES[case]()
    real_empty = torch.empty

    def nan_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", nan_empty)
    y = fn(*inputs)
    grads = torch.autograd.grad(y, inputs, torch.ones_like(y))
    assert torch.isfinite(y).all()
    for t, g in zip(inputs, grads):
        assert g.shape == t.shape and torch.isfinite(g).all()


@pytest.mark.parametrize("name, env, default", [
    ("conv", "CARVELAB_FUSED_CONV", True), ("norm", "CARVELAB_FUSED_NORM", True),
    ("joint", "CARVELAB_JOINT_PROJ", True), ("gates", "CARVELAB_FUSED_GATES", True), ("ce", "CARVELAB_FUSED_CE", True),
    ("cast", "CARVELAB_CAST_ONCE", True),
])
def test_each_switch_has_its_default_an_override_and_names_its_variable(monkeypatch, name, env, default):
    piece = PIECES[name]
    monkeypatch.delenv(env, raising=False)
    assert piece.enabled() is default
    with piece.override(not default):
        assert piece.enabled() is not default
    monkeypatch.setenv(env, "0")
    assert not piece.enabled()
    monkeypatch.setenv(env, "1")
    assert piece.enabled()
    monkeypatch.setenv(env, "yes")
    with pytest.raises(ValueError, match=rf"{env}='yes' is not allowed; use 1 .* or 0"):
        piece.enabled()
