"""NVIDIA's Multi-Process Service (MPS) for trials that share one GPU.

Without MPS, processes on one GPU take turns (time slicing): a sweep's fractional-GPU trials
divide the GPU's time between them, and a small trial, whose kernels fill few of the
multiprocessors, leaves the rest idle during its turn. Under MPS the kernels of different
processes run side by side. ``mps_daemon`` starts a control daemon of its own, with private
pipe and log folders, so only processes given its environment use it; others on the machine
keep their own contexts.

    with mps_daemon() as env:         # {"CUDA_MPS_PIPE_DIRECTORY": ..., "CUDA_MPS_LOG_DIRECTORY": ...}
        start the trials' processes with env added to theirs

A Ray sweep on a GPU node uses MPS when the node is started inside that environment
(``nvidia-cuda-mps-control -d`` with the two variables exported, then ``ray start``).
The daemon is told to quit when the block ends; a process killed inside the block leaves it
running (quit it with ``echo quit | nvidia-cuda-mps-control`` under the same environment).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, Optional

CONTROL = "nvidia-cuda-mps-control"
PIPE_ENV, LOG_ENV = "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"


@contextlib.contextmanager
def mps_daemon(parent: Optional[Path] = None, timeout_s: float = 60.0) -> Iterator[dict]:
    """Start an MPS control daemon with private folders under ``parent`` (default: the
    system's temporary folder); yield the environment that makes a CUDA process its client;
    tell it to quit and remove the folders on exit."""
    exe = shutil.which(CONTROL)
    if exe is None:
        raise RuntimeError(f"{CONTROL} is not on PATH: MPS needs NVIDIA's driver utilities on a machine with an "
                           f"NVIDIA GPU; run without MPS (bench_aggregate: leave out the 'after_mps' variant)")
    root = Path(tempfile.mkdtemp(prefix="carvelab-mps-", dir=parent))
    env = {PIPE_ENV: str(root / "pipe"), LOG_ENV: str(root / "log")}
    for folder in env.values():
        Path(folder).mkdir()
    full = {**os.environ, **env}
    try:
        started = subprocess.run([exe, "-d"], env=full, capture_output=True, text=True, timeout=timeout_s)
        if started.returncode != 0:
            raise RuntimeError(f"{CONTROL} -d failed (exit {started.returncode}): "
                               f"{(started.stderr or started.stdout).strip()[:300]}")
        try:
            yield env
        finally:
            subprocess.run([exe], input="quit\n", env=full, capture_output=True, text=True, timeout=timeout_s)
    finally:
        shutil.rmtree(root, ignore_errors=True)
