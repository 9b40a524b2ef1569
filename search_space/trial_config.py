"""Typed trial configuration: what one trial trains on, and how.

``TrialConfig = model (carve_models.ModelConfig) + task (TaskConfig) + train (TrainConfig)``.
These are plain dataclasses; YAML loading (OmegaConf struct mode) lives in
``carvelab.search_space.loading``. Validation errors name the key path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from carvelab.carve_models.config import ModelConfig

TASKS = ("mqar", "update_mqar", "lm")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16")


@dataclass
class TaskConfig:
    """One task. Fields a task does not use are ignored by it (documented per field)."""

    name: str = "mqar"
    vocab_size: int = 128          # mqar/update_mqar: token vocabulary; lm: 256 for text, for a .bin a floor on the vocabulary derived from the data
    seq_len: int = 64
    num_kv_pairs: int = 8          # mqar/update_mqar
    power_a: float = 0.01          # mqar/update_mqar: power-law placement of queries (Zoology's alpha)
    num_updates: int = 4           # update_mqar: keys re-assigned to new values later in the sequence
    train_examples: int = 20000    # mqar/update_mqar: size of the training set
    val_examples: int = 500        # all: validation examples (lm: windows of seq_len)
    data_path: Optional[str] = None  # lm: None = bundled stdlib corpus, a .txt file, or a uint16 .bin
    data_seed: int = 0             # seeds generation; validation uses a disjoint seed stream
    cache_dir: Optional[str] = None  # None = $CARVELAB_CACHE or ~/.cache/carvelab

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise ValueError(f"task.name={self.name!r} is not allowed; choose one of {list(TASKS)}")
        for name in ("vocab_size", "seq_len", "num_kv_pairs", "train_examples", "val_examples"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"task.{name}={value!r} must be a positive integer")
        if not isinstance(self.data_seed, int) or isinstance(self.data_seed, bool) or self.data_seed < 0:
            raise ValueError(f"task.data_seed={self.data_seed!r} must be a non-negative integer")
        if not isinstance(self.num_updates, int) or self.num_updates < 0:
            raise ValueError(f"task.num_updates={self.num_updates!r} must be a non-negative integer")
        if not isinstance(self.power_a, (int, float)) or self.power_a <= 0:
            raise ValueError(f"task.power_a={self.power_a!r} must be a positive number")


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

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"train.{name}={value!r} must be a positive integer")
        for name in ("warmup_steps", "eval_batches", "checkpoint_every", "compile_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"train.{name}={value!r} must be a non-negative integer")
        for name in ("lr", "grad_clip"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) <= 0:
                raise ValueError(f"train.{name}={getattr(self, name)!r} must be a positive number")
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
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
