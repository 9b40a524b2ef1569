"""The backend dispatcher: which implementation runs, and that the torch routes are exact."""
import pytest
import torch
import torch.nn.functional as F

from carvelab.kernels import chunk
from carvelab.kernels.chunk import chunk_gated_delta
from carvelab.kernels.dispatch import gated_delta, resolve_backend
from carvelab.kernels.options import RecurrenceOptions
from carvelab.kernels.reference import gated_delta_reference

B, T, H, DK, DV = 2, 45, 2, 12, 20
TOL = 1e-5


def inputs(erase_axis: str):
    n_b = DK if erase_axis == "key" else DV
    return (
        F.normalize(torch.randn(B, T, H, DK), dim=-1), F.normalize(torch.randn(B, T, H, DK), dim=-1),
        torch.randn(B, T, H, DV), -F.softplus(torch.randn(B, T, H, DK) - 2.0),
        torch.rand(B, T, H, n_b), torch.rand(B, T, H, DV),
    )


@pytest.mark.parametrize(
    "backend, device, axis, expected",
    [
        ("torch", "cpu", "key", "torch_chunk"),
        ("torch", "cpu", "value", "torch_chunk_value"),
        ("auto", "cpu", "key", "torch_chunk"),
        ("auto", "cpu", "value", "torch_chunk_value"),
        ("reference", "cpu", "value", "reference"),
        ("auto", "cuda", "key", "triton_chunk"),
        ("auto", "cuda", "value", "triton_recurrent"),
    ],
    ids=lambda p: str(p),
)
def test_resolve_backend(backend, device, axis, expected):
    assert resolve_backend(backend, torch.device(device), axis) == expected


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", torch.device("cpu"), "value") == "triton_recurrent"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton' needs CUDA"):
        resolve_backend("triton", torch.device("cpu"), "key")


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match=r"backend='cuda_fast' is not allowed.*'torch'"):
        resolve_backend("cuda_fast", torch.device("cpu"), "key")
    with pytest.raises(ValueError, match="backend='cuda_fast'"):
        gated_delta(*inputs("key"), backend="cuda_fast")


@pytest.mark.parametrize("axis, route", [("key", "chunk_gated_delta"), ("value", "chunk_gated_delta_value")])
def test_torch_backend_routes_and_matches_reference(monkeypatch, axis, route):
    calls = []
    original = getattr(chunk, route)

    def spy(*args, **kwargs):
        calls.append(args[7].erase_axis)
        return original(*args, **kwargs)

    monkeypatch.setattr(chunk, route, spy)
    x = inputs(axis)
    S0 = torch.randn(B, H, DK, DV)
    got = gated_delta(*x, erase_axis=axis, chunk_size=16, initial_state=S0, backend="torch")
    want = gated_delta_reference(*x, erase_axis=axis, initial_state=S0)
    assert calls == [axis]
    for a, b in ((got.o, want.o), (got.state, want.state)):
        assert ((a - b).abs().max() / b.abs().max()).item() <= TOL


def test_key_axis_wy_refuses_value_axis():
    with pytest.raises(ValueError, match="erase_axis='value'.*no single shared WY solve"):
        chunk_gated_delta(*inputs("value"), None, RecurrenceOptions(erase_axis="value"))
