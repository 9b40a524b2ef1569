"""Typed trial configuration: what one trial trains on, and how.

``TrialConfig = model (carve_models.ModelConfig) + task + train (TrainConfig)``; the task
part is an instance of the named task's own config class (``carvelab.trials.tasks``:
each task declares its keys there, next to its data).
These are plain dataclasses; YAML loading (OmegaConf struct mode) lives in
``carvelab.search_space.loading``. Validation errors name the key path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from carvelab.carve_models.config import ModelConfig

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16")


@dataclass
class TrainConfig:
    steps: int = 200
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1      # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_batches: int = 0           # validation batches per evaluation; 0 = the whole validation set
    seed: int = 0
    device: str = "auto"           # auto = cuda when available
    dtype: str = "float32"         # autocast dtype on GPU; CPU always trains in fp32
    checkpoint_dir: Optional[str] = None
    checkpoint_every: int = 0      # 0 = no periodic checkpoint
    compile_steps: int = 2         # first steps excluded from the throughput figure
    max_seconds: Optional[float] = None  # wall-clock limit of training, after the first step (compilation)
    cuda_graph: bool = True        # on a GPU, replay the whole step from a CUDA graph (trials/step_graph.py)
    timing_steps: int = 20         # steps timed with the device to itself (tokens_per_s, step_ms); 0 = none
    eval_at_init: bool = False     # also evaluate the untrained model on validation (init_val_loss, init_val_accuracy)
    ce_chunk: int = 0              # tokens per piece of the chunked cross-entropy (trials/lm_loss.py); 0 = whole logits

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"train.{name}={value!r} must be a positive integer")
        for name in ("warmup_steps", "eval_batches", "checkpoint_every", "compile_steps", "timing_steps", "ce_chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"train.{name}={value!r} must be a non-negative integer")
        for name in ("lr", "grad_clip"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) <= 0:
                raise ValueError(f"train.{name}={getattr(self, name)!r} must be a positive number")
        for name in ("cuda_graph", "eval_at_init"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"train.{name}={getattr(self, name)!r} must be true or false")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"train.min_lr_ratio={self.min_lr_ratio!r} must be in [0, 1]")
        if self.weight_decay < 0:
            raise ValueError(f"train.weight_decay={self.weight_decay!r} must be >= 0")
        if self.device not in DEVICES:
            raise ValueError(f"train.device={self.device!r} is not allowed; choose one of {list(DEVICES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"train.dtype={self.dtype!r} is not allowed; choose one of {list(DTYPES)}")


@dataclass
class TrialConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: Any = field(default_factory=lambda: default_task_config())  # a TaskConfig subclass instance
    train: TrainConfig = field(default_factory=TrainConfig)


def default_task_config():
    """The default task's config (the task registry lives with the tasks)."""
    from carvelab.trials.tasks import DEFAULT_TASK, task_class

    return task_class(DEFAULT_TASK).Config()
