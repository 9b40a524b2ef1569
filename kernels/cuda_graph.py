"""CUDA-graph replay of a whole recurrence call (the content-gate loop), forward and backward.

Why. With a content gate the sequence runs as a host loop over content chunks (see
``triton_ops``): a few kernel launches and small torch ops per chunk, each costing the
host tens of microseconds, so on a GPU the loop is bound by the host, not by its kernels.
Captured once into a CUDA graph, the same launches replay as one host call.

How. ``graphed_call(fn, tensors, key)`` runs ``fn(*tensors)`` (which returns a tuple of
tensors) through a pool of captured *instances*, one pool per ``key`` (the options of the
call plus every tensor's shape, dtype and requires_grad). An instance owns:

- static copies of the inputs, the forward graph and its static outputs;
- when gradients are needed, the backward graph (``torch.autograd.grad`` of the static
  outputs w.r.t. the static inputs that require grad) and its static gradients.

A call copies its inputs into a free instance, replays the forward, and returns clones of
the outputs; its backward copies the incoming gradients in, replays the backward and
returns clones of the input gradients. Until that backward has run (or the call's autograd
graph is dropped) the instance is *busy*, because the forward replay left the saved
activations of that call in the instance's memory: a second call with the same key, e.g.
the next layer of the same width, takes another instance (captured on first need). A
training step with L content-gate layers therefore holds L instances, each with its own
memory pool of roughly one eager call's activations (the pools stay allocated between
steps). The first capture for a key is preceded by two eager warm-up calls, forward and
backward, which compile and autotune every kernel (autotuning synchronises, which a
capture forbids).

Replay computes exactly the eager launches on the same inputs, so results are those of the
eager call. A backward whose instance was replayed again in between (possible only with
``retain_graph=True``) raises instead of returning another call's gradients.

``CARVELAB_CUDA_GRAPHS=0`` turns replay off (every call runs eagerly); ``replay(False)``
does so for a block of code.
"""
from __future__ import annotations

import weakref
from typing import Callable, Hashable, Optional, Sequence

import torch

from carvelab.kernels._switch import Switch
from carvelab.kernels._triton_common import triton_interpreted

ENV = "CARVELAB_CUDA_GRAPHS"
_SWITCH = Switch(ENV, on="replay the content-gate loop", off="eager")


def replay(enabled: bool):
    """Within this block, replay (True) or run eagerly (False) whatever ``CARVELAB_CUDA_GRAPHS`` says."""
    return _SWITCH.override(enabled)


def graphs_enabled() -> bool:
    return _SWITCH.enabled()


def replays_on(device) -> bool:
    """Whether content-gate calls on ``device`` are replayed: compiled CUDA calls (not under
    TRITON_INTERPRET=1) with replay enabled."""
    return torch.device(device).type == "cuda" and not triton_interpreted() and graphs_enabled()


def should_replay(device) -> bool:
    """Replay a call on ``device`` now: ``replays_on`` it, and not inside another capture."""
    return replays_on(device) and not torch.cuda.is_current_stream_capturing()


class _Token:
    """Lives as long as one call's autograd context; its death frees the instance."""


class Instance:
    """One captured copy of the call (see the module docstring)."""

    def __init__(self) -> None:
        self.owner: Optional[weakref.ref] = None
        self.generation = 0

    @property
    def busy(self) -> bool:
        return self.owner is not None and self.owner() is not None

    def take(self, token: _Token) -> int:
        self.owner = weakref.ref(token)
        self.generation += 1
        return self.generation

    def release(self) -> None:
        self.owner = None


class InstancePool:
    """Instances per key; ``acquire`` returns a free one, capturing a new one when all are busy."""

    def __init__(self) -> None:
        self.instances: dict[Hashable, list[Instance]] = {}

    def acquire(self, key: Hashable, capture: Callable[[bool], Instance]) -> Instance:
        """``capture(first)`` builds a new instance; ``first`` is True for a key's first."""
        pool = self.instances.setdefault(key, [])
        for inst in pool:
            if not inst.busy:
                return inst
        inst = capture(not pool)
        pool.append(inst)
        return inst

    def count(self, key: Hashable) -> int:
        return len(self.instances.get(key, []))

    def clear(self) -> None:
        self.instances.clear()


POOL = InstancePool()


def release_graphs() -> None:
    """Drop every captured instance of this process (their graphs and memory pools). A call
    after this captures afresh; a process that runs one trial after another calls it between
    them, so one trial's pools neither stay allocated nor count in the next one's memory."""
    POOL.clear()


