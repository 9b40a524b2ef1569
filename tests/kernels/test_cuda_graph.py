"""CUDA-graph replay of the content-gate call: instance bookkeeping (any machine) and, on a
GPU, replayed results against the eager call."""
import gc
import os

import pytest
import torch

from carvelab.kernels import cuda_graph
from carvelab.kernels._args import ContentGate
from carvelab.kernels.cuda_graph import Instance, InstancePool, _Token

GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"


# ----------------------------------------------------------------------------- bookkeeping
def test_a_busy_instance_is_never_handed_out_twice_and_is_free_again_once_released():
    pool, made = InstancePool(), []

    def capture(first):
        made.append(first)
        return Instance()

    a = pool.acquire("k", capture)
    tok_a = _Token()
    a.take(tok_a)
    b = pool.acquire("k", capture)  # a is busy: a second instance, no warm-up for it
    assert b is not a and made == [True, False]
    tok_b = _Token()
    b.take(tok_b)
    a.release()
    assert pool.acquire("k", capture) is a and pool.count("k") == 2
    del tok_b  # the call's autograd context died without a backward: b is free again
    gc.collect()
    assert not b.busy
    assert pool.acquire("other", capture) is not a and made == [True, False, True]


def test_each_take_starts_a_new_generation():
    inst, tok = Instance(), _Token()
    g1 = inst.take(tok)
    inst.release()
    assert inst.take(_Token()) == g1 + 1


@pytest.mark.parametrize("value, expected", [("1", True), ("0", False)])
def test_graphs_switch(monkeypatch, value, expected):
    monkeypatch.setenv(cuda_graph.ENV, value)
    assert cuda_graph.graphs_enabled() is expected


def test_replay_blocks_override_the_environment_innermost_first(monkeypatch):
    monkeypatch.setenv(cuda_graph.ENV, "1")
    with cuda_graph.replay(False):
        assert not cuda_graph.graphs_enabled()
        with cuda_graph.replay(True):
            assert cuda_graph.graphs_enabled()
        assert not cuda_graph.graphs_enabled()
    assert cuda_graph.graphs_enabled()


def test_a_bad_switch_value_names_the_variable_and_what_is_allowed(monkeypatch):
    monkeypatch.setenv(cuda_graph.ENV, "yes")
    with pytest.raises(ValueError, match="CARVELAB_CUDA_GRAPHS='yes'.*use 1 .* or 0"):
        cuda_graph.graphs_enabled()


def test_instances_are_keyed_by_shapes_dtypes_grad_and_autocast_state():
    x, y = torch.zeros(2, 3), torch.zeros(2, 3, requires_grad=True)
    base = cuda_graph.call_key("k", (x, None), grad=True)
    assert cuda_graph.call_key("k", (x, None), grad=True) == base
    assert cuda_graph.call_key("k2", (x, None), grad=True) != base
    assert cuda_graph.call_key("k", (x, None), grad=False) != base
    assert cuda_graph.call_key("k", (torch.zeros(2, 4), None), grad=True) != base
    assert cuda_graph.call_key("k", (x.double(), None), grad=True) != base
    assert cuda_graph.call_key("k", (y, None), grad=True) != base
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cuda_graph.call_key("k", (x, None), grad=True) != base


def test_only_compiled_cuda_calls_replay(monkeypatch):
    capturing = []
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: bool(capturing))  # no CUDA here
    monkeypatch.setenv(cuda_graph.ENV, "1")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert cuda_graph.should_replay(torch.device("cuda"))
    capturing.append(True)  # inside another capture: run eagerly, as part of it
    assert not cuda_graph.should_replay(torch.device("cuda"))
    capturing.clear()
    assert not cuda_graph.should_replay(torch.zeros(1).device)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter runs kernels on the host
    assert not cuda_graph.should_replay(torch.device("cuda"))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv(cuda_graph.ENV, "0")
    assert not cuda_graph.should_replay(torch.device("cuda"))


# ----------------------------------------------------------------------------- on a GPU
def _inputs(B=2, T=96, H=2, dk=32, dv=32, target="erase", seed=0, covariance="reset"):
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, device="cuda") * scale).requires_grad_()

    k = torch.nn.functional.normalize(torch.randn(B, T, H, dk, generator=gen, device="cuda"), dim=-1).requires_grad_()
    x = dict(q=r(B, T, H, dk), k=k, v=r(B, T, H, dv), g=(-torch.rand(B, T, H, dk, generator=gen, device="cuda")).requires_grad_(),
             b=r(B, T, H, dk), w=torch.rand(B, T, H, dv, generator=gen, device="cuda").requires_grad_())
    n = dk if target == "erase" else 1
    content = ContentGate(U=r(H, n, 4, scale=0.3), V=r(H, 4, dv, scale=0.3), target=target,
                          A_log=None if target == "erase" else r(H, scale=0.1))
    if target == "decay":
        x["g"] = r(B, T, H, 1, scale=0.5)
    if covariance == "propagate":
        x["r"] = (torch.rand(B, T, H, generator=gen, device="cuda") + 0.1).requires_grad_()
    return x, content


