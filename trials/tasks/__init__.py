"""The tasks a trial trains on: synthetic recall (``mqar``, ``update_mqar``), state tracking
with length generalisation (``parity``, ``modular_arithmetic``, ``s5``), MAD's six synthetic
tasks (``mad_*``, settings in ``mad.MAD_SETTINGS``), RULER-style ``needle`` retrieval and ``lm``.

A task is one module: a ``Task`` subclass with its own config dataclass (``Config``, a
``TaskConfig`` subclass: the keys of a ``task:`` mapping) and the metrics it reports,
plus one entry in ``TASKS`` below. ``build_task(cfg)`` is the one entry point; every task
implements ``train_batch(step, batch_size)``, ``val_batches(batch_size, max_batches)``,
``test_batches(batch_size, max_batches)`` (a third split, read once per trial, at its end),
``vocab_size``, ``seq_len`` and ``quality_metric``. Generated data is cached on disk under
``task.cache_dir``, ``$CARVELAB_CACHE`` or ``~/.cache/carvelab``.
"""
from __future__ import annotations

from carvelab.trials.tasks.base import IGNORE_INDEX, QUALITY_METRICS, Task, TaskConfig
from carvelab.trials.tasks.lm import LMConfig, LMTask
from carvelab.trials.tasks.mad_compression import CompressionTask
from carvelab.trials.tasks.mad_fuzzy_recall import FuzzyRecallTask
from carvelab.trials.tasks.mad_in_context_recall import InContextRecallTask
from carvelab.trials.tasks.mad_memorization import MemorizationTask
from carvelab.trials.tasks.mad_noisy_recall import NoisyRecallTask
from carvelab.trials.tasks.mad_selective_copying import SelectiveCopyingTask
from carvelab.trials.tasks.modular_arithmetic import ModularArithmeticConfig, ModularArithmeticTask
from carvelab.trials.tasks.mqar import MQARConfig, MQARTask
from carvelab.trials.tasks.needle import NeedleTask
from carvelab.trials.tasks.parity import ParityConfig, ParityTask
from carvelab.trials.tasks.s5 import S5Config, S5Task
from carvelab.trials.tasks.update_mqar import UpdateMQARConfig, UpdateMQARTask

# The one list of tasks: name -> Task class (its ``Config`` types the ``task:`` mapping).
TASKS: dict[str, type[Task]] = {
    "mqar": MQARTask,
    "update_mqar": UpdateMQARTask,
    "parity": ParityTask,
    "modular_arithmetic": ModularArithmeticTask,
    "s5": S5Task,
    "mad_in_context_recall": InContextRecallTask,
    "mad_fuzzy_recall": FuzzyRecallTask,
    "mad_noisy_recall": NoisyRecallTask,
    "mad_selective_copying": SelectiveCopyingTask,
    "mad_compression": CompressionTask,
    "mad_memorization": MemorizationTask,
    "needle": NeedleTask,
    "lm": LMTask,
}
DEFAULT_TASK = "mqar"

__all__ = ["DEFAULT_TASK", "IGNORE_INDEX", "QUALITY_METRICS", "TASKS", "LMConfig", "LMTask", "MQARConfig",
           "MQARTask", "ModularArithmeticConfig", "ModularArithmeticTask", "ParityConfig", "ParityTask", "S5Config",
           "S5Task", "Task", "TaskConfig", "UpdateMQARConfig", "UpdateMQARTask", "build_task", "register_task",
           "task_class"]


def register_task(cls: type[Task]) -> type[Task]:
    """Add a task defined outside this package (class decorator): ``cls.name`` in a
    ``task:`` mapping then builds ``cls`` with a ``cls.Config``. On a cluster the module
    defining it must be importable on every node; the scheduler imports it in each worker."""
    if not (isinstance(cls, type) and issubclass(cls, Task) and isinstance(getattr(cls, "name", None), str)):
        raise TypeError(f"{cls!r} must be a Task subclass with a string `name`")
    if not (isinstance(cls.Config, type) and issubclass(cls.Config, TaskConfig)):
        raise TypeError(f"{cls.__name__}.Config must subclass TaskConfig")
    if TASKS.get(cls.name, cls) is not cls:
        raise ValueError(f"a task named {cls.name!r} is already registered ({TASKS[cls.name]!r})")
    TASKS[cls.name] = cls
    return cls


def task_class(name: str) -> type[Task]:
    """The Task class ``name`` names; ValueError listing the allowed names otherwise."""
    if not isinstance(name, str) or name not in TASKS:
        raise ValueError(f"task.name={name!r} is not allowed; choose one of {sorted(TASKS)}")
    return TASKS[name]


def build_task(cfg: TaskConfig) -> Task:
    """The task ``cfg.name`` names, built (or read from the cache) for ``cfg``."""
    cls = task_class(cfg.name)
    if not isinstance(cfg, cls.Config):
        raise TypeError(f"task.name={cfg.name!r} needs a {cls.Config.__name__}, got a {type(cfg).__name__}")
    return cls(cfg)
