"""Language modelling on real text: next-token prediction over windows of a token stream.

The streams come from ``carvelab.trials.tasks._corpus`` (the standard library's source,
a text file, or a uint16 ``.bin``). A sequence is a window of ``T + 1`` consecutive
tokens ``x_s .. x_{s+T}`` of a stream::

    inputs   x_s      x_{s+1}  ...  x_{s+T-1}
    targets  x_{s+1}  x_{s+2}  ...  x_{s+T}        (every position scored)

Training window starts are uniform over the training stream, drawn from the seed stream
``(data_seed, "lm-train", step)``. The held-out stream is cut in two halves: the
validation set is ``task.val_examples`` windows with starts evenly spaced over its first
half, the test set ``task.test_examples`` windows evenly spaced over its second half (fixed,
no randomness; no window crosses the cut, so the two sets share no token position).
The quality metric is the validation loss (lower is better).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from carvelab.trials.tasks._corpus import load_corpus
from carvelab.trials.tasks.base import (
    Batch,
    Task,
    TaskConfig,
    batch_ranges,
    check_batch_args,
    check_data_seed,
    stream_rng,
    to_long,
)

logger = logging.getLogger(__name__)


def windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``tokens[s : s+T]`` and targets ``tokens[s+1 : s+T+1]`` per start, ``[B, T]`` each."""
    idx = starts[:, None] + np.arange(seq_len + 1)
    chunk = np.asarray(tokens[idx])
    return chunk[:, :-1], chunk[:, 1:]


@dataclass
class LMConfig(TaskConfig):
    name: str = "lm"
    data_path: Optional[str] = None  # None = the bundled stdlib corpus, a .txt file, or a uint16 .bin


class LMTask(Task):
    """Next-token language modelling; ``vocab_size`` comes from the data."""

    name = "lm"
    quality_metric = "loss"
    Config = LMConfig

    def __init__(self, cfg: LMConfig):
        check_data_seed(cfg.data_seed)
        self.cfg = cfg
        self.seq_len = cfg.seq_len
        self.corpus = load_corpus(cfg)
        self.vocab_size = self.corpus.vocab_size
        half = len(self.corpus.val) // 2
        self._val_stream, self._test_stream = self.corpus.val[:half], self.corpus.val[half:]
        for split, tokens in (("training", self.corpus.train), ("validation (first half of the held-out)",
                                                                 self._val_stream),
                              ("test (second half of the held-out)", self._test_stream)):
            if len(tokens) < cfg.seq_len + 1:
                raise ValueError(
                    f"task.data_path={cfg.data_path!r}: the {split} stream of "
                    f"{self.corpus.source} has {len(tokens)} tokens, fewer than "
                    f"task.seq_len + 1 = {cfg.seq_len + 1}; use a longer corpus or a shorter seq_len"
                )
        self._val_starts = _even_starts(len(self._val_stream), cfg.seq_len, cfg.val_examples)
        self._test_starts = _even_starts(len(self._test_stream), cfg.seq_len, cfg.test_examples)
        logger.info("lm task on %s: %d train / %d validation / %d test tokens, vocab %d",
                    self.corpus.source, len(self.corpus.train), len(self._val_stream),
                    len(self._test_stream), self.vocab_size)

    @property
    def train_files(self) -> tuple[str, ...]:
        """Files of the training stream (standard-library corpus only, else empty)."""
        return self.corpus.train_files

    @property
    def val_files(self) -> tuple[str, ...]:
        """Files of the held-out stream, validation and test (standard-library corpus only, else empty)."""
        return self.corpus.val_files

    def train_batch(self, step: int, batch_size: int) -> Batch:
        """``batch_size`` windows at uniform random starts seeded by ``(data_seed, step)``."""
        check_batch_args(step, batch_size)
        last = len(self.corpus.train) - self.seq_len - 1
        rng = stream_rng(self.cfg.data_seed, "lm-train", step)
        starts = rng.integers(0, last, size=batch_size, endpoint=True)
        inputs, targets = windows(self.corpus.train, starts, self.seq_len)
        return to_long(inputs), to_long(targets)

    def val_batches(self, batch_size: int, max_batches: int = 0) -> Iterator[Batch]:
        """The ``val_examples`` fixed validation windows, in order."""
        return self._windows(self._val_stream, self._val_starts, batch_size, max_batches)

    def test_batches(self, batch_size: int, max_batches: int = 0) -> Iterator[Batch]:
        """The ``test_examples`` fixed test windows, in order."""
        return self._windows(self._test_stream, self._test_starts, batch_size, max_batches)

    def _windows(self, tokens: np.ndarray, starts: np.ndarray, batch_size: int,
                 max_batches: int) -> Iterator[Batch]:
        for start, stop in batch_ranges(len(starts), batch_size, max_batches):
            inputs, targets = windows(tokens, starts[start:stop], self.seq_len)
            yield to_long(inputs), to_long(targets)


def _even_starts(length: int, seq_len: int, count: int) -> np.ndarray:
    """``count`` window starts evenly spaced over a stream of ``length`` tokens."""
    return np.linspace(0, length - seq_len - 1, num=count).round().astype(np.int64)