class CudaGraphInstance(Instance):
    """Static inputs, forward graph and outputs, and (with ``grad``) the backward graph."""

    def __init__(self, fn: Callable, tensors: Sequence[Optional[torch.Tensor]], grad: bool, warm_up: bool) -> None:
        super().__init__()
        if warm_up:
            _warm_up(fn, tensors, grad)
        self.static_in = [None if t is None else t.detach().clone().requires_grad_(grad and t.requires_grad)
                          for t in tensors]
        self.grad_idx = [i for i, t in enumerate(self.static_in) if t is not None and t.requires_grad]
        torch.cuda.synchronize()
        self.fwd = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.fwd, capture_error_mode="thread_local"):
            with torch.set_grad_enabled(grad):
                outs = fn(*self.static_in)
        self.static_out = [o.detach() for o in outs]
        self.bwd = None
        if grad:
            self.static_gout = [torch.zeros_like(o) for o in outs]
            self.bwd = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.bwd, pool=self.fwd.pool(), capture_error_mode="thread_local"):
                grads = torch.autograd.grad(
                    outs, [self.static_in[i] for i in self.grad_idx], self.static_gout, allow_unused=True,
                )
            self.static_gin = list(grads)
        del outs
        torch.cuda.synchronize()

    def forward(self, tensors: Sequence[Optional[torch.Tensor]]) -> tuple:
        for s, t in zip(self.static_in, tensors):
            if s is not None:
                s.detach().copy_(t)
        self.fwd.replay()
        return tuple(o.clone() for o in self.static_out)

    def backward(self, grads_out: Sequence[Optional[torch.Tensor]], n_inputs: int) -> list:
        for s, g in zip(self.static_gout, grads_out):
            s.zero_() if g is None else s.copy_(g)
        self.bwd.replay()
        out: list = [None] * n_inputs
        for i, g in zip(self.grad_idx, self.static_gin):
            out[i] = None if g is None else g.clone()
        return out


_SIDE_STREAMS: dict = {}


def side_stream(device=None) -> torch.cuda.Stream:
    """This process's one side stream on ``device`` (default: the current device), for warm-up
    work ahead of a capture. One per device and process, never one per call: cuBLAS keeps a
    workspace (32 MiB on Hopper) for every stream it has run on, for the life of the process,
    so a fresh stream per trial grew the memory a process holds by that much per trial."""
    index = torch.device("cuda" if device is None else device).index
    index = torch.cuda.current_device() if index is None else index
    if index not in _SIDE_STREAMS:
        _SIDE_STREAMS[index] = torch.cuda.Stream(device=index)
    return _SIDE_STREAMS[index]


def _warm_up(fn: Callable, tensors: Sequence[Optional[torch.Tensor]], grad: bool, iters: int = 2) -> None:
    """Eager calls on the side stream (as capture will run) so that every kernel is compiled
    and autotuned before capture."""
    stream = side_stream(next((t.device for t in tensors if t is not None), None))
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(iters):
            xs = [None if t is None else t.detach().clone().requires_grad_(grad and t.requires_grad) for t in tensors]
            with torch.set_grad_enabled(grad):
                outs = fn(*xs)
                need = [x for x in xs if x is not None and x.requires_grad]
                if grad and need:
                    torch.autograd.grad(outs, need, [torch.ones_like(o) for o in outs], allow_unused=True)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()


class _Replay(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inst, n, *tensors):
        token = _Token()
        ctx.inst, ctx.token, ctx.n = inst, token, n
        ctx.generation = inst.take(token)
        outs = inst.forward(tensors)
        if inst.bwd is None:  # nothing to keep for a backward
            inst.release()
        return outs

    @staticmethod
    def backward(ctx, *grads_out):
        inst = ctx.inst
        if inst.generation != ctx.generation or inst.owner is None or inst.owner() is not ctx.token:
            raise RuntimeError(
                "this CUDA-graphed recurrence call was replayed again before its backward (e.g. a second "
                f"backward with retain_graph=True); set {ENV}=0 to run such code eagerly"
            )
        grads = inst.backward(grads_out, ctx.n)
        inst.release()
        return (None, None, *grads)


def call_key(key: Hashable, tensors: Sequence[Optional[torch.Tensor]], grad: bool) -> tuple:
    """What a captured instance is valid for: ``key`` (the caller's options), each tensor's
    shape, dtype, requires_grad and device, whether gradients are recorded, and the autocast
    state (a graph captured under autocast replays its casts)."""
    device = next(t for t in tensors if t is not None).device
    autocast = (torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type),)
    sig = tuple(None if t is None else (tuple(t.shape), t.dtype, t.requires_grad, t.device) for t in tensors)
    return (key, sig, grad, autocast)


def graphed_call(fn: Callable, tensors: Sequence[Optional[torch.Tensor]], key: Hashable) -> tuple:
    """``fn(*tensors)`` (a tuple of tensors) replayed from a CUDA graph; see the module docstring."""
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    full_key = call_key(key, tensors, grad)
    with torch.cuda.device(next(t for t in tensors if t is not None).device):
        inst = POOL.acquire(full_key, lambda first: CudaGraphInstance(fn, tensors, grad, warm_up=first))
        return _Replay.apply(inst, len(tensors), *tensors)