def _run(x, content, **kw):
    from carvelab.kernels.triton_ops import triton_gated_delta

    from carvelab.kernels.options import RecurrenceOptions

    options = RecurrenceOptions(covariance="propagate" if "r" in x else "reset", chunk_size=32,
                                precision=kw.pop("precision", "exact"))
    return triton_gated_delta(x["q"], x["k"], x["v"], x["g"], x["b"], x["w"], x.get("r"), options, content=content,
                              **kw)


def _fwd_bwd(x, content, seed=5, **kw):
    out = _run(x, content, **kw)
    leaves = [*x.values(), content.U, content.V] + ([content.A_log] if content.A_log is not None else [])
    do = torch.randn(out.o.shape, generator=torch.Generator(device="cuda").manual_seed(seed), device="cuda")
    grads = torch.autograd.grad((out.o * do).sum() + out.state.square().sum(), leaves)
    return [out.o.detach(), out.state.detach(), *grads]


gpu = pytest.mark.skipif(not GPU, reason="CUDA graphs need a CUDA GPU")


@pytest.fixture(autouse=True)
def per_chunk_loop(monkeypatch):
    """These tests replay the per-chunk loop; an erase-target call on the chunked kernel
    would otherwise run the fused kernels, which need no graphs (test_triton_content)."""
    monkeypatch.setenv("CARVELAB_FUSED_CONTENT", "0")


@gpu
@pytest.mark.parametrize("target, kernel, covariance", [
    ("erase", "chunk", "reset"), ("decay", "chunk", "reset"), ("erase", "recurrent", "reset"),
    ("decay", "chunk", "propagate"),
])
def test_replayed_call_equals_the_eager_call(monkeypatch, target, kernel, covariance):
    cuda_graph.POOL.clear()
    x, content = _inputs(target=target, covariance=covariance)
    monkeypatch.setenv(cuda_graph.ENV, "0")
    eager = _fwd_bwd(x, content, kernel=kernel)
    monkeypatch.setenv(cuda_graph.ENV, "1")
    first = _fwd_bwd(x, content, kernel=kernel)  # captures
    x2, content2 = _inputs(target=target, seed=1, covariance=covariance)
    monkeypatch.setenv(cuda_graph.ENV, "0")
    eager2 = _fwd_bwd(x2, content2, kernel=kernel)
    monkeypatch.setenv(cuda_graph.ENV, "1")
    again = _fwd_bwd(x2, content2, kernel=kernel)  # replays with new inputs
    assert sum(cuda_graph.POOL.count(k) for k in cuda_graph.POOL.instances) == 1
    for a, b in zip(eager + eager2, first + again):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


@gpu
def test_two_layers_of_one_shape_take_two_instances_and_each_gets_its_own_gradients(monkeypatch):
    cuda_graph.POOL.clear()
    x, content = _inputs()
    x2, content2 = _inputs(seed=1)

    def two_layer_step():
        o1 = _run(x, content).o
        o2 = _run(x2, content2).o  # same shapes, before o1's backward
        leaves = [x["q"], content.U, x2["q"], content2.U]
        return [o1.detach(), o2.detach(), *torch.autograd.grad(o1.square().sum() + (o2 * 2).sum(), leaves)]

    monkeypatch.setenv(cuda_graph.ENV, "0")
    eager = two_layer_step()
    monkeypatch.setenv(cuda_graph.ENV, "1")
    replayed = [two_layer_step(), two_layer_step()]
    assert [cuda_graph.POOL.count(k) for k in cuda_graph.POOL.instances] == [2]
    for step in replayed:
        for a, b in zip(eager, step):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


@gpu
def test_forward_only_calls_replay_without_a_backward_graph(monkeypatch):
    cuda_graph.POOL.clear()
    x, content = _inputs()
    monkeypatch.setenv(cuda_graph.ENV, "0")
    with torch.no_grad():
        eager = _run(x, content).o
    monkeypatch.setenv(cuda_graph.ENV, "1")
    with torch.no_grad():
        a, b = _run(x, content).o, _run(x, content).o  # the instance is free after each call
    assert [cuda_graph.POOL.count(k) for k in cuda_graph.POOL.instances] == [1]
    torch.testing.assert_close(a, eager, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b, eager, rtol=1e-6, atol=1e-6)


@gpu
def test_a_backward_after_its_instance_was_replayed_again_raises(monkeypatch):
    cuda_graph.POOL.clear()
    monkeypatch.setenv(cuda_graph.ENV, "1")
    x, content = _inputs()
    o = _run(x, content).o
    loss = o.sum()
    torch.autograd.grad(loss, [x["q"]], retain_graph=True)  # frees the instance
    _run(x, content).o.sum().backward()  # the same instance replays another call
    with pytest.raises(RuntimeError, match="replayed again before its backward.*CARVELAB_CUDA_GRAPHS=0"):
        torch.autograd.grad(loss, [x["q"]])
