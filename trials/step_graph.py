"""The whole training step of a GPU trial as one CUDA graph.

A small trial's step is bound by the host: hundreds of kernels of a few microseconds,
each issued by Python through autograd. Captured once, the step (forward, backward,
gradient clipping, AdamW) is one graph launch, and the GPU no longer waits for the host.

    step = GraphedStep(model, optimizer, grad_clip, autocast)
    loss = step(inputs, targets)        # eager for the first WARMUP calls, then replayed

The first ``WARMUP`` calls are ordinary training steps, run eagerly on a side stream: they
compile and autotune the kernels and let autograd and the allocator reach their steady
state, which capture needs. The next call captures the step on its batch and replays it
at once, so every call trains exactly one step. Later calls copy their batch into the
captured input buffers and replay. The parameters and the optimiser state are updated in
place, so evaluation and checkpoints see them as usual; the optimiser must be built with
``capturable=True`` (``training.make_optimizer``) and its learning rate is set with
``training.set_lr`` (written in place, read by the graph). A batch of another shape or
dtype than the captured one is refused (a ValueError naming both shapes), never silently
run another way.

Inside the capture the content gate's own CUDA graphs are not replayed: its loop is
captured as part of the step (``kernels.cuda_graph.replay(False)``).
"""
from __future__ import annotations

from typing import Optional

import torch

from carvelab.kernels.cuda_graph import replay, side_stream
from carvelab.trials.training import optimizer_step

WARMUP = 3


class GraphedStep:
    """``optimizer_step`` captured in a CUDA graph after WARMUP eager calls; see the module docstring."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float, autocast,
                 ce_chunk: int = 0):
        self.model, self.optimizer, self.grad_clip, self.autocast = model, optimizer, grad_clip, autocast
        self.ce_chunk = ce_chunk
        self.calls = 0
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self._inputs = self._targets = self._loss = None
        self._side = side_stream(next(model.parameters()).device)

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.graph is None and self.calls <= WARMUP:
            return self._on_side_stream(lambda: self._step(inputs, targets))
        if self.graph is None:
            self._capture(inputs, targets)
        else:
            self._check(inputs, targets)
            self._inputs.copy_(inputs, non_blocking=True)
            self._targets.copy_(targets, non_blocking=True)
        self.graph.replay()
        return self._loss

    def _step(self, inputs, targets) -> torch.Tensor:
        with replay(False):
            return optimizer_step(self.model, self.optimizer, inputs, targets, self.grad_clip, self.autocast,
                                  self.ce_chunk)

    def _on_side_stream(self, fn):
        self._side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._side):
            out = fn()
        torch.cuda.current_stream().wait_stream(self._side)
        return out

    def _capture(self, inputs, targets) -> None:
        self._inputs, self._targets = inputs.clone(), targets.clone()
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            self._loss = self._step(self._inputs, self._targets)
        self.graph = graph

    def _check(self, inputs, targets) -> None:
        for name, got, want in (("inputs", inputs, self._inputs), ("targets", targets, self._targets)):
            if got.shape != want.shape or got.dtype != want.dtype:
                raise ValueError(
                    f"the training step was captured for {name} of shape {tuple(want.shape)} ({want.dtype}); "
                    f"got {tuple(got.shape)} ({got.dtype}): set train.cuda_graph: false for tasks whose "
                    "batches change shape"
                )
