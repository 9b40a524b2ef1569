"""The propagate-mode P-pass kernels (kernels/triton_covariance.py), alone and end to end.

    python -m pytest tests/kernels/test_triton_covariance.py -q
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from carvelab.kernels.reference import _propagate_step
from carvelab.kernels.triton_ops import CovarianceFn
from tests.kernels.test_triton_recurrent import (
    DEVICE,
    GRAD_BUDGET,
    OUT_BUDGET,
    Case,
    assert_close,
    check_against_reference,
    launched,
    nan_empty,  # noqa: F401  (fixture)
)


def _p_pass_reference(k, g, r, p0):
    """Token-by-token P-pass with the reference's own step; returns (u, P_T)."""
    P, us = p0, []
    for t in range(k.shape[1]):
        u, P = _propagate_step(P, k[:, t], torch.exp(g[:, t]), r[:, t])
        us.append(u)
    return torch.stack(us, 1), P


def _p_inputs(B, T, H, dk, max_decay):
    k = F.normalize(torch.randn(B, T, H, dk), dim=-1)
    g = -max_decay * torch.rand(B, T, H, dk)
    r = F.softplus(torch.randn(B, T, H)) + 0.1
    L = torch.randn(B, H, dk, dk) / dk ** 0.5
    p0 = L @ L.transpose(-1, -2) + 0.5 * torch.eye(dk)
    return [t.to(DEVICE).requires_grad_() for t in (k, g, r, p0)]


P_SHAPES = [
    pytest.param(1, 1, 16, 16, 2.0, id="T1-seg16-k16"),
    pytest.param(1, 63, 16, 16, 2.0, id="T63-seg16-k16"),
    pytest.param(2, 63, 12, 32, 2.0, id="T63-seg32-k12-B2"),
    pytest.param(1, 63, 16, 16, 20.0, id="T63-seg16-k16-g-20"),
    pytest.param(1, 130, 16, 32, 2.0, id="T130-seg32-k16", marks=pytest.mark.large),
]


@pytest.mark.usefixtures("nan_empty")
@pytest.mark.parametrize("B, T, dk, segment, max_decay", P_SHAPES)
def test_p_pass_matches_reference_step(B, T, dk, segment, max_decay):
    """u, P_T and the gradients of k, g, r and P_0 against the reference's P step."""
    k, g, r, p0 = _p_inputs(B, T, 2, dk, max_decay)
    (u, P), n = launched("covariance_fwd", lambda: CovarianceFn.apply(k, g, r, p0, segment))
    u_ref, P_ref = _p_pass_reference(k, g, r, p0)
    assert n == 1
    assert_close("u", u, u_ref, OUT_BUDGET)
    assert_close("P", P, P_ref, OUT_BUDGET)
    gen = torch.Generator().manual_seed(2)
    wu, wp = (torch.randn(t.shape, generator=gen).to(DEVICE) for t in (u, P))
    got, n_bwd = launched("covariance_bwd", lambda: torch.autograd.grad((u * wu).sum() + (P * wp).sum(), (k, g, r, p0)))
    want = torch.autograd.grad((u_ref * wu).sum() + (P_ref * wp).sum(), (k, g, r, p0))
    for name, a, b in zip(("k", "g", "r", "P0"), got, want):
        assert_close(f"grad {name}", a, b, GRAD_BUDGET)
    assert n_bwd == 1


PROPAGATE_CASES = [
    Case(covariance="propagate", init_cov=True),
    Case(covariance="propagate", erase_axis="value", write="scalar", chunk=32, dk=12, dv=20),
    Case(covariance="propagate", erase_axis="value", content="erase"),
    Case(covariance="propagate", content="decay", chunk=32),
    Case(covariance="propagate", erase_axis="value", content="decay", T=130, chunk=32, H=1),
]


@pytest.mark.usefixtures("nan_empty")
@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id, marks=[pytest.mark.large] if c.T >= 130 else []) for c in PROPAGATE_CASES],
)
def test_propagate_mode_on_recurrent_kernel(case):
    """Propagate mode end to end: outputs, S_T, P_T and every gradient vs the reference."""
    _, n = launched("covariance_fwd", lambda: check_against_reference(case, "recurrent"))
    assert n >= 1, "the covariance kernel did not run"
