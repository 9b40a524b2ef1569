"""Shared pieces of the six MAD tasks ("Mechanistic Architecture Design", Poli et al. 2024,
github.com/athms/mad-lab) and ``MAD_SETTINGS``, the benchmark's grid of task settings.

The tasks, one module each (their docstrings give the layout, the scoring, MAD's baseline
and a hand-checked example):

    mad_in_context_recall   ``carvelab.trials.tasks.mad_in_context_recall``
    mad_noisy_recall        ``carvelab.trials.tasks.mad_noisy_recall``
    mad_fuzzy_recall        ``carvelab.trials.tasks.mad_fuzzy_recall``
    mad_selective_copying   ``carvelab.trials.tasks.mad_selective_copying``
    mad_compression         ``carvelab.trials.tasks.mad_compression``
    mad_memorization        ``carvelab.trials.tasks.mad_memorization``

Every one is an ``ExampleSetTask``: a fixed training set (MAD's ``num_train_examples``,
our ``task.train_examples``), a validation set and a test set (MAD's
``num_test_examples = 1280``, our ``task.test_examples``), disjoint, generated from the
data seed only. MAD has no validation split; ours is drawn like the test split.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carvelab.trials.tasks.base import TaskConfig, positive_field

MAD_TRAIN_EXAMPLES = 12800   # MAD's num_train_examples (baseline of every task but memorization)
MAD_TEST_EXAMPLES = 1280     # MAD's num_test_examples (every task, every setting)


@dataclass
class MADTaskConfig(TaskConfig):
    """Keys every MAD task takes: the training-set size and MAD's test-set size."""

    train_examples: int = MAD_TRAIN_EXAMPLES
    test_examples: int = MAD_TEST_EXAMPLES

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_field(self, "train_examples")


def check_even(cfg: TaskConfig, key: str, minimum: int, why: str) -> None:
    """Raise ValueError unless ``cfg.<key>`` is even and at least ``minimum``."""
    value = getattr(cfg, key)
    if value % 2 or value < minimum:
        raise ValueError(f"task.{key}={value} is not allowed: it must be even and >= {minimum} ({why})")


def check_at_least(cfg: TaskConfig, key: str, minimum: int, why: str) -> None:
    """Raise ValueError unless ``cfg.<key> >= minimum``."""
    value = getattr(cfg, key)
    if value < minimum:
        raise ValueError(f"task.{key}={value} is too small: allowed is {key} >= {minimum} ({why})")


def check_fraction(cfg: TaskConfig, key: str) -> None:
    """Raise ValueError unless ``cfg.<key>`` is a number in ``[0, 1)`` (MAD's ``frac_noise``)."""
    value = getattr(cfg, key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise ValueError(f"task.{key}={value!r} must be a number with 0 <= {key} < 1")


def repeated(codes: np.ndarray) -> np.ndarray:
    """``[n, m]`` bool: ``codes[i, j]`` occurs at an earlier column of row ``i``.

    A stable sort groups equal codes in column order; all but the first of a group repeat.
    """
    order = np.argsort(codes, axis=1, kind="stable")
    ranked = np.take_along_axis(codes, order, axis=1)
    later = np.zeros(codes.shape, dtype=bool)
    later[:, 1:] = ranked[:, 1:] == ranked[:, :-1]
    out = np.empty(codes.shape, dtype=bool)
    np.put_along_axis(out, order, later, axis=1)
    return out


def _one_at_a_time(**changes: list) -> list[dict]:
    """MAD's settings of one task: the baseline ``{}``, then each change on its own."""
    return [{}] + [{key: value} for key, values in changes.items() for value in values]


_SIZES = [6400, 3200, 1600, 800]

# MAD's benchmark grid, read from athms/mad-lab (commit 0f49a45): configs/tasks/*.yml give
# each task's `baseline` and `changes`; mad/configs.py (make_benchmark_mad_configs) runs the
# baseline and every change on its own (one factor at a time, the rest at the baseline),
# each at 3 learning rates x 2 weight decays. Settings per task: in-context recall 11,
# fuzzy recall 11, noisy recall 14, selective copying 13, compression 11, memorization 6;
# 66 in all, as in the paper. The first entry of each list is the baseline (our config
# defaults). Field names: MAD's num_train_examples is our train_examples; vocab_size,
# seq_len, frac_noise, noise_vocab_size, num_tokens_to_copy, k_motif_size and
# v_motif_size keep MAD's names. One value differs in meaning: compression's seq_len. MAD
# compresses seq_len - 1 random tokens plus a compression token into one vector; we lay
# the same seq_len - 1 tokens out as a next-token sequence of 2 (seq_len - 1) tokens
# (``mad_compression``), so MAD's seq_len 32, 64, 128, 256 are our 62, 126, 254, 510.
MAD_SETTINGS: dict[str, list[dict]] = {
    "mad_in_context_recall": _one_at_a_time(   # baseline V=16, T=128, 12800 examples
        vocab_size=[32, 64, 128], seq_len=[256, 512, 1024], train_examples=_SIZES),
    "mad_fuzzy_recall": _one_at_a_time(        # baseline V=16, T=128, motifs 3/3, 12800 examples
        vocab_size=[32, 64, 128], seq_len=[256, 512, 1024], train_examples=_SIZES),
    "mad_noisy_recall": _one_at_a_time(        # baseline V=32 (16 noise), T=128, 20% noise
        vocab_size=[48, 80, 144], seq_len=[256, 512, 1024], train_examples=_SIZES,
        frac_noise=[0.4, 0.6, 0.8]),
    "mad_selective_copying": _one_at_a_time(   # baseline V=16, T=256, 16 tokens to copy
        vocab_size=[32, 64, 128], seq_len=[512, 1024], train_examples=_SIZES,
        num_tokens_to_copy=[32, 64, 96]),
    "mad_compression": _one_at_a_time(         # baseline V=16, MAD T=32 (ours 62)
        vocab_size=[32, 64, 128], seq_len=[126, 254, 510], train_examples=_SIZES),
    "mad_memorization": _one_at_a_time(        # baseline V=256, T=32, 256 examples
        vocab_size=[512, 1024, 2048, 4096, 8192]),
}
