"""Chunked WY Triton kernels (kernels/triton_chunk.py) against the reference and against
the fused recurrent kernels, on every key-axis point tested.

    python -m pytest tests/kernels/test_triton_chunk.py -q
"""
from __future__ import annotations

import pytest
import torch

from carvelab.kernels import dispatch, triton_chunk, triton_ops, triton_recurrent, tuning
from carvelab.kernels.options import RecurrenceOptions
from carvelab.kernels.reference import gated_delta_reference
from carvelab.kernels.triton_ops import chunk_block, content_fuses, launch_counts, triton_gated_delta
from tests.kernels.test_triton_recurrent import (
    Case,
    assert_match,
    launched,
    make_inputs,
    nan_empty,  # noqa: F401  (fixture)
    run_case,
)

CHUNK_CASES = [
    Case(T=1),
    Case(write="scalar", dk=12, dv=20, chunk=32),
    Case(T=130, B=2, H=1),
    Case(content="erase"),
    Case(write="scalar", content="decay", chunk=32, dk=12, dv=20),
    Case(covariance="propagate", init_cov=True),
    Case(covariance="propagate", write="scalar", content="erase", chunk=32),
    Case(covariance="propagate", content="decay", T=130, chunk=32, H=1),
    Case(max_decay=20.0, chunk=32),
    Case(max_decay=20.0, content="erase", T=130, H=1),
    Case(content="erase", chunk=20, T=63),   # content chunk 20 on 64-token kernel chunks
    Case(dk=80, dv=16, T=40, H=1, chunk=32),  # dk over several key slices of the backward kernels
    Case(eigen="[-1,1]", write="scalar", chunk=32),  # b in (0, 2)
    Case(eigen="[-1,1]", content="erase"),           # b = 2 sigmoid(pre + delta)
]


def _param(case: Case):
    return pytest.param(case, id=case.id, marks=[pytest.mark.large] if case.T >= 130 else [])


@pytest.mark.usefixtures("nan_empty")
@pytest.mark.parametrize("case", [_param(c) for c in CHUNK_CASES])
def test_chunk_matches_reference_and_recurrent(case):
    """Outputs, S_T (P_T) and every gradient: chunk vs reference and chunk vs recurrent."""
    x = make_inputs(case)
    before = launch_counts()
    chunk = run_case(triton_gated_delta, case, x, kernel="chunk")
    after = launch_counts()
    family = "content" if content_fuses(case.content, "chunk", "key", case.chunk) else "chunk"  # fused or loop
    assert after[f"{family}_fwd"] > before.get(f"{family}_fwd", 0), f"the {family} kernel did not run"
    assert after[f"{family}_bwd"] > before.get(f"{family}_bwd", 0), f"the {family} backward did not run"
    assert after.get("recurrent_fwd", 0) == before.get("recurrent_fwd", 0), "fell back to recurrent"
    assert_match(chunk, run_case(gated_delta_reference, case, x))
    recurrent, n_rec = launched("recurrent_fwd", lambda: run_case(triton_gated_delta, case, x, kernel="recurrent"))
    assert n_rec >= 1
    assert_match(chunk, recurrent)


@pytest.mark.usefixtures("nan_empty")
def test_chunk_backward_launches_and_never_uses_recurrent(monkeypatch):
    """The chunked path runs its own forward and backward kernels only."""
    def refuse(*args, **kwargs):
        raise AssertionError("recurrent kernel called")

    monkeypatch.setattr(triton_recurrent, "recurrent_forward", refuse)
    monkeypatch.setattr(triton_recurrent, "recurrent_backward", refuse)
    case = Case(T=40, H=1)
    x = make_inputs(case)
    (_, n_bwd) = launched("chunk_bwd", lambda: run_case(triton_gated_delta, case, x, kernel="chunk"))
    assert n_bwd == 1


@pytest.mark.usefixtures("nan_empty")
def test_chunk_several_value_tiles(monkeypatch):
    """dv = 40 over value tiles of 16 (three tiles, the last one partial)."""
    monkeypatch.setattr(triton_chunk, "MAX_BLOCK_V", 16)
    case = Case(T=37, dv=40, H=1)
    x = make_inputs(case)
    assert_match(run_case(triton_gated_delta, case, x, kernel="chunk"), run_case(gated_delta_reference, case, x))


def test_chunk_refuses_value_axis():
    x = make_inputs(Case(erase_axis="value", T=4, H=1))
    with pytest.raises(ValueError, match="erase_axis='value'"):
        triton_ops.triton_chunk_gated_delta(x["q"], x["k"], x["v"], x["g"], x["b"], x["w"], None,
                                            RecurrenceOptions(erase_axis="value"))


@pytest.mark.parametrize("chunk_size, block", [(16, 16), (32, 32), (64, 64), (20, 64)])
def test_kernel_chunk_of_a_content_chunk(chunk_size, block):
    assert chunk_block(chunk_size) == block


@pytest.mark.parametrize("kernel", ["chunk", "recurrent"])
def test_a_chunk_longer_than_the_kernels_is_refused_not_run_on_smaller_chunks(kernel):
    """chunk_size=128 would run as 64-token WY chunks while the costs count 128: refused."""
    case = Case(T=8, H=1, chunk=128)
    x = make_inputs(case)
    with pytest.raises(ValueError, match=r"chunk_size=128 is not allowed on the Triton backend.*\[16, 32, 64\]"):
        run_case(triton_gated_delta, case, x, kernel=kernel)
    with pytest.raises(ValueError, match="chunk_size=128"):
        dispatch.resolve_backend("triton", x["q"].device, "key", 128)


