"""Tasks backed by a fixed, generated set of examples (MQAR and its variants).

The training set (``task.train_examples`` sequences), the validation set
(``task.val_examples``) and the test set (``task.test_examples``) are generated once from
the streams ``(data_seed, "train")``, ``(data_seed, "val")`` and ``(data_seed, "test")``
and cached on disk. Validation sequences that also occur in the training set, and test
sequences that occur in either, are discarded and redrawn, so the three sets are disjoint.

A task may give a split its own length (``split_len``; length-generalisation tasks test
on longer sequences than they train on) and its own generator (``generate_split``).

Training batches walk the training set in epochs: example ``i = step * B + j`` of the
run is row ``perm_e[i mod N]`` of the set, with ``e = i // N`` and ``perm_e`` a
permutation drawn from ``(data_seed, "order", e)``. Every example is seen once per
epoch, and batch ``step`` depends on nothing but ``(data_seed, step, B)``.
"""
from __future__ import annotations

import logging
from abc import abstractmethod
from typing import Iterator

import numpy as np

from carvelab.trials.tasks import _cache
from carvelab.trials.tasks.base import (
    TaskConfig,
    Batch,
    Task,
    batch_ranges,
    check_batch_args,
    check_data_seed,
    stream_rng,
    to_long,
)

logger = logging.getLogger(__name__)

# Bump when the generated data of any example-set task changes for the same config.
FORMAT_VERSION = 2
# Examples generated per call of ``generate`` (bounds the generator's scratch memory).
GENERATE_CHUNK = 2048
# Rounds of redrawing validation (test) examples that collide with earlier splits.
MAX_REDRAW_ROUNDS = 20
# Epoch permutations kept in memory: a batch spans few epochs and steps arrive in order.
KEPT_ORDERS = 4
_ARRAYS = ("train_inputs", "train_targets", "val_inputs", "val_targets", "test_inputs", "test_targets")


