"""Ray execution of trials; the only module that imports Ray.

- ``start_ray``: joins ``address`` or starts a local Ray bound to 127.0.0.1.
- the pruning broker (``trials/sweep/broker.py``) runs as a Ray actor on the driver's node: it
  receives workers' intermediate metrics and answers CONTINUE / STOP from the sweep's
  pruner; the driver drains the reports to log them. Restarted if it dies, from its journal.
- ``RayExecutor``: submits trials as Ray tasks with the declared resources (fractional
  GPUs stay fractional), waits for them, cancels the ones past their timeout.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

from carvelab.trials.sweep.broker import PruningBroker, import_extensions

logger = logging.getLogger(__name__)


def start_ray(address: Optional[str] = None, num_cpus: Optional[int] = None,
              num_gpus: Optional[float] = None) -> bool:
    """Connect to ``address`` or start a local Ray on 127.0.0.1. Returns True if we started it."""
    # Without this every listener of a local Ray binds to the machine's public interface.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return False
    env = worker_runtime_env()
    if address:
        ray.init(address=address, runtime_env=env, logging_level=logging.WARNING, log_to_driver=False)
        return False
    # address="local": always a new local instance, never a cluster some other process started here.
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, runtime_env=env,
             logging_level=logging.WARNING, log_to_driver=False)
    return True


# Settings of the driver's environment that every worker, on any node, must see: the
# Triton cache (when unset, each worker picks its node's own, see triton_cache_dir) and
# CARVELAB_AUTOTUNE=0 (one configuration per kernel: compiles in seconds, runs untuned) and
# CARVELAB_FUSED_CONTENT=0 (the content gate runs as a per-chunk loop, not on its fused
# kernels) and CARVELAB_CUDA_GRAPHS=0 (that loop runs eagerly, not from CUDA graphs) and
# CARVELAB_FUSED_CONV=0 (the short convolutions on torch ops, not their Triton kernels) and
# CARVELAB_FUSED_NORM=0 (the norms likewise) and CARVELAB_JOINT_PROJ=1 (one matmul for the
# projections that read the same input) and CARVELAB_FUSED_GATES=1 (the decay gates on their
# Triton kernels) and CARVELAB_FUSED_CE=1 (the loss likewise) and CARVELAB_CAST_ONCE=1 (the
# projection weights cast at once) and CARVELAB_SLOT_DIR (where the timing slots live,
# trials/timing_slot.py).
WORKER_ENV_VARS = ("TRITON_CACHE_DIR", "CARVELAB_AUTOTUNE", "CARVELAB_FUSED_CONTENT", "CARVELAB_CUDA_GRAPHS",
                   "CARVELAB_FUSED_CONV", "CARVELAB_FUSED_NORM", "CARVELAB_JOINT_PROJ",
                   "CARVELAB_FUSED_GATES", "CARVELAB_FUSED_CE", "CARVELAB_CAST_ONCE",
                   "CARVELAB_SLOT_DIR")


def worker_runtime_env() -> dict:
    """Ray ``runtime_env`` passing on the WORKER_ENV_VARS that are set here."""
    env_vars = {k: os.environ[k] for k in WORKER_ENV_VARS if os.environ.get(k)}
    return {"env_vars": env_vars} if env_vars else {}


def triton_cache_dir() -> str:
    """A persistent per-node Triton cache, so a second trial of the same shapes compiles
    nothing: ``TRITON_CACHE_DIR`` when set, else ``~/.cache/carvelab/triton`` expanded on
    the node that runs the trial (its user's home, not the driver's)."""
    return os.environ.get("TRITON_CACHE_DIR") or os.path.expanduser("~/.cache/carvelab/triton")


def extension_modules() -> list[str]:
    """Modules outside carvelab that registered tasks, pruners or gate forms here; every worker
    imports them before it builds anything, so their registrations exist there too."""
    from carvelab.carve_models.gates import GATE_FORMS
    from carvelab.trials import pruners, tasks

    found = {cls.__module__ for cls in tasks.TASKS.values()} | pruners.modules()
    found |= {cls.__module__ for forms in GATE_FORMS.values() for cls in forms.values()}
    return sorted(m for m in found if not m.startswith("carvelab.") and m != "__main__")


def trial_needs(res) -> dict[str, tuple[float, str]]:
    """What one trial asks Ray for: Ray's resource name -> (amount, the sweep file's key)."""
    needs = {"CPU": (res.cpus_per_trial, "resources.cpus_per_trial"),
             "GPU": (res.gpus_per_trial, "resources.gpus_per_trial")}
    if res.memory_mb:
        needs["memory"] = (res.memory_mb * 2**20, "resources.memory_mb")
    needs.update({k: (float(v), f"resources.custom.{k}") for k, v in res.custom.items()})
    return {k: v for k, v in needs.items() if v[0]}


def unschedulable(res, nodes: list[dict]) -> Optional[str]:
    """Why no node of ``nodes`` (Ray resource mappings) can ever run one trial, or None."""
    needs = trial_needs(res)
    if any(all(node.get(k, 0.0) >= amount for k, (amount, _) in needs.items()) for node in nodes):
        return None
    if not nodes:
        return "the Ray cluster has no live node"

    def shown(key: str, value: float) -> str:
        return f"{value / 2**20:.0f} MB memory" if key == "memory" else f"{value:g} {key}"

    for key, (amount, name) in needs.items():
        largest = max(node.get(key, 0.0) for node in nodes)
        if largest < amount:
            asked = amount / 2**20 if key == "memory" else amount
            return (f"{name}={asked:g}: no node of the Ray cluster has that much; the largest node has "
                    f"{shown(key, largest)}")
    asked = ", ".join(shown(k, a) for k, (a, _) in needs.items())
    best = max(nodes, key=lambda n: sum(n.get(k, 0.0) >= a for k, (a, _) in needs.items()))
    return (f"resources: no node of the Ray cluster has {asked} at once; e.g. a node has "
            + ", ".join(shown(k, best.get(k, 0.0)) for k in needs))


def live_nodes() -> list[dict]:
    """The Ray resources of every live node of the connected cluster."""
    import ray

    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


class _BrokerReporter:
    """The Reporter a worker hands to run_trial: forwards to the broker actor."""

    def __init__(self, broker, trial: int):
        self.broker, self.trial = broker, trial

    def report(self, step: int, metrics: dict) -> str:
        import ray

        return ray.get(self.broker.report.remote(self.trial, step, metrics))


def _run_remote(config_dict: dict, trial: int, broker, threads: int, extensions: tuple = ()) -> dict:
    import torch

    from carvelab.search_space.loading import load_trial_config
    from carvelab.trials.trial import run_trial

    import ray

    broker.started.remote(trial)  # the trial left Ray's queue: it has its resources
    torch.set_num_threads(max(1, threads))
    os.environ["TRITON_CACHE_DIR"] = triton_cache_dir()  # before any kernel compiles in this worker
    started = time.time()
    import_extensions(list(extensions))
    config = load_trial_config(config_dict)
    result = dataclasses.asdict(run_trial(config, _BrokerReporter(broker, trial)))
    # Where and when it ran: which node, which (fractions of) GPUs Ray gave it, wall-clock span.
    result.update(node=ray.get_runtime_context().get_node_id(), gpu_ids=[str(g) for g in ray.get_gpu_ids()],
                  started_at=started, finished_at=time.time(), triton_cache=os.environ["TRITON_CACHE_DIR"])
    return result


@dataclasses.dataclass
class Handle:
    trial: int
    ref: Any
    started: float


class RayExecutor:
    def __init__(self, resources, pruner_spec, objectives, seed: int = 0, journal: Optional[Path] = None):
        """``journal``: where the pruning broker journals its state (``trials/sweep/broker.py``); a
        journal left by an earlier driver run is removed first. None: no journal (a broker
        that dies is restarted empty)."""
        import ray

        self.ray = ray
        self.res = resources
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # The broker lives on the driver's node: losing a worker node never takes the
        # pruner (and with it the sweep) down; losing the driver's node ends the sweep anyway.
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self.extensions = tuple(extension_modules())
        if journal is not None:
            journal.parent.mkdir(parents=True, exist_ok=True)
            journal.unlink(missing_ok=True)
        # Restarted when it dies, the calls in flight retried (it replays its journal first).
        self.broker = ray.remote(PruningBroker).options(
            num_cpus=0, scheduling_strategy=here, max_restarts=-1, max_task_retries=-1,
        ).remote(pruner_spec, objectives, seed, self.extensions, str(journal) if journal else None)
        self.task = ray.remote(_run_remote)
        self.started: set[int] = set()   # trials whose worker began (the rest wait in Ray's queue)

    def submit(self, config_dict: dict, trial: int) -> Handle:
        opts = dict(num_cpus=self.res.cpus_per_trial, max_retries=self.res.max_retries,
                    retry_exceptions=False)
        if self.res.gpus_per_trial:
            opts["num_gpus"] = self.res.gpus_per_trial
        if self.res.memory_mb:
            opts["memory"] = int(self.res.memory_mb * 2**20)
        if self.res.custom:
            opts["resources"] = dict(self.res.custom)
        threads = int(self.res.cpus_per_trial)
        ref = self.task.options(**opts).remote(config_dict, trial, self.broker, threads, self.extensions)
        return Handle(trial, ref, time.monotonic())

    def wait(self, handles: list[Handle], timeout: float) -> list[tuple[Handle, Optional[dict], Optional[BaseException]]]:
        """Finished handles with (result, None) or (None, exception)."""
        if not handles:
            time.sleep(timeout)
            return []
        by_ref = {h.ref: h for h in handles}
        ready, _ = self.ray.wait(list(by_ref), num_returns=len(by_ref), timeout=timeout)
        out = []
        for ref in ready:
            try:
                out.append((by_ref[ref], self.ray.get(ref), None))
            except Exception as exc:  # the trial's own exception, wrapped by Ray
                out.append((by_ref[ref], None, exc))
        return out

    def cancel(self, handle: Handle) -> None:
        self.ray.cancel(handle.ref, force=True)

    def drain(self) -> list:
        """Workers' reports since the last drain; the trials that started are added to ``started``."""
        reports, started, restarted = self.ray.get(self.broker.drain.remote())
        if restarted:
            logger.warning("the pruning broker died and was restarted; its state was rebuilt from its journal")
        self.started.update(started)
        return reports

    def complete(self, trial: int, state: str, value: Optional[float]) -> None:
        self.broker.complete.remote(trial, state, value)

    def rebuild(self, finished: list) -> None:
        """``finished``: (trial, history, state, value) of every trial that ended (pruners.rebuild)."""
        self.ray.get(self.broker.rebuild.remote(finished))


def failure_reason(exc: BaseException) -> str:
    """Map an exception from ``ray.get`` to a failure reason tag."""
    import errno

    import ray.exceptions as rex

    if isinstance(exc, rex.TaskCancelledError):
        return "timeout"
    if isinstance(exc, (rex.WorkerCrashedError, rex.NodeDiedError, rex.ActorDiedError)):
        return "worker_died"
    if isinstance(exc, rex.OutOfMemoryError):
        return "oom"
    cause = getattr(exc, "cause", None) or exc
    name = type(cause).__name__
    if "OutOfMemory" in name or isinstance(cause, MemoryError):
        return "oom"
    # torch's CPU allocator raises a RuntimeError ("DefaultCPUAllocator: can't allocate memory"),
    # other backends "... out of memory"; an OSError may carry ENOMEM.
    text = str(cause).lower()
    if any(s in text for s in ("can't allocate memory", "cannot allocate memory", "out of memory")) \
            or getattr(cause, "errno", None) == errno.ENOMEM:
        return "oom"
    return "exception"
