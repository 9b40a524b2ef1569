"""Fused recurrent Triton kernels (kernels/triton_recurrent.py) against the reference.

Runs on CPU tensors through Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), or on CUDA tensors when TRITON_INTERPRET=0 and a GPU is present.
Every buffer the kernels allocate with ``torch.empty`` is filled with NaN, so a read of
memory a kernel never wrote shows up as NaN in the compared results.

This module also holds the shared case builder used by the chunk and covariance tests.

    python -m pytest tests/kernels/test_triton_recurrent.py -q
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import pytest
import torch
import torch.nn.functional as F

from carvelab.kernels import _triton_common, triton_chunk, triton_ops, triton_recurrent, tuning
from carvelab.kernels._args import ContentGate
from carvelab.kernels.options import ERASE_SCALES, RecurrenceOptions
from carvelab.kernels.reference import gated_delta_reference
from carvelab.kernels.triton_ops import launch_counts, triton_gated_delta

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"

# Relative error budgets, max|a - b| / max|b|, for fp32 inputs.
OUT_BUDGET = 1e-4
GRAD_BUDGET = 1e-3


@pytest.fixture
def nan_empty(monkeypatch):
    """Make torch.empty / empty_like return NaN-filled tensors (unwritten reads fail)."""
    empty, empty_like = torch.empty, torch.empty_like

    def poisoned(*args, **kwargs):
        out = empty(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    def poisoned_like(*args, **kwargs):
        out = empty_like(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty", poisoned)
    monkeypatch.setattr(torch, "empty_like", poisoned_like)


@dataclass(frozen=True)
class Case:
    """One point of the design space at one test shape."""

    erase_axis: str = "key"
    write: str = "per_value"          # "per_value" | "scalar"
    covariance: str = "reset"
    content: Optional[str] = None     # None | "erase" | "decay"
    T: int = 63
    chunk: int = 16
    dk: int = 16
    dv: int = 32
    B: int = 1
    H: int = 2
    max_decay: float = 2.0            # g in (-max_decay, 0) per token
    init_cov: bool = False
    eigen: str = "[0,1]"              # "[-1,1]": b in (0, 2) (erase_scale 2 for a content gate)

    @property
    def id(self) -> str:
        parts = [self.erase_axis, self.write, self.covariance, f"cg-{self.content or 'off'}",
                 f"T{self.T}", f"C{self.chunk}", f"k{self.dk}v{self.dv}"]
        if self.max_decay > 2.0:
            parts.append(f"g-{self.max_decay:g}")
        if self.init_cov:
            parts.append("P0")
        if self.eigen != "[0,1]":
            parts.append("eig-signed")
        return "-".join(parts)


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(DEVICE).requires_grad_()


def make_inputs(case: Case, dtype=torch.float32) -> dict:
    """Leaf tensors of one case (gates activated unless they are the content target)."""
    B, T, H, dk, dv = case.B, case.T, case.H, case.dk, case.dv
    n_b = dk if case.erase_axis == "key" else dv
    x = {
        "q": _leaf(torch.randn(B, T, H, dk).to(dtype)),
        "k": _leaf(torch.randn(B, T, H, dk).to(dtype)),
        "v": _leaf(torch.randn(B, T, H, dv).to(dtype)),
        "g": _leaf(-case.max_decay * torch.rand(B, T, H, dk)),
        "b": _leaf(ERASE_SCALES[case.eigen] * torch.rand(B, T, H, n_b)),
        "w": _leaf(torch.rand(B, T, H, dv) if case.write == "per_value" else torch.rand(B, T, H)),
        "initial_state": _leaf(0.3 * torch.randn(B, H, dk, dv)),
    }
    if case.covariance == "propagate":
        x["r"] = _leaf(F.softplus(torch.randn(B, T, H)) + 0.1)
        if case.init_cov:
            L = torch.randn(B, H, dk, dk) / dk ** 0.5
            x["initial_cov"] = _leaf(L @ L.transpose(-1, -2) + 0.5 * torch.eye(dk))
    if case.content == "erase":
        x["b"] = _leaf(torch.randn(B, T, H, n_b))
        x["U"] = _leaf(0.5 * torch.randn(H, n_b, 3))
    elif case.content == "decay":
        x["g"] = _leaf(torch.randn(B, T, H, dk))
        x["U"] = _leaf(0.5 * torch.randn(H, dk, 3))
        x["A_log"] = _leaf(torch.log(torch.rand(H) + 0.5))
    if case.content is not None:
        x["V"] = _leaf(torch.randn(H, 3, dv))
    return x


def run_case(fn, case: Case, x: dict, precision: str = "exact", **kwargs):
    """Forward with L2-normalised q, k, a fixed random loss on every output; returns
    (RecurrenceOutput, {name: grad}). ``kwargs``: the backend's own (``kernel``)."""
    content = None
    if case.content is not None:
        scale = ERASE_SCALES[case.eigen] if case.content == "erase" else 1.0
        content = ContentGate(x["U"], x["V"], case.content, x.get("A_log"), erase_scale=scale)
    options = RecurrenceOptions(erase_axis=case.erase_axis, covariance=case.covariance, chunk_size=case.chunk,
                                precision=precision)
    out = fn(
        F.normalize(x["q"], dim=-1), F.normalize(x["k"], dim=-1), x["v"], x["g"], x["b"], x["w"],
        x.get("r"), options, content=content, initial_state=x["initial_state"], initial_cov=x.get("initial_cov"),
        **kwargs,
    )
    gen = torch.Generator().manual_seed(1)
    loss = sum(
        (t.float() * torch.randn(t.shape, generator=gen).to(t.device)).sum()
        for t in (out.o, out.state, out.cov) if t is not None
    )
    names = list(x)
    grads = torch.autograd.grad(loss, [x[n] for n in names])
    return out, dict(zip(names, grads))


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-30)).item()