def test_chunk_forward_refuses_bad_block():
    q = torch.zeros(1, 4, 1, 16)
    with pytest.raises(ValueError, match="BT=48"):
        triton_chunk.chunk_forward(q, q, q, q, q, q, q, torch.zeros(1, 1, 16, 16), 1.0, 48)


def test_chunk_forward_refuses_a_gate_of_other_width():
    q, s0, odd = torch.zeros(1, 4, 1, 16), torch.zeros(1, 1, 16, 16), torch.zeros(1, 4, 1, 3)
    with pytest.raises(ValueError, match="erase gate b has 3 channels; expected 16 \\(dk\\) or 1"):
        triton_chunk.chunk_forward(q, q, odd, q, q, q, q, s0, 1.0, 32)
    with pytest.raises(ValueError, match="write gate w has 3 channels; expected 16 \\(dv\\) or 1"):
        triton_chunk.chunk_forward(q, q, q, q, q, odd, q, s0, 1.0, 32)


@pytest.mark.usefixtures("nan_empty")
def test_dispatch_triton_routes_to_these_kernels():
    """backend='triton' reaches the chunked kernel (key axis) and the recurrent one (value)."""
    for axis, kind in (("key", "chunk_fwd"), ("value", "recurrent_fwd")):
        case = Case(erase_axis=axis, T=9, H=1)
        x = make_inputs(case)
        assert dispatch.resolve_backend("triton", x["q"].device, axis) == f"triton_{kind[:-4]}"
        (out, _), n = launched(kind, lambda: run_case(dispatch.gated_delta, case, x, backend="triton"))
        assert n == 1 and torch.isfinite(out.o).all()


@pytest.mark.usefixtures("nan_empty")
@pytest.mark.parametrize("kernel", ["chunk", "recurrent"])
def test_per_head_gates_broadcast(kernel):
    """Gated DeltaNet's gates: one decay, one erase and one write gate per head ([B, T, H])."""
    case = Case(T=40, H=2, write="scalar")
    x = make_inputs(case)
    x["g"] = x["g"][..., 0].detach().requires_grad_()
    x["b"] = x["b"][..., 0].detach().requires_grad_()
    assert x["g"].shape == x["b"].shape == x["w"].shape == (1, 40, 2)
    assert_match(run_case(triton_gated_delta, case, x, kernel=kernel), run_case(gated_delta_reference, case, x))


@pytest.mark.usefixtures("nan_empty")
def test_tuned_kernels_launch_the_chosen_config_directly_once_chosen(monkeypatch):
    """A second call with the same launch signatures skips Triton's autotuner (its choice
    is remembered per signature) and gives bit-identical outputs and gradients."""
    from triton.runtime.autotuner import Autotuner

    for kernel in vars(triton_chunk).values():
        if isinstance(kernel, tuning.TunedKernel):
            monkeypatch.setattr(kernel, "chosen", {})  # as in a fresh process
    runs = []
    real_run = Autotuner.run
    monkeypatch.setattr(Autotuner, "run", lambda self, *a, **k: runs.append(self) or real_run(self, *a, **k))
    case = Case(T=40, H=1, dv=24)
    x = make_inputs(case)
    first = run_case(triton_gated_delta, case, x, kernel="chunk")
    assert len(runs) >= 8  # every autotuned kernel of the forward and backward, at least once
    assert triton_chunk._state_fwd_kernel.chosen and triton_chunk._intra_bwd_kernel.chosen
    runs.clear()
    second = run_case(triton_gated_delta, case, x, kernel="chunk")
    assert runs == []
    assert torch.equal(first[0].o, second[0].o) and torch.equal(first[0].state, second[0].state)
    assert all(torch.equal(first[1][n], second[1][n]) for n in first[1])



def test_per_token_gates_are_read_as_one_column():
    """Per-token gates b, w [B, T, H] (KDA's and GDN's β) reach the kernels as one column
    (KB = KW = 1), not per-channel copies; outputs and every gradient match the reference,
    and match the same gates materialised per channel (KB = dk, KW = dv), their gradients
    summed over the channels."""
    case = Case(T=40, dk=16, dv=8, chunk=16)
    x = make_inputs(case)
    x["b"], x["w"] = (torch.rand(case.B, case.T, case.H, device=x["q"].device).requires_grad_() for _ in range(2))
    per_channel = dict(x, **{n: x[n].detach()[..., None].expand(-1, -1, -1, d).contiguous().requires_grad_()
                             for n, d in (("b", case.dk), ("w", case.dv))})
    widths, real = [], triton_chunk.gate_width

    def spy(gate, n, name):
        widths.append(real(gate, n, name))
        return widths[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(triton_chunk, "gate_width", spy)
        one_column = run_case(triton_gated_delta, case, x, kernel="chunk")
        assert widths and set(widths) == {1}, widths
        widths.clear()
        materialised = run_case(triton_gated_delta, case, per_channel, kernel="chunk")
        assert set(widths) == {case.dk, case.dv}, widths
    assert_match(one_column, run_case(gated_delta_reference, case, x))
    for n in ("b", "w"):
        materialised[1][n] = materialised[1][n].sum(-1)
    assert_match(one_column, materialised)
