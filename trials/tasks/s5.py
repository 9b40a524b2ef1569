"""S5: composing permutations of five elements (state tracking, the word problem of S5).

Tokens ``0 .. 119`` are the 120 permutations of ``(0, 1, 2, 3, 4)`` in lexicographic
order (``0`` is the identity, ``1`` swaps 3 and 4, ``24`` swaps 0 and 1); ``120`` is the
pad token. The input is a sequence of random permutations ``p_1 .. p_L``; the target at
position t is the product ``s_t = p_t ∘ s_{t-1}`` (``s_0`` = identity, ``s_t[i] =
p_t[s_{t-1}[i]]``: apply the earlier permutations first) as a token. S5 is not solvable,
so no constant-depth shortcut exists (Merrill et al., 2024); a linear recurrence needs
non-diagonal, sign-indefinite transitions to track it (Grazzi et al., 2024). Lengths,
padding and test scoring: ``carvelab.trials.tasks._lengths``. Example, T = 4::

    inputs   24  1  1 120
    targets  24 25 24   -

(swap 0,1; then swap 3,4 gives (1,0,2,4,3) = 25; swapping 3,4 again gives 24 back.)
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import permutations

import numpy as np

from carvelab.trials.tasks._lengths import LengthGenConfig, LengthGenTask

DEGREE = 5


@lru_cache(maxsize=1)
def composition_table() -> np.ndarray:
    """``table[s, p]`` = the id of ``p ∘ s`` (``i -> p[s[i]]``), ``[120, 120]`` int64."""
    perms = list(permutations(range(DEGREE)))
    index = {p: i for i, p in enumerate(perms)}
    table = np.empty((len(perms), len(perms)), dtype=np.int64)
    for i, s in enumerate(perms):
        for j, p in enumerate(perms):
            table[i, j] = index[tuple(p[s[k]] for k in range(DEGREE))]
    return table


@dataclass
class S5Config(LengthGenConfig):
    name: str = "s5"
    vocab_size: int = 121


class S5Task(LengthGenTask):
    """Running product of permutations; scored at every position (test: beyond the training lengths)."""

    name = "s5"
    Config = S5Config

    @classmethod
    def tokens(cls, cfg: S5Config) -> int:
        return len(composition_table()) + 1

    def sequences(self, rng: np.random.Generator, lengths: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
        table = composition_table()
        inputs = rng.integers(0, len(table), size=(len(lengths), T), dtype=np.int64)
        targets = np.empty_like(inputs)
        state = np.zeros(len(lengths), dtype=np.int64)
        for t in range(T):
            state = table[state, inputs[:, t]]
            targets[:, t] = state
        return inputs, targets