def assert_close(name: str, got, want, budget: float) -> None:
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = rel_err(got, want)
    assert err <= budget, f"{name}: relative error {err:.2e} > {budget:.0e}"


def assert_match(got, want, out_budget=OUT_BUDGET, grad_budget=GRAD_BUDGET) -> None:
    """Outputs, final state, final covariance and every gradient of two runs agree."""
    (out_g, grads_g), (out_w, grads_w) = got, want
    assert_close("o", out_g.o, out_w.o, out_budget)
    assert_close("state", out_g.state, out_w.state, out_budget)
    assert (out_g.cov is None) == (out_w.cov is None)
    if out_w.cov is not None:
        assert_close("cov", out_g.cov, out_w.cov, out_budget)
    for name, want_grad in grads_w.items():
        assert_close(f"grad {name}", grads_g[name], want_grad, grad_budget)


def launched(kind: str, fn):
    """Run fn and return (its result, number of ``kind`` launches it made)."""
    before = launch_counts().get(kind, 0)
    result = fn()
    return result, launch_counts().get(kind, 0) - before


def check_against_reference(case: Case, kernel: str):
    """Run one case on a Triton kernel and on the reference; assert they agree and that
    the Triton kernel really ran. Returns the Triton run."""
    x = make_inputs(case)
    got, n_fwd = launched(f"{kernel}_fwd", lambda: run_case(triton_gated_delta, case, x, kernel=kernel))
    want = run_case(gated_delta_reference, case, x)
    assert n_fwd >= 1, f"no {kernel} kernel launched"
    assert_match(got, want)
    return got


RECURRENT_CASES = [
    Case(),
    Case(write="scalar", T=1),
    Case(erase_axis="value", dk=12, dv=20, chunk=32),
    Case(erase_axis="value", write="scalar", T=130, chunk=32, B=2, H=1),
    Case(erase_axis="value", content="erase"),
    Case(erase_axis="value", write="scalar", content="decay", chunk=32),
    Case(content="erase", T=130, chunk=32, dk=12, dv=20),
    Case(max_decay=20.0, chunk=32),
    Case(eigen="[-1,1]"),
    Case(erase_axis="value", eigen="[-1,1]", dk=12, dv=20, chunk=32),
    Case(erase_axis="value", content="erase", eigen="[-1,1]"),
]
LARGE = {c for c in RECURRENT_CASES if c.T >= 130}


@pytest.mark.usefixtures("nan_empty")
@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.large] if c in LARGE else []) for c in RECURRENT_CASES]
)
def test_recurrent_matches_reference(case):
    check_against_reference(case, "recurrent")


