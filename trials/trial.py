"""One trial as a pure function: ``run_trial(config, reporter) -> TrialResult``.

Builds the model of ``config.model`` (vocabulary taken from the task), trains it with
AdamW + warm-up/cosine + gradient clipping, evaluates every ``train.eval_every`` steps
on the validation split and reports to ``reporter`` (which may answer STOP: the trial ends
as ``pruned``), evaluates once on the test split when it completes (``test_*`` metrics in
its final metrics, never in the reported history, so nothing that selects sees them), and
stops on its own when the loss is NaN/Inf (``failed``, reason ``diverged``). Imports
neither Ray nor MLflow, so it runs the same in a test, a notebook or a Ray worker.

Example (CPU, about a minute)::

    from carvelab.search_space.loading import load_trial_config
    from carvelab.trials.trial import run_trial
    result = run_trial(load_trial_config("trials/configs/tiny_mqar.yaml"))
"""
from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from carvelab.kernels.cuda_graph import replays_on
from carvelab.kernels.dispatch import resolve_backend, resolve_precision
from carvelab.kernels.fused import PIECES, on_triton
from carvelab.kernels.triton_ops import content_fuses
from carvelab.search_space.trial_config import TrialConfig
from carvelab.trials import checkpoint
from carvelab.trials.measure import Meter, release_device_memory
from carvelab.trials.reporting import STOP, NullReporter, Reporter
from carvelab.trials.step_graph import WARMUP, GraphedStep
from carvelab.trials.timing_slot import DeviceSlot, TimedWindow
from carvelab.trials.training import evaluate, lr_at, make_optimizer, optimizer_step, set_lr

logger = logging.getLogger(__name__)

# Between evaluations a GPU trial reads its loss back every this many steps (to end a
# diverged trial early); the steps in between queue without waiting for the device.
DIVERGENCE_CHECK_EVERY = 25

COMPLETED, PRUNED, FAILED = "completed", "pruned", "failed"


@dataclass
class TrialResult:
    """What one trial produced. ``metrics`` holds the last evaluation plus the measurements."""

    status: str
    reason: Optional[str]
    steps: int
    metrics: dict[str, float]
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    backend: str = ""
    precision: str = ""  # the recurrence's products as run (model.precision resolved; "none": no recurrence)
    step_mode: str = ""  # how the training step ran: "cuda_graph" (trials/step_graph.py) or "eager"
    config: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)  # the isolated timing window (trials/timing_slot.py)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_model(config: TrialConfig, vocab_size: int, device: torch.device):
    from carvelab.carve_models.lm import HybridLM

    model_cfg = dataclasses.replace(config.model, vocab_size=vocab_size)
    return HybridLM(model_cfg).to(device), model_cfg


def static_costs(model_cfg, seq_len: int) -> dict[str, float]:
    """Cost objectives known before training (analytic, from the model config as built), and
    the vocabulary the task gave the model (``model.vocab_size`` of the config is replaced)."""
    from carvelab.carve_models import costs

    return {
        "params": float(costs.param_count(model_cfg)),
        "flops_per_token": float(costs.flops_per_token(model_cfg, seq_len)),
        "state_bytes": float(costs.state_bytes(model_cfg)),
        "vocab_size": float(model_cfg.vocab_size),
    }


