"""MAD memorization (Poli et al. 2024, athms/mad-lab ``generate_memorization_instance``).

A fixed key -> value mapping that no sequence states: the model must store it in its
weights. Vocabulary (``V = task.vocab_size``, ``K = (V - 1) // 2``): keys ``0 .. K-1``,
values ``K .. V-2``, the insert token ``V - 1``. The mapping is a uniformly random
injection of the K keys into the ``V - 1 - K`` values (MAD zips a shuffled key list with a
shuffled value list, the same distribution), drawn from ``(task.data_seed,
"mad_memorization_map")`` alone: every sequence of every split (train, validation, test)
uses the same mapping, and it does not depend on ``seq_len`` or the set sizes. A sequence
of ``T = task.seq_len`` (even) tokens is ``T / 2`` pairs "key insert" with the keys
uniform (with replacement); the target at each insert token is the value of the key
before it, everything else is ``-100`` (MAD's targets, at MAD's positions, in every
split). Example with V = 9 (keys 0-3, values 4-7, insert 8) and the mapping
0 -> 6, 1 -> 4, 2 -> 7, 3 -> 5, T = 8::

    inputs   2  8  0  8  2  8  3  8
    targets  -  7  -  6  -  7  -  5

The splits are disjoint sequences (other keys, in other orders) over one mapping, so the
test accuracy measures how much of the mapping was memorized, not generalisation to new
facts. A test key that no training sequence contains cannot be answered; the expected
share of such keys is about ``exp(-train_examples * T / (2 K))``: nil at MAD's baseline
(4096 training pairs over 127 keys, e^-32) but about 37% at MAD's largest vocabulary
(8192: 4096 pairs over 4095 keys), which MAD's test set has too.

MAD's baseline (configs/tasks/memorization.yml): ``vocab_size = 256``, ``seq_len = 32``,
``num_train_examples = 256``, 1280 test examples; MAD varies only the vocabulary (512 ..
8192, ``carvelab.trials.tasks.mad.MAD_SETTINGS``). MAD seeds its mapping with its run seed
(12345 for every run); ours with the data seed. MAD's noise options are unused by its
benchmark and are left out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carvelab.trials.tasks._examples import ExampleSetTask
from carvelab.trials.tasks.base import IGNORE_INDEX, stream_rng
from carvelab.trials.tasks.mad import MADTaskConfig, check_at_least, check_even

MAP_STREAM = "mad_memorization_map"


@dataclass
class MemorizationConfig(MADTaskConfig):
    name: str = "mad_memorization"
    vocab_size: int = 256
    seq_len: int = 32
    train_examples: int = 256


def memorization_map(data_seed: int, vocab_size: int) -> np.ndarray:
    """``[K]`` int64: the value of each key ``0 .. K-1``, ``K = (vocab_size - 1) // 2``."""
    num_keys = (vocab_size - 1) // 2
    order = stream_rng(data_seed, MAP_STREAM).permutation(vocab_size - 1 - num_keys)
    return num_keys + order[:num_keys].astype(np.int64)


class MemorizationTask(ExampleSetTask):
    """Recall the value of each key from a mapping fixed per data seed (MAD)."""

    name = "mad_memorization"
    Config = MemorizationConfig

    def __init__(self, cfg: MemorizationConfig):
        self.validate(cfg)
        self.value_of = memorization_map(cfg.data_seed, cfg.vocab_size)
        super().__init__(cfg)

    @classmethod
    def validate(cls, cfg: MemorizationConfig) -> None:
        check_even(cfg, "seq_len", 2, "seq_len / 2 pairs of a key and the insert token")
        check_at_least(cfg, "vocab_size", 3, "at least one key, one value and the insert token")

    def data_fields(self, cfg: MemorizationConfig) -> dict:
        return {"vocab_size": cfg.vocab_size, "seq_len": cfg.seq_len}

    def generate(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` memorization sequences; see the module docstring for the layout."""
        cfg = self.cfg
        keys = rng.integers(0, len(self.value_of), size=(n, cfg.seq_len // 2))
        inputs = np.full((n, cfg.seq_len), cfg.vocab_size - 1, dtype=np.int64)
        inputs[:, 0::2] = keys
        targets = np.full((n, cfg.seq_len), IGNORE_INDEX, dtype=np.int64)
        targets[:, 1::2] = self.value_of[keys]
        return inputs, targets
