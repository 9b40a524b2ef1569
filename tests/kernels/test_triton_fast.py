"""``precision="fast"`` (bf16 tensor-core products, TF32 solve) against the fp32 reference.

Budgets are flash-linear-attention's own test tolerances for its chunked kernels, as
relative RMSE (‖a − b‖₂ / ‖b‖₂): outputs and states 5e-3, gradients of q, k, v and of
the initial state and covariance 1e-2, gate gradients 2e-2. Inputs are bf16 q, k, v (as
in a model under autocast) and fp32 gates; the reference runs in fp32 on the same values.

Under the interpreter bf16 operands are rounded exactly as the GPU rounds them and then
multiplied in fp32 (``_triton_common.mm``); with TRITON_INTERPRET=0 on a GPU the same
tests run the compiled tensor-core kernels at larger shapes as well.

Known limits, measured and not tested. Compiled on an H200 at T=2048, dk = dv = 128 with
N(0, 1) inputs, the decay gradient's relative RMSE was 2.5e-2 (everything else within
budget: o 4.4e-3, dq 4.7e-3, db 5.9e-3). Under the interpreter: with per-token log-decays
down to −20 (the state all but wiped every token) the decay gradient's error reaches about
4e-2; with covariance propagation on fla's input distribution (all-positive q, k, v, which
fla never runs through a covariance pass) the noise gradient dr reaches 2.4e-2.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from carvelab.kernels import dispatch, triton_chunk, triton_content
from carvelab.kernels.reference import gated_delta_reference
from carvelab.kernels.triton_ops import content_fuses, triton_gated_delta
from tests.kernels.test_triton_recurrent import DEVICE, Case, _leaf, launched, make_inputs, run_case

OUT_BUDGET, INPUT_GRAD_BUDGET, GATE_GRAD_BUDGET = 5e-3, 1e-2, 2e-2
INPUT_GRADS = ("q", "k", "v", "initial_state", "initial_cov")


def rel_rmse(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.float(), want.float()
    return ((got - want).square().mean().sqrt() / want.square().mean().sqrt().clamp_min(1e-30)).item()


def fla_style_inputs(case: Case) -> dict:
    """The input distribution of fla's chunked-kernel tests: q, k, v ~ U(0, 1) (bf16),
    g = logsigmoid(N(0, 1)) per channel, gates sigmoid(N(0, 1)), S_0 ~ N(0, 1)."""
    x = make_inputs(case, dtype=torch.bfloat16)
    B, T, H, dk, dv = case.B, case.T, case.H, case.dk, case.dv
    x.update(
        q=_leaf(torch.rand(B, T, H, dk).bfloat16()), k=_leaf(torch.rand(B, T, H, dk).bfloat16()),
        v=_leaf(torch.rand(B, T, H, dv).bfloat16()), initial_state=_leaf(torch.randn(B, H, dk, dv)),
    )
    if case.content != "decay":
        x["g"] = _leaf(F.logsigmoid(torch.randn(B, T, H, dk)))
    if case.content != "erase":
        x["b"] = _leaf(torch.randn(B, T, H, dk).sigmoid())
    x["w"] = _leaf(torch.randn(x["w"].shape).sigmoid())
    return x


def check_fast(case: Case, x: dict) -> dict:
    """Run ``fast`` on the chunked kernel and the fp32 reference; assert every budget.
    Returns the errors."""
    family = "content" if content_fuses(case.content, "chunk", "key", case.chunk) else "chunk"  # fused or loop
    (got, grads), n = launched(f"{family}_fwd", lambda: run_case(triton_gated_delta, case, x, kernel="chunk",
                                                                  precision="fast"))
    assert n >= 1, f"the {family} kernel did not run"
    x32 = {k: _leaf(t.detach().float()) for k, t in x.items()}
    want, want_grads = run_case(gated_delta_reference, case, x32)
    errors = {"o": rel_rmse(got.o, want.o), "state": rel_rmse(got.state, want.state)}
    if want.cov is not None:
        errors["cov"] = rel_rmse(got.cov, want.cov)
    errors.update({f"d{k}": rel_rmse(grads[k], want_grads[k]) for k in want_grads})
    for name, err in errors.items():
        budget = OUT_BUDGET if not name.startswith("d") else (
            INPUT_GRAD_BUDGET if name[1:] in INPUT_GRADS else GATE_GRAD_BUDGET)
        assert err <= budget, f"{case.id}: {name} relative RMSE {err:.2e} > {budget:.0e} (all: {errors})"
    return errors


POINTS = [
    Case(),
    Case(write="scalar", chunk=32, T=70),
    Case(covariance="propagate", init_cov=True),
    Case(content="erase", chunk=32, T=70),
    Case(content="decay", write="scalar", chunk=32, T=70),
    Case(covariance="propagate", content="erase", chunk=32, T=70),
    Case(chunk=64, T=130, dk=32, dv=32, H=1),
    Case(dk=12, dv=20, T=40),
    Case(eigen="[-1,1]", content="erase", chunk=32, T=70),
]
GPU_POINTS = [replace(c, T=512 + 7, B=2, H=4, dk=64, dv=64) for c in POINTS[:6]]


def _params(cases):
    return [pytest.param(c, id=c.id, marks=[pytest.mark.large] if c.T >= 130 else []) for c in cases]


@pytest.mark.parametrize("case", _params(POINTS))
def test_fast_within_budget_on_model_like_inputs(case):
    """N(0, 1) q, k, v (L2-normalised q, k), log-decays in (−2, 0)."""
    check_fast(case, make_inputs(case, dtype=torch.bfloat16))


def fla_has(case: Case) -> bool:
    return case.covariance == "reset" and case.content is None


FLA_POINTS = [c for c in POINTS if fla_has(c)]


@pytest.mark.parametrize("case", _params(FLA_POINTS))
def test_fast_within_budget_on_fla_test_inputs(case):
    """The points fla has kernels for (no covariance propagation, no content gate)."""
    check_fast(case, fla_style_inputs(case))


@pytest.mark.skipif(DEVICE != "cuda", reason="the compiled tensor-core kernels need a GPU (TRITON_INTERPRET=0)")
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in GPU_POINTS])
def test_fast_within_budget_compiled_at_trial_shapes(case):
    check_fast(case, make_inputs(case, dtype=torch.bfloat16))
    if fla_has(case):
        check_fast(case, fla_style_inputs(case))


def test_fast_reaches_the_kernels_and_exact_stays_exact():
    """The setting is not ignored: fast loses bf16-level accuracy that exact does not."""
    case = Case(T=40)
    x = make_inputs(case, dtype=torch.bfloat16)
    want = run_case(gated_delta_reference, case, x)[0].state  # the reference upcasts to fp32
    exact = run_case(triton_gated_delta, case, x, kernel="chunk", precision="exact")[0].state
    fast = run_case(triton_gated_delta, case, x, kernel="chunk", precision="fast")[0].state
    assert rel_rmse(exact, want) < 1e-5
    assert rel_rmse(fast, want) > 1e-4


def _chunk_args(T=40, H=2, dk=16, dv=24, write="per_value"):
    """q, k, b, u, v, w, g, s0 of ``triton_chunk.chunk_forward`` (u = k), fp32; w per value
    or per token (one column)."""
    q, k = (F.normalize(torch.randn(1, T, H, dk, device=DEVICE), dim=-1) for _ in range(2))
    b = torch.rand(1, T, H, dk, device=DEVICE)
    w = torch.rand(1, T, H, dv if write == "per_value" else 1, device=DEVICE)
    v, g = torch.randn(1, T, H, dv, device=DEVICE), -torch.rand(1, T, H, dk, device=DEVICE)
    return q, k, b, k, v, w, g, 0.3 * torch.randn(1, H, dk, dv, device=DEVICE)


def _content_args(rank=3, write="per_value"):
    """q, k, u, v, w, g, pre, b0, U, V, s0 of ``triton_content.content_forward``: T = 40
    over chunks of 16 (one partial), so the gate acts on chunks 1 and 2."""
    q, k, _, u, v, w, g, s0 = _chunk_args(write=write)
    H, dk, dv = q.shape[2], q.shape[3], v.shape[3]
    pre = torch.randn_like(q)
    U, V = 0.5 * torch.randn(H, dk, rank, device=DEVICE), torch.randn(H, rank, dv, device=DEVICE)
    return q, k, u, v, w, g, pre, torch.sigmoid(pre), U, V, s0


def _chunk_run(precision):
    """chunk_forward then chunk_backward: (saved, (o, S_T, every gradient))."""
    q, k, b, u, v, w, g, s0 = args = _chunk_args()
    o, s_out, saved = triton_chunk.chunk_forward(*args, 0.25, 16, precision)
    do, ds_out = torch.randn_like(o), torch.randn_like(s_out)
    grads = triton_chunk.chunk_backward(q, k, b, u, v, w, saved, s_out, do, ds_out, 0.25, 16, precision)
    return saved, (o, s_out, *grads)


def _content_run(precision):
    """content_forward then content_backward: (saved, (o, S_T, every gradient))."""
    q, k, u, v, w, g, pre, b0, U, V, s0 = args = _content_args()
    o, s_out, saved = triton_content.content_forward(*args, 0.25, 1.0, 16, precision)
    do, ds_out = torch.randn_like(o), torch.randn_like(s_out)
    grads = triton_content.content_backward(q, k, u, v, w, U, V, saved, s_out, do, ds_out, 0.25, 1.0, 16,
                                            precision)
    return saved, (o, s_out, *grads)


def _operands(fused: bool, saved: tuple) -> tuple:
    """Q, W and Δ of a saved tuple (``content_forward``'s if fused, else ``chunk_forward``'s)."""
    return (saved[2], saved[4], saved[6]) if fused else (saved[2], saved[5], saved[4])


@pytest.mark.parametrize("precision, dtype", [("fast", torch.bfloat16), ("exact", torch.float32)])
def test_q_w_and_delta_are_saved_in_bf16_under_fast_only(precision, dtype):
    """Q, W and Δ, product operands only, are stored in bf16 under fast; the rest stays fp32."""
    _, _, saved = triton_chunk.chunk_forward(*_chunk_args(), 0.25, 16, precision)
    G, A, Qm, h, dlt, W = saved
    assert Qm.dtype == W.dtype == dlt.dtype == dtype
    assert {t.dtype for t in (G, A, h)} == {torch.float32}
    _, _, saved = triton_content.content_forward(*_content_args(), 0.25, 1.0, 16, precision)
    G, bb, Qm, A, W, h, dlt, m = saved
    assert Qm.dtype == W.dtype == dlt.dtype == dtype
    assert {t.dtype for t in (G, bb, A, h, m)} == {torch.float32}


@pytest.mark.parametrize("fused", [False, True], ids=["chunk", "content"])
def test_q_w_and_delta_in_bf16_change_no_bit_under_fast(fused, monkeypatch):
    """Under fast every use of Q, W and Δ is a product that rounds its operands to bf16, so
    storing them rounded to bf16 gives the outputs and gradients of storing them in fp32,
    bit for bit (the interpreter's own bf16 conversion truncates: ``_put`` rounds)."""
    run = _content_run if fused else _chunk_run
    torch.manual_seed(1)
    saved, got = run("fast")
    assert {t.dtype for t in _operands(fused, saved)} == {torch.bfloat16}
    for module in (triton_chunk, triton_content):
        monkeypatch.setattr(module, "operand_dtype", lambda precision: torch.float32)
    torch.manual_seed(1)
    saved, want = run("fast")
    for t in _operands(fused, saved):  # fp32 values that bf16 storage has to round
        assert t.dtype == torch.float32 and not torch.equal(t, t.bfloat16().float())
    for a, b in zip(got, want):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("precision", ["exact", "fast"])
@pytest.mark.parametrize("fused", [False, True], ids=["chunk", "content"])
def test_o_in_the_output_dtype_is_the_fp32_o_rounded(fused, precision):
    """o written in bf16 is the fp32 o rounded to nearest, as torch rounds it; the content
    kernels' S_T (fed by the column means of o) does not change."""
    if fused:
        args = _content_args()
        run = lambda **kw: triton_content.content_forward(*args, 0.25, 1.0, 16, precision, **kw)  # noqa: E731
    else:
        args = _chunk_args()
        run = lambda **kw: triton_chunk.chunk_forward(*args, 0.25, 16, precision, **kw)  # noqa: E731
    o32, s32, _ = run()
    o16, s16, _ = run(out_dtype=torch.bfloat16)
    truncated = (o32.view(torch.int32) & -65536).view(torch.float32)
    assert not torch.equal(truncated, o32.bfloat16().float())  # rounding differs from truncating here
    assert o16.dtype == torch.bfloat16 and torch.equal(o16, o32.to(torch.bfloat16))
    assert torch.equal(s16, s32)


def test_fast_on_the_recurrent_kernel_computes_what_exact_does():
    """The fused recurrent kernels have no tensor-core products: fast == exact, bit for bit."""
    case = Case(erase_axis="value", T=20)
    x = make_inputs(case, dtype=torch.bfloat16)
    exact = run_case(triton_gated_delta, case, x, kernel="recurrent", precision="exact")
    fast = run_case(triton_gated_delta, case, x, kernel="recurrent", precision="fast")
    assert torch.equal(exact[0].o, fast[0].o) and torch.equal(exact[0].state, fast[0].state)
    assert all(torch.equal(exact[1][k], fast[1][k]) for k in exact[1])


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_fast_is_refused_where_it_cannot_run(backend):
    x = make_inputs(Case(T=4, H=1))
    with pytest.raises(ValueError, match=r"precision='fast' runs on the Triton backend only"):
        dispatch.gated_delta(x["q"], x["k"], x["v"], x["g"], x["b"], x["w"], backend=backend, precision="fast")
    allowed = r"\['auto', 'exact', 'fast'\]"
    with pytest.raises(ValueError, match=rf"precision='fastest' is not allowed; choose one of {allowed}"):
        dispatch.gated_delta(x["q"], x["k"], x["v"], x["g"], x["b"], x["w"], backend=backend, precision="fastest")


@pytest.mark.parametrize("impl, want", [("triton_chunk", "fast"), ("triton_recurrent", "fast"),
                                        ("torch_chunk", "exact"), ("reference", "exact")])
def test_auto_precision_is_fast_on_triton_only(impl, want):
    assert dispatch.resolve_precision("auto", impl) == want
    assert dispatch.resolve_precision("exact", impl) == "exact"