class ExampleSetTask(Task):
    """A task whose data is a fixed set of generated ``(inputs, targets)`` sequences.

    Subclasses implement ``validate`` (config checks), ``data_fields`` (the config
    fields the data depends on) and ``generate(rng, n)`` -> inputs, targets ``[n, T]``.
    """

    quality_metric = "accuracy"

    def __init__(self, cfg: TaskConfig):
        check_data_seed(cfg.data_seed)
        self.validate(cfg)
        self.cfg = cfg
        self.vocab_size = cfg.vocab_size
        self.seq_len = cfg.seq_len
        payload = {"format": FORMAT_VERSION, "data_seed": cfg.data_seed,
                   "train_examples": cfg.train_examples, "val_examples": cfg.val_examples,
                   "test_examples": cfg.test_examples,
                   **self.data_fields(cfg)}
        self.cache_path = _cache.cache_file(cfg.cache_dir, self.name, payload)
        data = _cache.load_or_build(self.cache_path, _ARRAYS, self._build)
        self._train = (data["train_inputs"], data["train_targets"])
        self._val = (data["val_inputs"], data["val_targets"])
        self._test = (data["test_inputs"], data["test_targets"])
        self._check_loaded()
        self._orders: dict[int, np.ndarray] = {}

    # ------------------------------------------------------------------ subclass hooks
    @classmethod
    @abstractmethod
    def validate(cls, cfg: TaskConfig) -> None:
        """Raise ValueError naming ``task.<field>`` if ``cfg`` cannot be generated."""

    @abstractmethod
    def data_fields(self, cfg: TaskConfig) -> dict:
        """The config fields (besides seed and set sizes) that determine the data."""

    @abstractmethod
    def generate(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` examples: inputs, targets, both int ``[n, T]`` (targets -100 = unscored)."""

    def generate_split(self, rng: np.random.Generator, n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``n`` examples of ``split`` (``train``, ``val``, ``test``), ``[n, split_len(split)]``;
        by default every split is drawn by ``generate``."""
        return self.generate(rng, n)

    def split_len(self, split: str) -> int:
        """The sequence length of ``split``'s examples (default: ``seq_len`` for all three)."""
        return self.seq_len

    # ------------------------------------------------------------------ the interface
    @property
    def num_train(self) -> int:
        return len(self._train[0])

    @property
    def num_val(self) -> int:
        return len(self._val[0])

    def train_batch(self, step: int, batch_size: int) -> Batch:
        """Batch ``step`` of the epoch-wise shuffled training set (see the module docstring)."""
        check_batch_args(step, batch_size)
        run_index = step * batch_size + np.arange(batch_size, dtype=np.int64)
        epochs, offsets = np.divmod(run_index, self.num_train)
        rows = np.empty(batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            rows[here] = self._epoch_order(int(epoch))[offsets[here]]
        inputs, targets = self._train
        return to_long(inputs[rows]), to_long(targets[rows])

    def val_batches(self, batch_size: int, max_batches: int = 0) -> Iterator[Batch]:
        """The validation set in stored order."""
        return _batches(self._val, batch_size, max_batches)

    def test_batches(self, batch_size: int, max_batches: int = 0) -> Iterator[Batch]:
        """The test set in stored order."""
        return _batches(self._test, batch_size, max_batches)

    # ------------------------------------------------------------------ internals
    def _epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of the training rows used in ``epoch`` (a few kept in memory)."""
        order = self._orders.get(epoch)
        if order is None:
            if len(self._orders) >= KEPT_ORDERS:
                self._orders.pop(next(iter(self._orders)))
            order = stream_rng(self.cfg.data_seed, "order", epoch).permutation(self.num_train)
            self._orders[epoch] = order
        return order

    def _generate_many(self, rng: np.random.Generator, n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
        parts = [self.generate_split(rng, min(GENERATE_CHUNK, n - start), split)
                 for start in range(0, n, GENERATE_CHUNK)]
        return (np.concatenate([p[0] for p in parts]).astype(np.int32),
                np.concatenate([p[1] for p in parts]).astype(np.int32))

    def _build(self) -> _cache.Arrays:
        logger.info("generating %s data: %d train + %d validation + %d test examples of length %d",
                    self.name, self.cfg.train_examples, self.cfg.val_examples, self.cfg.test_examples,
                    self.seq_len)
        train_inputs, train_targets = self._generate_many(
            stream_rng(self.cfg.data_seed, "train"), self.cfg.train_examples, "train")
        seen = {row.tobytes() for row in train_inputs}
        val_inputs, val_targets = self._disjoint("val", self.cfg.val_examples, seen)
        seen.update(row.tobytes() for row in val_inputs)
        test_inputs, test_targets = self._disjoint("test", self.cfg.test_examples, seen)
        return {"train_inputs": train_inputs, "train_targets": train_targets,
                "val_inputs": val_inputs, "val_targets": val_targets,
                "test_inputs": test_inputs, "test_targets": test_targets}

    def _disjoint(self, split: str, count: int, seen: set) -> tuple[np.ndarray, np.ndarray]:
        """``count`` examples from the ``split`` stream, redrawing any whose inputs are in ``seen``
        (the earlier splits' sequences)."""
        rng = stream_rng(self.cfg.data_seed, split)
        kept_inputs, kept_targets, need = [], [], count
        for _ in range(MAX_REDRAW_ROUNDS):
            inputs, targets = self._generate_many(rng, need, split)
            fresh = np.array([row.tobytes() not in seen for row in inputs], dtype=bool)
            kept_inputs.append(inputs[fresh])
            kept_targets.append(targets[fresh])
            need -= int(fresh.sum())
            if need == 0:
                return np.concatenate(kept_inputs), np.concatenate(kept_targets)
        raise ValueError(
            f"task.{split}_examples={count}: could not draw that many {split} sequences absent "
            f"from the {len(seen)} of the earlier splits; the space of sequences is too small: "
            "increase task.vocab_size or task.seq_len, or lower task.train_examples / "
            "task.val_examples / task.test_examples"
        )

    def _check_loaded(self) -> None:
        expected = {"train": self.cfg.train_examples, "val": self.cfg.val_examples,
                    "test": self.cfg.test_examples}
        for split, (inputs, targets) in (("train", self._train), ("val", self._val), ("test", self._test)):
            shape = (expected[split], self.split_len(split))
            if inputs.shape != shape or targets.shape != shape:
                raise ValueError(f"cached {split} data in {self.cache_path} has shape "
                                 f"{inputs.shape}/{targets.shape}, expected {shape}; delete the file")


def _batches(split: tuple[np.ndarray, np.ndarray], batch_size: int, max_batches: int) -> Iterator[Batch]:
    inputs, targets = split
    for start, stop in batch_ranges(len(inputs), batch_size, max_batches):
        yield to_long(inputs[start:stop]), to_long(targets[start:stop])