@pytest.mark.usefixtures("nan_empty")
@pytest.mark.parametrize("erase_axis", ["key", "value"])
def test_recurrent_several_value_tiles(monkeypatch, erase_axis):
    """dv = 40 over value tiles of 16 (three tiles, the last one partial)."""
    monkeypatch.setattr(triton_recurrent, "MAX_BLOCK_V", 16)
    check_against_reference(Case(erase_axis=erase_axis, T=37, dv=40, H=1), "recurrent")


@pytest.mark.usefixtures("nan_empty")
def test_value_axis_with_constant_mask_equals_key_axis():
    """Value-axis erase with b constant across dv is the key-axis recurrence with b·1."""
    case = Case(erase_axis="value", T=37, H=1)
    x = make_inputs(case)
    beta = x["b"][..., :1].detach()
    x_value = dict(x, b=_leaf(beta.expand(-1, -1, -1, case.dv)))
    x_key = dict(x, b=_leaf(beta.expand(-1, -1, -1, case.dk)))
    value = run_case(triton_gated_delta, case, x_value, kernel="recurrent")[0]
    key = run_case(triton_gated_delta, Case(T=37, H=1), x_key, kernel="recurrent")[0]
    assert_close("o", value.o, key.o, OUT_BUDGET)
    assert_close("state", value.state, key.state, OUT_BUDGET)


def test_recurrent_entry_point_and_bad_kernel():
    case = Case(T=5, H=1)
    x = make_inputs(case)
    out, n = launched("recurrent_fwd", lambda: run_case(triton_ops.triton_recurrent_gated_delta, case, x))
    assert n == 1 and out[0].o.shape == (1, 5, 1, case.dv)
    with pytest.raises(ValueError, match="kernel='fused'"):
        triton_gated_delta(x["q"], x["k"], x["v"], x["g"], x["b"], x["w"], kernel="fused")


def test_recurrent_accepts_bf16_inputs():
    """bf16 q, k, v: the kernels upcast on load and keep the state in fp32."""
    case = Case(T=37, H=1)
    x = make_inputs(case, dtype=torch.bfloat16)
    got = run_case(triton_gated_delta, case, x, kernel="recurrent")
    want = run_case(gated_delta_reference, case, x)
    assert got[0].o.dtype == torch.bfloat16
    # o and the gradients of the bf16 leaves q, k, v are rounded to bf16 (2^-8 relative)
    # in both runs; the state and every other gradient are fp32.
    assert_close("o", got[0].o, want[0].o, 1e-2)
    assert_close("state", got[0].state, want[0].state, OUT_BUDGET)
    for name, want_grad in want[1].items():
        budget = 1e-2 if name in ("q", "k", "v") else GRAD_BUDGET
        assert_close(f"grad {name}", got[1][name], want_grad, budget)


def test_chunk_module_is_not_used_by_recurrent(monkeypatch):
    """The recurrent path never silently routes through the chunked kernels."""
    def refuse(*args, **kwargs):
        raise AssertionError("chunked kernel called")

    monkeypatch.setattr(triton_chunk, "chunk_forward", refuse)
    check_against_reference(Case(T=20, H=1), "recurrent")


def test_key_dim_above_one_tile_is_refused():
    with pytest.raises(ValueError, match="dk=300"):
        _triton_common.key_block(300)
    assert _triton_common.key_block(12) == 16 and _triton_common.key_block(256) == 256


def test_gpu_autotune_configs_leave_out_the_miscompiled_value_tile(monkeypatch):
    """The GPU autotune space of the state kernels: every value tile, warp and stage count
    except the combination that miscompiled on Hopper (BV=16 with 8 warps)."""
    monkeypatch.setattr(tuning, "triton_interpreted", lambda: False)
    monkeypatch.delenv("CARVELAB_AUTOTUNE", raising=False)
    configs = {(c.kwargs["BV"], c.num_warps, c.num_stages)
               for c in tuning.autotune_configs(value_blocks=(16, 32, 64))}
    assert configs == {(bv, w, s) for bv in (16, 32, 64) for w in (2, 4, 8) for s in (1, 2, 3)} - {
        (16, 8, s) for s in (1, 2, 3)}
    monkeypatch.setenv("CARVELAB_AUTOTUNE", "0")
    assert [c.kwargs for c in tuning.autotune_configs(value_blocks=(16, 32, 64))] == [{"BV": 64}]
