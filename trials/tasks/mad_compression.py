"""MAD compression (Poli et al. 2024, athms/mad-lab ``generate_compression_instance``), as a
next-token sequence.

MAD's instance, for its ``seq_len = L``: ``L - 1`` random tokens (uniform over ``0 ..
V-2``, with replacement) followed by a compression token ``V - 1``; inputs and targets
are the same ``L`` tokens. MAD trains an *autoencoder* on it (mad/model/auto_encoder.py):
the encoder runs over the ``L`` tokens and keeps only its output at the last position
(the compression token's), a single vector; a position-wise MLP decoder gets that vector
plus a position embedding and must reproduce token ``i`` at position ``i``. All that
reaches the decoder is the one vector and the position.

Here the same information flow in one causal sequence of ``T = task.seq_len = 2n``
tokens (``n`` = MAD's ``L - 1``)::

    [0, n)    the n random tokens x_0 .. x_{n-1} (uniform over 0 .. V-2); unscored
    [n, 2n)   the compression token V - 1, repeated; the target at position n + i is x_i

After position ``n - 1`` the inputs are constant, so what the model predicts at ``n + i``
is a function of the prefix it compressed into its state at the first compression token
and of ``i`` (the steps since, which the model must count): MAD's encoding and decoder
position. For a model with a fixed-size state (a recurrent LM) that state is the
bottleneck, as MAD's vector is; a model that attends to the raw prefix (softmax attention)
faces no bottleneck, and the task is then plain copying. Vocabulary: MAD's, ``0 .. V-2``
content and ``V - 1`` the compression token. Example with V = 5 (content 0-3,
compression token 4), n = 4, T = 8::

    inputs   2  0  3  3  4  4  4  4
    targets  -  -  -  -  2  0  3  3

MAD's baseline (configs/tasks/compression.yml): ``vocab_size = 16``, MAD ``seq_len = 32``
(31 random tokens: our ``seq_len = 62``), ``num_train_examples = 12800``, 1280 test
examples. MAD's sequence-length changes 64, 128, 256 are our 126, 254, 510; all changes
are in ``carvelab.trials.tasks.mad.MAD_SETTINGS``. MAD's accuracy also counts the
reproduction of the compression token itself (one of its ``L`` targets, trivial once
learned); ours scores the ``n`` random tokens only. MAD's noise options are unused by its
benchmark (and its noise targets are dead code: it returns the noisy inputs as targets)
and are left out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carvelab.trials.tasks._examples import ExampleSetTask
from carvelab.trials.tasks.base import IGNORE_INDEX
from carvelab.trials.tasks.mad import MADTaskConfig, check_at_least, check_even


@dataclass
class CompressionConfig(MADTaskConfig):
    name: str = "mad_compression"
    vocab_size: int = 16
    seq_len: int = 62              # 2n: n = 31 tokens to compress (MAD's seq_len 32), n to reproduce


class CompressionTask(ExampleSetTask):
    """Reproduce a random sequence after it has ended, from the model's state alone (MAD)."""

    name = "mad_compression"
    Config = CompressionConfig

    @classmethod
    def validate(cls, cfg: CompressionConfig) -> None:
        check_even(cfg, "seq_len", 2, "seq_len / 2 tokens to compress, then seq_len / 2 to reproduce")
        check_at_least(cfg, "vocab_size", 2, "at least one content token and the compression token")

    def data_fields(self, cfg: CompressionConfig) -> dict:
        return {"vocab_size": cfg.vocab_size, "seq_len": cfg.seq_len}

    def generate(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` compression sequences; see the module docstring for the layout."""
        cfg, half = self.cfg, self.cfg.seq_len // 2
        content = rng.integers(0, cfg.vocab_size - 1, size=(n, half))
        inputs = np.full((n, cfg.seq_len), cfg.vocab_size - 1, dtype=np.int64)
        inputs[:, :half] = content
        targets = np.full((n, cfg.seq_len), IGNORE_INDEX, dtype=np.int64)
        targets[:, half:] = content
        return inputs, targets
