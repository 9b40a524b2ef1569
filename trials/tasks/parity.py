"""Parity: the running parity of a bit string (state tracking, a regular language).

Tokens: ``0`` and ``1`` are the bits, ``2`` is the pad token. The input is a random bit
string; the target at position t is the parity of bits ``0 .. t`` as a token ``0``
(even) or ``1`` (odd). A diagonal linear recurrence with non-negative eigenvalues cannot
flip a state sign per ``1`` bit at every length; a delta rule with ``eigen_range
'[-1,1]'`` can (Grazzi et al., 2024). Lengths, padding and test scoring:
``carvelab.trials.tasks._lengths``. Example, one row of length 5 padded to T = 7::

    inputs   1  0  1  1  0  2  2
    targets  1  1  0  1  1  -  -
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carvelab.trials.tasks._lengths import LengthGenConfig, LengthGenTask


@dataclass
class ParityConfig(LengthGenConfig):
    name: str = "parity"
    vocab_size: int = 3


class ParityTask(LengthGenTask):
    """Running parity; scored at every position (test: beyond the training lengths)."""

    name = "parity"
    Config = ParityConfig

    @classmethod
    def tokens(cls, cfg: ParityConfig) -> int:
        return 3

    def sequences(self, rng: np.random.Generator, lengths: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
        bits = rng.integers(0, 2, size=(len(lengths), T), dtype=np.int64)
        return bits, np.cumsum(bits, axis=1) % 2
