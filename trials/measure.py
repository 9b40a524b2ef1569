"""Throughput and peak-memory measurement of a training loop."""
from __future__ import annotations

import gc
import resource
import sys
import time

import torch


def rss_high_water_mb() -> float:
    """The process's resident-set high-water mark in MiB (Linux reports KiB, macOS bytes).

    It is process-wide: in a reused worker process it covers every trial it ran so far.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def release_device_memory(device: torch.device) -> float:
    """Free what earlier work of this process left on ``device`` (captured content-gate graphs,
    unreachable tensors, cuBLAS workspaces, the allocator's cached blocks) and start its peak-memory count afresh;
    the MiB still allocated there, which a trial's own peak leaves out. 0 on a CPU."""
    if device.type != "cuda":
        return 0.0
    from carvelab.kernels.cuda_graph import release_graphs

    release_graphs()
    gc.collect()
    torch.cuda.synchronize(device)
    # cuBLAS's per-stream workspaces too: each trial then allocates its own inside its count,
    # as in a fresh process, instead of the first trial of a process paying for the rest
    clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear_workspaces is not None:
        clear_workspaces()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device) / 2**20


class Meter:
    """Counts tokens and wall time over the steps after the first ``skip`` (compile/warm-up).

    Time runs in windows: a window opens at the first counted step after a ``flush`` (the
    device is synchronised once, so earlier work is not counted) and closes at the next
    ``flush`` (evaluation, checkpoint, end), which synchronises again and adds the wall time
    in between. Steps inside a window never wait for the device, so the host can queue the
    next step while the GPU runs this one; per-step synchronisation made small trials wait
    for each launch queue to drain."""

    def __init__(self, device: torch.device, skip: int, baseline_mb: float = 0.0):
        self.device = device
        self.baseline_mb = baseline_mb  # allocated before the trial began (not its own)
        self.skip = skip
        self.tokens = 0
        self.seconds = 0.0
        self._t0 = None
        self._pending = 0
        self._waited = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self, step: int) -> None:
        """Before training step ``step`` (0-based)."""
        if self._t0 is None and step >= self.skip:
            self._sync()
            self._t0 = time.perf_counter()

    def stop(self, step: int, tokens: int) -> None:
        """After training step ``step`` processed ``tokens`` tokens (no synchronisation)."""
        if step >= self.skip:
            self._pending += tokens

    def waited(self, seconds: float) -> None:
        """Leave out of the open window time spent waiting for another trial's timing slot."""
        if self._t0 is not None:
            self._waited += seconds

    def flush(self) -> None:
        """Close the open window: wait for the device, then count its time and tokens."""
        if self._t0 is not None:
            self._sync()
            self.seconds += time.perf_counter() - self._t0 - self._waited
            self.tokens += self._pending
        self._t0, self._pending, self._waited = None, 0, 0.0

    @property
    def tokens_per_s(self) -> float:
        """Over the closed windows (``flush`` first to include the open one)."""
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    def peak_memory_mb(self) -> float:
        """On a GPU the allocator's peak since ``release_device_memory``, less what was allocated
        before (``baseline_mb``); on a CPU the process's resident-set high-water mark."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20 - self.baseline_mb
        return rss_high_water_mb()

    def state(self) -> dict:
        self.flush()
        return {"tokens": self.tokens, "seconds": self.seconds}

    def load_state(self, state: dict) -> None:
        self.tokens, self.seconds = state["tokens"], state["seconds"]
