"""The task interface every trial trains and evaluates on.

A task hands out token batches ``(inputs, targets)``, both ``LongTensor [B, T]``, where
``targets`` holds ``-100`` (PyTorch's ``ignore_index``) at positions that are not scored.
Batches are a pure function of ``(task.data_seed, step, batch_size)``, so a trial resumed
from a checkpoint at step ``s`` sees exactly the batches an uninterrupted one would.
Validation data comes from a seed stream disjoint from training and is fixed per config;
so does the test data, a third split that a trial evaluates once, at its end. Sweeps select
(tune values, the front's points) on validation and report on test, so the figures a
study reports are not inflated by the selection.
"""
from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Iterator, Optional

import numpy as np
import torch

IGNORE_INDEX = -100
QUALITY_METRICS = ("accuracy", "loss")

Batch = tuple[torch.LongTensor, torch.LongTensor]
# What an evaluation reports for every task (``trials.training.evaluate``).
EVAL_METRICS = ("val_loss", "val_accuracy", "val_ppl")
# What the final evaluation on the test split reports (``trials.trial``), once per trial.
TEST_METRICS = ("test_loss", "test_accuracy", "test_ppl")


@dataclass
class TaskConfig:
    """Keys every task takes; each task's own config subclasses this and adds its keys.

    A sweep or trial file's ``task:`` mapping is typed by the config class of the task its
    ``name`` names, so a key another task uses is an error, not silently ignored."""

    name: str = "mqar"
    vocab_size: int = 128            # the token vocabulary (lm: a floor for a .bin's, unused for text)
    seq_len: int = 64
    val_examples: int = 500          # validation examples (lm: windows of seq_len)
    test_examples: int = 500         # test examples, evaluated once at the end of a trial
    data_seed: int = 0               # seeds generation; validation uses a disjoint seed stream
    cache_dir: Optional[str] = None  # None = $CARVELAB_CACHE or ~/.cache/carvelab

    def __post_init__(self) -> None:
        for key in ("vocab_size", "seq_len", "val_examples", "test_examples"):
            positive_field(self, key)
        check_data_seed(self.data_seed)


def positive_field(cfg: TaskConfig, key: str) -> None:
    value = getattr(cfg, key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"task.{key}={value!r} must be a positive integer")


class Task(ABC):
    """A source of training batches, a fixed validation set and a fixed test set.

    Attributes:
        name: the task's name (``TaskConfig.name``).
        Config: the task's config dataclass (a ``TaskConfig`` subclass).
        metrics: the metrics its evaluation reports.
        vocab_size: the model vocabulary the task needs (every token id is below it).
        seq_len: T, the length of every sequence.
        quality_metric: ``"accuracy"`` (higher is better, over scored positions) or
            ``"loss"`` (mean cross-entropy over scored positions, lower is better).
    """

    name: str
    vocab_size: int
    seq_len: int
    quality_metric: str
    Config: ClassVar[type] = TaskConfig   # the task's own config class
    metrics: ClassVar[tuple] = EVAL_METRICS

    @abstractmethod
    def train_batch(self, step: int, batch_size: int) -> Batch:
        """Training batch number ``step``: inputs [B, T], targets [B, T] (``-100`` = unscored).

        Deterministic in ``(data_seed, step, batch_size)``.
        """

    @abstractmethod
    def val_batches(self, batch_size: int, max_batches: int = 0) -> Iterator[Batch]:
        """The fixed validation set in batches of ``batch_size`` (the last may be smaller).

        ``max_batches = 0`` yields the whole set, otherwise at most that many batches.
        """

    @abstractmethod
    def test_batches(self, batch_size: int, max_batches: int = 0) -> Iterator[Batch]:
        """The fixed test set (disjoint from training and validation), like ``val_batches``.

        Read once per trial, after training; nothing that selects (tune values, pruning,
        the sampler) sees it.
        """


def check_batch_args(step: int, batch_size: int) -> None:
    """Raise ValueError unless ``step >= 0`` and ``batch_size >= 1`` are integers."""
    if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step={step!r} must be a non-negative integer")
    check_positive("batch_size", batch_size)


def check_positive(name: str, value: int) -> None:
    """Raise ValueError unless ``value`` is an integer >= 1."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def check_data_seed(data_seed: int) -> None:
    """NumPy seed sequences take non-negative integers only."""
    if not isinstance(data_seed, (int, np.integer)) or isinstance(data_seed, bool) or data_seed < 0:
        raise ValueError(f"task.data_seed={data_seed!r} must be a non-negative integer")


def stream_rng(data_seed: int, stream: str, *counters: int) -> np.random.Generator:
    """A NumPy generator for one named stream (``"train"``, ``"val"``, ...) of a data seed.

    Distinct stream names (hashed with CRC-32) and counters give independent streams, so
    training and validation never share random draws, and batch ``step`` of a run can be
    regenerated on its own.
    """
    entropy = [int(data_seed), zlib.crc32(stream.encode()), *(int(c) for c in counters)]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def to_long(array: np.ndarray) -> torch.LongTensor:
    """A NumPy integer array as a contiguous int64 tensor (a copy, never a view)."""
    return torch.from_numpy(np.array(array, dtype=np.int64, copy=True))


def batch_ranges(n: int, batch_size: int, max_batches: int) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` index ranges over ``n`` items; at most ``max_batches`` (0 = all)."""
    check_positive("batch_size", batch_size)
    if not isinstance(max_batches, (int, np.integer)) or isinstance(max_batches, bool) or max_batches < 0:
        raise ValueError(f"max_batches={max_batches!r} must be a non-negative integer (0 = all)")
    for i, start in enumerate(range(0, n, batch_size)):
        if max_batches and i >= max_batches:
            return
        yield start, min(start + batch_size, n)
