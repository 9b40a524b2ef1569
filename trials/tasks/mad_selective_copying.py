"""MAD selective copying (Poli et al. 2024, athms/mad-lab ``generate_selective_copying_instance``).

Vocabulary (``V = task.vocab_size``): tokens ``0 .. V-3`` are content, ``V - 2`` is the
blank token, ``V - 1`` the copy token. With ``C = task.num_tokens_to_copy`` and ``T =
task.seq_len`` there are ``B = T - 2C - 1`` blanks among the content::

    [0, T - C - 1)   the C content tokens (uniform, with replacement), in order, with the B
                     blanks scattered among them: each blank independently goes into one
                     of the C gaps *before* a content token, uniformly (MAD's np.insert at
                     an index in [0, C)), so the last content token always sits right
                     before the copy token
    T - C - 1        the copy token
    [T - C, T)       C blanks; the target at the i-th of them is the i-th content token

Everything else is ``-100``: C scored positions per sequence, the content recalled in
order from the inputs before the copy token (the blanks after it carry no information).
MAD's own targets are these, at these positions, for training and test alike. Example with
V = 6 (content 0-3, blank 4, copy 5), C = 3, T = 10 (B = 3 blanks)::

    inputs   4  2  4  4  0  3  5  4  4  4
    targets  -  -  -  -  -  -  -  2  0  3

MAD's baseline (configs/tasks/selective-copying.yml): ``vocab_size = 16``, ``seq_len =
256``, ``num_tokens_to_copy = 16``, ``num_train_examples = 12800``, 1280 test examples;
changes in ``carvelab.trials.tasks.mad.MAD_SETTINGS``. (MAD draws the blanks' gaps from
NumPy's global generator; ours come from the task's seeded one.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carvelab.trials.tasks._examples import ExampleSetTask
from carvelab.trials.tasks.base import IGNORE_INDEX, positive_field
from carvelab.trials.tasks.mad import MADTaskConfig, check_at_least


@dataclass
class SelectiveCopyingConfig(MADTaskConfig):
    name: str = "mad_selective_copying"
    vocab_size: int = 16
    seq_len: int = 256
    num_tokens_to_copy: int = 16   # C: content tokens to reproduce after the copy token

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_field(self, "num_tokens_to_copy")


class SelectiveCopyingTask(ExampleSetTask):
    """Copy the content tokens scattered among blanks, in order, after a copy token (MAD)."""

    name = "mad_selective_copying"
    Config = SelectiveCopyingConfig

    @classmethod
    def validate(cls, cfg: SelectiveCopyingConfig) -> None:
        check_at_least(cfg, "vocab_size", 3, "at least one content token, the blank and the copy token")
        least = 2 * cfg.num_tokens_to_copy + 2
        if cfg.seq_len < least:
            raise ValueError(
                f"task.seq_len={cfg.seq_len} is too short for task.num_tokens_to_copy="
                f"{cfg.num_tokens_to_copy}: allowed is seq_len >= {least} (2 num_tokens_to_copy "
                "+ 2: the content, at least one blank, the copy token and the answer)")

    def data_fields(self, cfg: SelectiveCopyingConfig) -> dict:
        return {"vocab_size": cfg.vocab_size, "seq_len": cfg.seq_len,
                "num_tokens_to_copy": cfg.num_tokens_to_copy}

    def generate(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` selective-copying sequences; see the module docstring for the layout."""
        cfg, C, T = self.cfg, self.cfg.num_tokens_to_copy, self.cfg.seq_len
        blank, copy = cfg.vocab_size - 2, cfg.vocab_size - 1
        content = rng.integers(0, cfg.vocab_size - 2, size=(n, C))
        gaps = rng.multinomial(T - 2 * C - 1, np.full(C, 1.0 / C), size=n)   # blanks before token j
        positions = np.arange(C) + np.cumsum(gaps, axis=1)
        inputs = np.full((n, T), blank, dtype=np.int64)
        np.put_along_axis(inputs, positions, content, axis=1)
        inputs[:, T - C - 1] = copy
        targets = np.full((n, T), IGNORE_INDEX, dtype=np.int64)
        targets[:, T - C:] = content
        return inputs, targets
