"""Speed measured in isolation: an exclusive timing slot per device and node.

Trials that share a device (two on the CPU cores of a node, four on a GPU with 0.25 each)
slow each other down, so a throughput measured while they train measures the neighbours
too. Every trial therefore trains in *shared* blocks of steps and times itself in one
short *exclusive* window (``train.timing_steps`` steps): while one trial holds the
exclusive slot of its device, no other trial of that device trains.

The slot is a pair of ``flock`` locks on files of a node-local folder
(``$CARVELAB_SLOT_DIR``, else ``/tmp/carvelab-<uid>/slots``), one pair per device: ``cpu``
for the CPU, the GPU's UUID for a GPU (the same GPU whatever ``CUDA_VISIBLE_DEVICES`` a
process sees). ``<key>.lock`` is held shared by a training block and exclusive by a timing
window; ``<key>.gate`` gives the timing window precedence: a block takes the gate for an
instant before its shared lock, and a waiting window holds the gate, so no new block
starts while the window waits for the running ones to end. A block ends where the trial
synchronises its device anyway (every step on the CPU; on a GPU at evaluations and
divergence checks), so what it queued has run when it lets go. Locks of a process that
dies are released by the kernel. Processes on other nodes, or outside carvelab, are not
coordinated.
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Optional

import torch

MAX_RECORDED_BLOCKS = 2000  # shared blocks kept in a trial's result (for the exclusivity test)


def slot_dir() -> Path:
    return Path(os.environ.get("CARVELAB_SLOT_DIR") or f"/tmp/carvelab-{os.getuid()}/slots")


def device_key(device: torch.device) -> str:
    """``cpu``, or the GPU's UUID (its PCI bus id where torch gives no UUID)."""
    if device.type != "cuda":
        return "cpu"
    props = torch.cuda.get_device_properties(device)
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        return f"gpu-{uuid}"
    return "gpu-" + "-".join(str(getattr(props, k, "")) for k in ("pci_domain_id", "pci_bus_id", "pci_device_id"))


class DeviceSlot:
    """The shared/exclusive slot of one device on this node (see the module docstring)."""

    def __init__(self, device: torch.device, folder: Optional[Path] = None):
        self.device = device
        self.key = device_key(device)
        folder = folder or slot_dir()
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(folder / f"{self.key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self._gate = os.open(folder / f"{self.key}.gate", os.O_RDWR | os.O_CREAT, 0o600)
        self.shared = False
        self.blocks: list[list[float]] = []   # wall-clock [start, end] of the shared blocks
        self._block_start = 0.0

    def hold_shared(self) -> float:
        """Start a training block (no-op while one is open); returns the seconds it waited."""
        if self.shared:
            return 0.0
        asked = time.perf_counter()
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        fcntl.flock(self._lock, fcntl.LOCK_SH)
        fcntl.flock(self._gate, fcntl.LOCK_UN)
        self.shared, self._block_start = True, time.time()
        return time.perf_counter() - asked

    def release_shared(self) -> None:
        """End the training block; call only where the device has been synchronised."""
        if not self.shared:
            return
        if len(self.blocks) < MAX_RECORDED_BLOCKS:
            self.blocks.append([self._block_start, time.time()])
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self.shared = False

    def acquire_exclusive(self) -> float:
        """Wait for the device to be ours alone; returns the wall-clock time it became so."""
        self.release_shared()
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        return time.time()

    def release_exclusive(self) -> float:
        now = time.time()
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        fcntl.flock(self._gate, fcntl.LOCK_UN)
        return now

    def close(self) -> None:
        self.release_shared()
        for fd in (self._lock, self._gate):
            try:
                os.close(fd)  # closing the descriptor drops any lock still held
            except OSError:
                pass


class TimedWindow:
    """``length`` training steps from step ``start`` (0-based), timed while holding the device's
    exclusive slot. ``pause``/``resume`` leave evaluations and checkpoints out of the time."""

    def __init__(self, slot: DeviceSlot, start: int, length: int):
        self.slot, self.start, self.length = slot, start, length
        self.active = False
        self.steps = self.tokens = 0
        self.seconds = 0.0
        self.interval: Optional[list[float]] = None
        self._t = 0.0

    def _sync(self) -> None:
        if self.slot.device.type == "cuda":
            torch.cuda.synchronize(self.slot.device)

    def opens_at(self, step: int) -> bool:
        """Whether ``before_step(step)`` opens the window."""
        return self.length > 0 and step == self.start and not self.active and self.interval is None

    def before_step(self, step: int) -> None:
        if self.opens_at(step):
            self._sync()  # our own queued work is not the window's
            self.slot.release_shared()
            begin = self.slot.acquire_exclusive()
            self.interval = [begin, begin]
            self.active, self._t = True, time.perf_counter()

    def after_step(self, step: int, tokens: int) -> None:
        if not self.active:
            return
        self.steps += 1
        self.tokens += tokens
        if self.steps >= self.length:
            self.pause()
            self.active = False
            self.interval[1] = self.slot.release_exclusive()

    def pause(self) -> None:
        if self.active:
            self._sync()
            self.seconds += time.perf_counter() - self._t

    def resume(self) -> None:
        if self.active:
            self._t = time.perf_counter()

    def metrics(self) -> dict[str, float]:
        """``tokens_per_s`` and ``step_ms`` of the finished window ({} before it ends)."""
        if self.active or not self.steps or self.seconds <= 0:
            return {}
        return {"tokens_per_s": self.tokens / self.seconds, "step_ms": 1000.0 * self.seconds / self.steps}

    def record(self) -> dict:
        return {"device": self.slot.key, "steps": self.steps, "slot": self.interval, "shared_blocks": self.slot.blocks}
