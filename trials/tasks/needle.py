"""Needle in a haystack, after RULER (Hsieh et al., 2024): single key, multi-key, multi-value.

Vocabulary (``V = task.vocab_size``, ``Q = V - 1``): filler ``0 .. V//4 - 1``, keys
``V//4 .. V//2 - 1``, values ``V//2 .. V - 2``, and the query token ``Q``. With ``N =
task.num_needles`` and ``M = task.num_values``, a sequence of length ``T`` is::

    [0, T - M - 1)    the haystack: random filler with N needles "k v_1 .. v_M" (N distinct
                      keys, N*M distinct values) in distinct (M+1)-token slots drawn
                      uniformly from the haystack's floor((T - M - 1) / (M + 1)) slots
    [T - M - 1, T)    the question: Q, then the queried key k* (one of the N, uniform), then
                      its values v_1 .. v_{M-1}; the last value is the final target

Targets are ``-100`` except in the question: at k* the target is v_1, at v_i it is v_{i+1};
M scored positions per sequence, all answerable only by retrieving the needle of k*.
RULER's variants are settings: single key (N = 1, M = 1), multi-key (N > 1: distractor
needles, M = 1), multi-value (M > 1). Where the needle sits relative to the question is
uniform, so the sweep's ``seq_len`` sets the haystack's length. Example, V = 16 (filler
0-3, keys 4-7, values 8-14, Q = 15), N = 2, M = 1, T = 10::

    inputs   5 12  0  1  7  9  3  2 15  7
    targets  -  -  -  -  -  -  -  -  -  9

(4 two-token slots in the 8-token haystack; the queried key 7's needle "7 9" fills slot 2,
the distractor "5 12" slot 0.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carvelab.trials.tasks._examples import ExampleSetTask
from carvelab.trials.tasks.base import IGNORE_INDEX, TaskConfig, positive_field
from carvelab.trials.tasks.mqar import sample_distinct


@dataclass
class NeedleConfig(TaskConfig):
    name: str = "needle"
    vocab_size: int = 256
    seq_len: int = 256
    num_needles: int = 1           # N: needles in the haystack (N > 1: multi-key)
    num_values: int = 1            # M: values per needle, all recalled (M > 1: multi-value)
    train_examples: int = 20000

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("num_needles", "num_values", "train_examples"):
            positive_field(self, key)


class NeedleTask(ExampleSetTask):
    """Retrieve the values of the queried needle from a haystack of filler; M scored positions."""

    name = "needle"
    Config = NeedleConfig

    @classmethod
    def validate(cls, cfg: NeedleConfig) -> None:
        n, m, V = cfg.num_needles, cfg.num_values, cfg.vocab_size
        keys, values = V // 2 - V // 4, V - 1 - V // 2
        if V // 4 < 1 or n > keys or n * m > values:
            raise ValueError(f"task.vocab_size={V} is too small for task.num_needles={n} and task.num_values={m}: "
                             f"allowed is vocab_size // 2 - vocab_size // 4 >= num_needles (keys) and "
                             f"vocab_size - 1 - vocab_size // 2 >= num_needles * num_values (values), with "
                             "vocab_size >= 4 (filler)")
        slots = (cfg.seq_len - m - 1) // (m + 1)
        if slots < n:
            raise ValueError(f"task.seq_len={cfg.seq_len} is too short for task.num_needles={n} needles of "
                             f"task.num_values={m} values: allowed is seq_len >= {n * (m + 1) + m + 1}")

    def data_fields(self, cfg: NeedleConfig) -> dict:
        return {"vocab_size": cfg.vocab_size, "seq_len": cfg.seq_len, "num_needles": cfg.num_needles,
                "num_values": cfg.num_values}

    def generate(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        cfg, N, M, V, T = self.cfg, self.cfg.num_needles, self.cfg.num_values, self.cfg.vocab_size, self.cfg.seq_len
        rows = np.arange(n)[:, None]
        inputs = rng.integers(0, V // 4, size=(n, T), dtype=np.int64)
        targets = np.full((n, T), IGNORE_INDEX, dtype=np.int64)
        keys = V // 4 + sample_distinct(rng, n, V // 2 - V // 4, N)                    # [n, N]
        values = (V // 2 + sample_distinct(rng, n, V - 1 - V // 2, N * M)).reshape(n, N, M)
        slots = sample_distinct(rng, n, (T - M - 1) // (M + 1), N) * (M + 1)         # needle starts
        inputs[rows, slots] = keys
        for j in range(M):
            inputs[rows, slots + 1 + j] = values[:, :, j]
        asked = rng.integers(0, N, size=n)
        q = T - M - 1
        inputs[:, q] = V - 1
        inputs[:, q + 1] = keys[np.arange(n), asked]
        answer = values[np.arange(n), asked]                                         # [n, M]
        inputs[:, q + 2:] = answer[:, :M - 1]
        targets[:, q + 1:T] = answer
        return inputs, targets
