"""The fused content-gate kernels (kernels/triton_content.py) against the reference and
against the per-chunk loop they replace, and the init identity with the ungated path.

    TRITON_INTERPRET=1 python -m pytest tests/kernels/test_triton_content.py -q
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from carvelab.kernels import triton_chunk, triton_content
from carvelab.kernels._args import ContentGate
from carvelab.kernels.options import RecurrenceOptions
from carvelab.kernels.reference import gated_delta_reference
from carvelab.kernels.triton_ops import (
    FUSED_CONTENT_ENV,
    fused_content,
    fuses_content,
    launch_counts,
    triton_gated_delta,
)
from tests.kernels.test_triton_fast import _content_args
from tests.kernels.test_triton_recurrent import (
    DEVICE,
    Case,
    assert_match,
    make_inputs,
    nan_empty,  # noqa: F401  (fixture)
    run_case,
)

FUSED_CASES = [
    Case(content="erase", chunk=16, T=40),
    Case(content="erase", chunk=32, T=70, dk=12, dv=20, B=2),         # T not a multiple of the chunk
    Case(content="erase", chunk=64, T=150, H=1),                        # sub-chunk blocks of a 64 chunk
    Case(content="erase", chunk=16, T=9),                               # one chunk: the gate never acts
    Case(content="erase", write="scalar", covariance="propagate", chunk=16, T=40),
    Case(content="erase", eigen="[-1,1]", chunk=16, T=40),              # b = 2 sigmoid(pre + delta)
    Case(content="erase", max_decay=20.0, chunk=32, T=70, H=1),         # strong decays stay finite
    Case(content="erase", dk=80, dv=80, chunk=16, T=35, H=1),           # two key slices, two value tiles
]


def _launched(fn):
    before = launch_counts()
    out = fn()
    after = launch_counts()
    return out, {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


@pytest.mark.usefixtures("nan_empty")
@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda c: c.id)
def test_fused_matches_reference_and_the_per_chunk_loop(case, monkeypatch):
    """Outputs, S_T and every gradient (U and V included), in two launches per call."""
    x = make_inputs(case)
    fused, launches = _launched(lambda: run_case(triton_gated_delta, case, x, kernel="chunk"))
    assert launches.get("content_fwd") == 1 and launches.get("content_bwd") == 1
    assert "chunk_fwd" not in launches and "chunk_bwd" not in launches, launches
    assert_match(fused, run_case(gated_delta_reference, case, x))
    monkeypatch.setenv(FUSED_CONTENT_ENV, "0")
    loop, launches = _launched(lambda: run_case(triton_gated_delta, case, x, kernel="chunk"))
    assert "content_fwd" not in launches and launches.get("chunk_fwd", 0) >= 1
    assert_match(fused, loop)


@pytest.mark.usefixtures("nan_empty")
def test_several_value_tiles(monkeypatch):
    """dv = 40 over value tiles of 16: the mean, dm and dV cross three tiles (one partial)."""
    monkeypatch.setattr(triton_chunk, "MAX_BLOCK_V", 16)
    case = Case(content="erase", chunk=16, T=37, dv=40, H=1)
    x = make_inputs(case)
    assert_match(run_case(triton_gated_delta, case, x, kernel="chunk"), run_case(gated_delta_reference, case, x))


@pytest.mark.usefixtures("nan_empty")
@pytest.mark.parametrize("precision", ["exact", "fast"])
@pytest.mark.parametrize("write", ["per_value", "per_token"])
def test_x_formed_in_the_kernel_is_x_formed_by_torch(write, precision):
    """The fused kernels form x = w ⊙ v as they load it: o, S_T and every gradient equal,
    bit for bit, those of x = w ⊙ v formed by torch and passed with no write gate, and the
    kernels' dv and dw are x's gradient times w and v (summed over the values for a
    per-token w, in another order than torch's: to rounding)."""
    torch.manual_seed(0)
    q, k, u, v, w, g, pre, b0, U, V, s0 = _content_args(write=write)
    x = w * v
    do, ds_out = torch.randn_like(x), torch.randn_like(s0)
    runs = []
    for vv, ww in ((v, w), (x, None)):
        o, s_out, saved = triton_content.content_forward(q, k, u, vv, ww, g, pre, b0, U, V, s0, 0.25, 1.0, 16,
                                                         precision)
        grads = triton_content.content_backward(q, k, u, vv, ww, U, V, saved, s_out, do, ds_out, 0.25, 1.0, 16,
                                                precision)
        runs.append((o, s_out, *grads))
    (o, s_out, dq, dk, du, dv, dw, *rest), (o_x, s_x, dq_x, dk_x, du_x, dx, dw_x, *rest_x) = runs
    assert dw_x is None and dw.shape == w.shape
    for a, b in zip((o, s_out, dq, dk, du, *rest), (o_x, s_x, dq_x, dk_x, du_x, *rest_x)):
        assert torch.equal(a, b)
    assert torch.equal(dv, dx * w)
    if write == "per_value":
        assert torch.equal(dw, dx * v)
    else:
        torch.testing.assert_close(dw, (dx * v).sum(-1, keepdim=True), rtol=1e-5, atol=1e-6)


def _inert_inputs(gate: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    B, T, H, dk, dv = 2, 75, 2, 16, 32
    q = F.normalize(torch.randn(B, T, H, dk, generator=gen), dim=-1)
    k = F.normalize(torch.randn(B, T, H, dk, generator=gen), dim=-1)
    v, w = torch.randn(B, T, H, dv, generator=gen), torch.rand(B, T, H, dv, generator=gen)
    g = -F.softplus(torch.randn(B, T, H, dk, generator=gen) - 2.0)
    logits = torch.randn(B, T, H, dk, generator=gen) if gate == "channel" else torch.randn(B, T, H, generator=gen)
    V = torch.randn(H, 4, dv, generator=gen)
    return [t.to(DEVICE) for t in (q, k, v, g, logits, w, V)]


@pytest.mark.usefixtures("nan_empty")
@pytest.mark.parametrize("gate", ["channel", "head"])
@pytest.mark.parametrize("scale", [1.0, 2.0], ids=["eig01", "eig-signed"])
def test_inert_gate_is_bit_identical_to_the_ungated_kernels(gate, scale):
    """U = 0 (CARVE at init) on the fused kernels == the ungated chunked kernels with the
    caller's b = scale * sigmoid(logits), bit for bit: the GDN-2 / CARVE control."""
    q, k, v, g, logits, w, V = _inert_inputs(gate)
    n = 16 if gate == "channel" else 1
    content = ContentGate(torch.zeros(2, n, 4, device=DEVICE), V, erase_scale=scale)
    options = RecurrenceOptions(chunk_size=16, backend="triton")
    b = torch.sigmoid(logits)
    b = b if scale == 1.0 else scale * b
    plain = triton_gated_delta(q, k, v, g, b, w, None, options)
    carve, launches = _launched(lambda: triton_gated_delta(q, k, v, g, logits, w, None, options, content=content))
    assert launches == {"content_fwd": 1}
    assert torch.equal(plain.o, carve.o)
    assert torch.equal(plain.state, carve.state)


@pytest.mark.usefixtures("nan_empty")
def test_inert_gate_still_learns():
    """With U = 0 the gate is inert, yet U gets a gradient once a second chunk reads m_1."""
    q, k, v, g, logits, w, V = _inert_inputs("channel")
    for T, nonzero in ((75, True), (16, False)):
        U = torch.zeros(2, 16, 4, device=DEVICE, requires_grad=True)
        out = triton_gated_delta(q[:, :T], k[:, :T], v[:, :T], g[:, :T], logits[:, :T], w[:, :T], None,
                                 RecurrenceOptions(chunk_size=16), content=ContentGate(U, V))
        (dU,) = torch.autograd.grad(out.o.square().sum(), [U])
        assert (dU.abs().max() > 0) == nonzero


def test_what_is_fused_and_the_switch(monkeypatch):
    U, V = torch.zeros(1, 4, 2), torch.zeros(1, 2, 4)
    erase, decay = ContentGate(U, V), ContentGate(U, V, "decay", torch.zeros(1))
    assert fuses_content(erase, "chunk", RecurrenceOptions(chunk_size=32))
    assert not fuses_content(None, "chunk", RecurrenceOptions())
    assert not fuses_content(decay, "chunk", RecurrenceOptions())        # every stage depends on the decay
    assert not fuses_content(erase, "recurrent", RecurrenceOptions())
    assert not fuses_content(erase, "chunk", RecurrenceOptions(chunk_size=20))  # a content chunk of 20 tokens
    with fused_content(False):
        assert not fuses_content(erase, "chunk", RecurrenceOptions())
    monkeypatch.setenv(FUSED_CONTENT_ENV, "0")
    assert not fuses_content(erase, "chunk", RecurrenceOptions())
    with fused_content(True):  # the innermost block wins over the environment
        assert fuses_content(erase, "chunk", RecurrenceOptions())
        with fused_content(False):
            assert not fuses_content(erase, "chunk", RecurrenceOptions())
    monkeypatch.setenv(FUSED_CONTENT_ENV, "yes")
    with pytest.raises(ValueError, match="CARVELAB_FUSED_CONTENT='yes' is not allowed; use 1 .* or 0"):
        fuses_content(erase, "chunk", RecurrenceOptions())