def kernel_backend(model_cfg, device: torch.device) -> str:
    """The recurrence implementation the trial's layers run (``dispatch.resolve_backend``).
    A content gate on the Triton kernels adds how it runs, which changes both its speed
    and its memory: ``+fused_content`` on the fused kernels (``kernels/triton_content.py``),
    ``+cuda_graphs`` where its per-chunk loop is replayed from CUDA graphs
    (``kernels/cuda_graph.py``), nothing where the loop runs eagerly; ``+fused_conv`` where the
    short convolutions run on their Triton kernels (``CARVELAB_FUSED_CONV=1``), ``+fused_norm``
    where the norms do (``CARVELAB_FUSED_NORM=1``), ``+joint_proj`` where the input projections
    run joint (``CARVELAB_JOINT_PROJ=1``), ``+fused_gates`` where the decay gates run fused
    (``CARVELAB_FUSED_GATES=1``), ``+fused_ce`` where the loss does (``CARVELAB_FUSED_CE=1``), ``+cast_once`` where the
    projection weights are cast at once (``CARVELAB_CAST_ONCE=1``). A model without a recurrent layer is ``none``, with the tags
    of the pieces it still has (norms, MLPs) where they follow its backend onto Triton."""
    recurrent = "recurrent" in model_cfg.layer_kinds() and model_cfg.sequence_mixing
    impl = resolve_backend(model_cfg.backend, device, model_cfg.erase_axis, model_cfg.chunk_size) if recurrent else "none"
    if impl.startswith("triton") and model_cfg.content_gate:
        kernel = impl.removeprefix("triton_")
        if content_fuses(model_cfg.content_target, kernel, model_cfg.erase_axis, model_cfg.chunk_size):
            impl += "+fused_content"
        elif replays_on(device):
            impl += "+cuda_graphs"
    if on_triton(model_cfg.recurrence, device):
        impl += "".join(p.tag for p in PIECES.values() if p.enabled() and (recurrent or not p.mixer_only))
    return impl


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; onto a GPU through pinned memory, without waiting for the copy."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class LossWatch:
    """The training loss without a device synchronisation per step.

    ``add(step, loss)`` keeps the loss tensor and, on the device, the first step whose loss
    was not finite; ``check()`` reads both (one synchronisation) and returns that step, or
    None. On the CPU every step is checked as it comes (reading costs nothing there)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.last: Optional[torch.Tensor] = None
        self._first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def add(self, step: int, loss: torch.Tensor) -> None:
        self.last = loss
        bad = ~torch.isfinite(loss)
        self._first_bad = torch.where(bad & (self._first_bad < 0), step, self._first_bad)

    def check(self) -> Optional[int]:
        first = int(self._first_bad)
        return None if first < 0 else first

    @property
    def eager(self) -> bool:
        return self.device.type != "cuda"

    def value(self) -> float:
        return float(self.last) if self.last is not None else float("nan")


def kernel_precision(model_cfg, device: torch.device) -> str:
    """``model.precision`` as the trial's recurrent layers run it (``dispatch.resolve_precision``):
    ``auto`` becomes fast on the Triton kernels and exact on the torch path."""
    if "recurrent" not in model_cfg.layer_kinds() or not model_cfg.sequence_mixing:
        return "none"
    impl = resolve_backend(model_cfg.backend, device, model_cfg.erase_axis, model_cfg.chunk_size)
    return resolve_precision(model_cfg.precision, impl)


class _Run:
    """Mutable state of one training loop (kept apart so run_trial reads top to bottom)."""

    def __init__(self, config: TrialConfig, reporter: Reporter, task_factory: Callable):
        self.config, self.reporter = config, reporter
        self.train = config.train
        self.device = pick_device(self.train.device)
        # what an earlier trial of this process left on the GPU is freed, and not counted as ours
        self.memory_before_mb = release_device_memory(self.device)
        self.task = task_factory(config.task)
        seed_everything(self.train.seed)
        # torch imports torch._dynamo when a process builds its first optimizer (seconds, once per
        # process). Imported here, before the model is built, so that first_step_s counts the
        # kernels' compile or cache load and the step itself, not that import.
        import torch._dynamo  # noqa: F401
        self.model, self.model_cfg = build_model(config, self.task.vocab_size, self.device)
        self.built_at = time.perf_counter()
        self.first_step_s = float("nan")  # model built -> first step done (kernel compile/autotune)
        graphed = self.device.type == "cuda" and self.train.cuda_graph
        self.optimizer = make_optimizer(self.model, self.train, capturable=graphed)
        self.graph_step = GraphedStep(self.model, self.optimizer, self.train.grad_clip,
                                      self._autocast(cache=False), self.train.ce_chunk) if graphed else None
        self.meter = Meter(self.device, skip=self.train.compile_steps, baseline_mb=self.memory_before_mb)
        self.history: list[tuple[int, dict]] = []
        self.step = 0
        self.config_dict = dataclasses.asdict(config)
        self.digest = checkpoint.config_digest(self.config_dict)
        self.costs = static_costs(self.model_cfg, config.task.seq_len)
        if self.train.eval_at_init:  # built from the seed, before any restore: always the untrained model
            init = evaluate(self.model, self.task.val_batches(self.train.batch_size, self.train.eval_batches),
                            self.device)
            self.costs.update({"init_val_loss": init["val_loss"], "init_val_accuracy": init["val_accuracy"]})
        self.backend = kernel_backend(self.model_cfg, self.device)
        self.precision = kernel_precision(self.model_cfg, self.device)
        self.train_seconds_before = 0.0
        self.slot: Optional[DeviceSlot] = None
        self.window: Optional[TimedWindow] = None

    def close(self) -> None:
        """Drop the model, the optimiser and the captured step (its graph and static buffers):
        the device memory they hold is then free for ``release_device_memory``."""
        self.graph_step = self.model = self.optimizer = None

    def open_slot(self) -> None:
        """The device's timing slot, and the window: ``train.timing_steps`` steps once the step is
        warm (after the compile steps and, on a GPU, the CUDA graph's capture), clipped to the run."""
        self.slot = DeviceSlot(self.device)
        start = self.train.compile_steps + (WARMUP + 1 if self.graph_step is not None else 0)
        start = min(start, self.train.steps - 1)
        length = min(self.train.timing_steps, self.train.steps - start)
        self.window = TimedWindow(self.slot, start, length if self.step <= start else 0)

    # ------------------------------------------------------------ checkpoints
    def restore(self) -> Optional[TrialResult]:
        payload = checkpoint.load(self.train.checkpoint_dir, self.digest)
        if payload is None:
            return None
        if payload.get("result") is not None:
            return TrialResult(**payload["result"])
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        for group in self.optimizer.param_groups:  # a capturable optimiser's rate lives on the device
            if isinstance(group["lr"], torch.Tensor):
                group["lr"] = group["lr"].to(self.device)
        self.step, self.history = payload["step"], payload["history"]
        self.meter.load_state(payload["meter"])
        self.train_seconds_before = payload["wall_s"]
        logger.info("resumed trial from %s at step %d", self.train.checkpoint_dir, self.step)
        return None

    def save(self, wall_s: float, result: Optional[TrialResult] = None) -> None:
        if not self.train.checkpoint_dir:
            return
        checkpoint.save(self.train.checkpoint_dir, {
            "digest": self.digest, "step": self.step, "history": self.history,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "meter": self.meter.state(), "wall_s": wall_s,
            "result": None if result is None else dataclasses.asdict(result),
        })

    # ------------------------------------------------------------ loop pieces
    def train_step(self) -> torch.Tensor:
        """One optimiser step; returns the loss as a 0-d tensor on the device. Nothing here
        waits for the device (no ``.item()``, pinned asynchronous copies of the batch)."""
        inputs, targets = self.task.train_batch(self.step, self.train.batch_size)
        inputs, targets = (to_device(t, self.device) for t in (inputs, targets))
        set_lr(self.optimizer, lr_at(self.step, self.train))
        if self.window.opens_at(self.step):
            self.meter.flush()  # the window (and its wait for the slot) is not in the contended figure
        self.window.before_step(self.step)
        timed = self.window.active
        if not timed:
            self.meter.start(self.step)
            self.meter.waited(self.slot.hold_shared())  # a neighbour's timing window is not our speed
        if self.graph_step is not None:
            loss = self.graph_step(inputs, targets)
        else:
            loss = optimizer_step(self.model, self.optimizer, inputs, targets, self.train.grad_clip, self._autocast(),
                                  self.train.ce_chunk)
        if timed:  # the isolated window's steps are not in the contended figure
            self.window.after_step(self.step, inputs.numel())
        else:
            self.meter.stop(self.step, inputs.numel())
        return loss

    def synced(self) -> None:
        """The device was just synchronised: a shared training block may end here."""
        if not self.window.active:
            self.slot.release_shared()

    def _autocast(self, cache: bool = True):
        """bf16 autocast on a GPU when train.dtype asks for it; ``cache=False`` for a captured
        step (autocast's cache of cast weights must not outlive one step in a graph)."""
        if self.device.type == "cuda" and self.train.dtype == "bfloat16":
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
        return torch.autocast(self.device.type, enabled=False)

    def evaluate(self, train_loss: float, wall_s: float) -> dict[str, float]:
        self.meter.flush()
        self.window.pause()
        batches = self.task.val_batches(self.train.batch_size, self.train.eval_batches)
        metrics = evaluate(self.model, batches, self.device)
        self.window.resume()
        metrics.update(self.costs)
        metrics.update({
            "train_loss": train_loss,
            # the steps outside the timing window, with whatever shares the device (absent if none)
            **({"tokens_per_s_contended": self.meter.tokens_per_s} if math.isfinite(self.meter.tokens_per_s) else {}),
            "peak_mem_mb": self.meter.peak_memory_mb(), "wall_s": wall_s, "step": float(self.step),
            # 1: the GPU allocator's peak during this trial, less what it found allocated; 0: the
            # process's resident-set high-water mark, which earlier trials of the process may have set
            "peak_mem_per_trial": 1.0 if self.device.type == "cuda" else 0.0,
            # tokens_per_s, step_ms: in isolation, once the window has run (a trial resumed past
            # its window keeps the figures it measured before the interruption)
            **(self.window.metrics() or self._earlier_window()),
        })
        if math.isfinite(self.first_step_s):
            metrics["first_step_s"] = self.first_step_s
        self.history.append((self.step, metrics))
        return metrics

    def completed(self, reason: Optional[str], metrics: dict) -> TrialResult:
        """The completed trial, its final metrics with the one evaluation on the test split."""
        batches = self.task.test_batches(self.train.batch_size, 0)
        metrics = {**metrics, **evaluate(self.model, batches, self.device, split="test")}
        return self.result(COMPLETED, reason, metrics)

    def _earlier_window(self) -> dict[str, float]:
        last = self.history[-1][1] if self.history else {}
        return {k: last[k] for k in ("tokens_per_s", "step_ms") if k in last}

    def result(self, status: str, reason: Optional[str], metrics: dict) -> TrialResult:
        return TrialResult(status=status, reason=reason, steps=self.step, metrics=metrics,
                           history=list(self.history), backend=self.backend, precision=self.precision,
                           step_mode="cuda_graph" if self.graph_step is not None else "eager",
                           config=self.config_dict, timing=self.window.record() if self.window else {})


def run_trial(config: TrialConfig, reporter: Optional[Reporter] = None, *,
              task_factory: Optional[Callable] = None, on_step: Optional[Callable[[int], None]] = None) -> TrialResult:
    """Train and evaluate one point of the design space; see the module docstring.

    ``task_factory`` builds the task from ``config.task`` (default: ``trials.tasks.build_task``);
    ``on_step(step)`` is called after every training step (progress bars).
    """
    if task_factory is None:
        from carvelab.trials.tasks import build_task as task_factory
    run = _Run(config, reporter or NullReporter(), task_factory)
    finished = run.restore()
    if finished is not None:
        return finished
    run.open_slot()
    try:
        return _train(run, on_step)
    finally:
        run.slot.close()
        run.close()
        release_device_memory(run.device)  # the trial's model, graphs and pools go with it


def _train(run: _Run, on_step: Optional[Callable[[int], None]]) -> TrialResult:
    start = time.perf_counter() - run.train_seconds_before
    metrics: dict[str, float] = dict(run.history[-1][1]) if run.history else {}
    train = run.train
    budget_from = None
    watch = LossWatch(run.device)
    while run.step < train.steps:
        watch.add(run.step + 1, run.train_step())
        run.step += 1
        if budget_from is None:
            # This process's first step compiles/autotunes kernels (or loads them from the
            # node's cache). train.max_seconds excludes it, so how long a trial trains does
            # not depend on whether another trial warmed the cache first. Waiting for it
            # here is the one synchronisation of the first step.
            watch.check()
            run.synced()
            run.first_step_s = time.perf_counter() - run.built_at
            budget_from = time.perf_counter() - run.train_seconds_before
        now = time.perf_counter()
        if on_step is not None:
            on_step(run.step)
        wall = now - start
        out_of_time = train.max_seconds is not None and now - budget_from >= train.max_seconds
        at_eval = run.step % train.eval_every == 0 or run.step == train.steps or out_of_time
        checked = at_eval or watch.eager or run.step % DIVERGENCE_CHECK_EVERY == 0
        bad_step = watch.check() if checked else None
        if checked:
            run.synced()
        if bad_step is not None:
            run.step = bad_step
            metrics = dict(metrics, train_loss=watch.value(), wall_s=wall, step=float(bad_step), **run.costs)
            logger.warning("trial diverged at step %d (loss not finite)", bad_step)
            return run.result(FAILED, "diverged", metrics)
        if at_eval:
            metrics = run.evaluate(watch.value(), wall)
            if run.reporter.report(run.step, metrics) == STOP:
                return run.result(PRUNED, "pruned", metrics)
        if train.checkpoint_every and run.step % train.checkpoint_every == 0:
            run.window.pause()
            run.save(time.perf_counter() - start)
            run.window.resume()
        if out_of_time:
            result = run.completed("time_budget", metrics)
            run.save(time.perf_counter() - start, result)
            return result
    result = run.completed(None, metrics)
    run.save(time.perf_counter() - start, result)
    return result
