"""The tasks a trial trains on: synthetic recall (``mqar``, ``update_mqar``) and ``lm``.

``build_task(cfg)`` is the one entry point; every task implements ``Task``
(``train_batch(step, batch_size)``, ``val_batches(batch_size, max_batches)``,
``vocab_size``, ``seq_len``, ``quality_metric``). Generated data is cached on disk under
``task.cache_dir``, ``$CARVELAB_CACHE`` or ``~/.cache/carvelab``.
"""
from __future__ import annotations

from carvelab.search_space.trial_config import TaskConfig
from carvelab.trials.tasks.base import IGNORE_INDEX, QUALITY_METRICS, Task
from carvelab.trials.tasks.lm import LMTask
from carvelab.trials.tasks.mqar import MQARTask
from carvelab.trials.tasks.update_mqar import UpdateMQARTask

TASK_CLASSES: dict[str, type[Task]] = {
    "mqar": MQARTask,
    "update_mqar": UpdateMQARTask,
    "lm": LMTask,
}

__all__ = ["IGNORE_INDEX", "QUALITY_METRICS", "TASK_CLASSES", "LMTask", "MQARTask", "Task",
           "UpdateMQARTask", "build_task"]


def build_task(cfg: TaskConfig) -> Task:
    """The task ``cfg.name`` names, built (or read from the cache) for ``cfg``."""
    cls = TASK_CLASSES.get(cfg.name)
    if cls is None:
        raise ValueError(f"task.name={cfg.name!r} is not allowed; choose one of {sorted(TASK_CLASSES)}")
    return cls(cfg)
