"""Length-generalisation example sets: train on short sequences, test on longer ones.

The state-tracking tasks (``parity``, ``modular_arithmetic``, ``s5``) train and validate on
sequences whose lengths are uniform in ``[task.min_len, task.seq_len]`` (default 3-40) and
test on lengths uniform in ``[task.test_min_len, task.test_seq_len]`` (default 41-256), as
in Grazzi et al. (2024), "Unlocking state-tracking in linear RNNs through negative
eigenvalues". Every split is padded to its longest length with the task's pad token,
whose targets are ``-100``; batches of a split therefore share one shape (training:
``[B, seq_len]``, test: ``[B, test_seq_len]``).

Scoring. A task whose answer is defined after every token (``final_only = False``: the
running parity, the running value, the running product) is scored at every position in
training and validation, and on test only at positions whose prefix has at least
``test_min_len`` tokens: the test accuracy is the accuracy *beyond* the training
lengths, not diluted by prefixes the model was trained on. A task whose answer exists
only at the end (``final_only``) is scored at its last token in every split.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from carvelab.trials.tasks._examples import ExampleSetTask
from carvelab.trials.tasks.base import IGNORE_INDEX, TaskConfig, positive_field


@dataclass
class LengthGenConfig(TaskConfig):
    seq_len: int = 40              # longest training / validation sequence (the batch length)
    min_len: int = 3               # shortest training / validation sequence
    test_min_len: int = 41         # shortest test sequence; test scores prefixes of at least this length
    test_seq_len: int = 256        # longest test sequence (the test batch length)
    train_examples: int = 20000
    val_examples: int = 500
    test_examples: int = 500

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("min_len", "test_min_len", "test_seq_len", "train_examples"):
            positive_field(self, key)
        if self.min_len > self.seq_len:
            raise ValueError(f"task.min_len={self.min_len} must not exceed task.seq_len={self.seq_len} "
                             "(training lengths are uniform in [min_len, seq_len])")
        if self.test_min_len > self.test_seq_len:
            raise ValueError(f"task.test_min_len={self.test_min_len} must not exceed "
                             f"task.test_seq_len={self.test_seq_len} (test lengths are uniform in "
                             "[test_min_len, test_seq_len])")


class LengthGenTask(ExampleSetTask):
    """Base of the state-tracking tasks: lengths per split, padding and test-time scoring.

    Subclasses implement ``tokens(cfg)`` (ids the task uses, the pad token last, so
    ``pad = tokens - 1``) and ``sequences(rng, lengths, T)``, and set ``final_only``; a task
    that needs particular lengths overrides ``draw_lengths``.
    """

    final_only: ClassVar[bool] = False

    def __init__(self, cfg: LengthGenConfig):
        self.pad = self.tokens(cfg) - 1
        super().__init__(cfg)

    @classmethod
    @abstractmethod
    def tokens(cls, cfg: LengthGenConfig) -> int:
        """How many token ids the task uses (its pad token is the last of them)."""

    @classmethod
    def validate(cls, cfg: LengthGenConfig) -> None:
        need = cls.tokens(cfg)
        if cfg.vocab_size < need:
            raise ValueError(f"task.vocab_size={cfg.vocab_size} is too small for task {cls.name!r}: "
                             f"allowed is vocab_size >= {need} (its tokens and the pad token)")

    def data_fields(self, cfg: LengthGenConfig) -> dict:
        return {"vocab_size": cfg.vocab_size, "seq_len": cfg.seq_len, "min_len": cfg.min_len,
                "test_min_len": cfg.test_min_len, "test_seq_len": cfg.test_seq_len}

    def split_len(self, split: str) -> int:
        return self.cfg.test_seq_len if split == "test" else self.cfg.seq_len

    def length_range(self, split: str) -> tuple[int, int]:
        cfg = self.cfg
        return (cfg.test_min_len, cfg.test_seq_len) if split == "test" else (cfg.min_len, cfg.seq_len)

    def generate(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.generate_split(rng, n, "train")

    def generate_split(self, rng: np.random.Generator, n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.length_range(split)
        lengths = self.draw_lengths(rng, lo, hi, n)
        inputs, targets = self.sequences(rng, lengths, hi)
        beyond = np.arange(hi)[None, :] >= lengths[:, None]
        inputs[beyond], targets[beyond] = self.pad, IGNORE_INDEX
        if self.final_only:
            last = np.arange(hi)[None, :] == lengths[:, None] - 1
            targets[~last] = IGNORE_INDEX
        elif split == "test":
            targets[:, :lo - 1] = IGNORE_INDEX
        return inputs, targets

    def draw_lengths(self, rng: np.random.Generator, lo: int, hi: int, n: int) -> np.ndarray:
        """``n`` sequence lengths, uniform in ``[lo, hi]``."""
        return rng.integers(lo, hi + 1, size=n)

    @abstractmethod
    def sequences(self, rng: np.random.Generator, lengths: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets ``[n, T]`` (int64) for rows of ``lengths`` tokens; positions at
        or after a row's length are overwritten with the pad token (and ``-100``) by the
        caller, and with ``final_only`` every target but the last real token's is dropped."""
