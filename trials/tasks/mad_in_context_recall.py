"""MAD in-context recall (Poli et al. 2024, athms/mad-lab ``generate_in_context_recall_instance``,
multi-query, as MAD's benchmark runs it).

Vocabulary (``V = task.vocab_size``, ``K = V // 2``): tokens ``0 .. K-1`` are keys,
``K .. V-1`` values. A sequence of length ``T = task.seq_len`` (even) is ``T / 2``
two-token pairs "key value"::

    pairs 0 .. T/2 - 2   key uniform from the K keys (with replacement); a key's value is
                         drawn uniformly from the values (with replacement, so two keys may
                         share a value) where the key first occurs, and repeats wherever
                         the key occurs again
    pair  T/2 - 1        the final query: a key drawn uniformly from the distinct keys of
                         the earlier pairs, followed by its value

Scoring (multi-query): the target at the key token of every pair whose key occurred in an
earlier pair is that key's value, which is also the next input token; everything else is
``-100``. The final query is always scored; the last token (the final value) never is.
Example with V = 8 (keys 0-3, values 4-7), T = 10; pair 2 repeats key 2, the final query
asks for key 0::

    inputs   2  5  0  7  2  5  3  4  0  7
    targets  -  -  -  -  5  -  -  -  7  -

MAD's baseline (configs/tasks/in-context-recall.yml): ``vocab_size = 16``, ``seq_len =
128``, ``num_train_examples = 12800`` (``task.train_examples``), 1280 test examples; its
changes are in ``carvelab.trials.tasks.mad.MAD_SETTINGS``.

Where this differs from MAD's framing. (1) MAD trains on the full next-token loss (the
targets are the inputs shifted by one) and scores only the recalls above on its test set;
we score the recalls in every split. The other next tokens are random keys and
first-seen values, unpredictable from the prefix. (2) MAD feeds the model
``seq_len - 1`` tokens (the final value is only a target); we keep it as a last, unscored
input so that a row is ``seq_len`` long. (3) MAD draws its guaranteed non-noise pair
(``mad_noisy_recall``) from all ``T / 2`` pairs, the final query included, and fails if
every earlier pair is noise; ours is one of the earlier pairs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carvelab.trials.tasks._examples import ExampleSetTask
from carvelab.trials.tasks.base import IGNORE_INDEX
from carvelab.trials.tasks.mad import MADTaskConfig, check_at_least, check_even, repeated


@dataclass
class InContextRecallConfig(MADTaskConfig):
    name: str = "mad_in_context_recall"
    vocab_size: int = 16
    seq_len: int = 128


class InContextRecallTask(ExampleSetTask):
    """Multi-query recall of key-value pairs that recur in the sequence (MAD)."""

    name = "mad_in_context_recall"
    Config = InContextRecallConfig

    # ------------------------------------------------------------------ noise hooks
    @staticmethod
    def noise_vocab_size(cfg: InContextRecallConfig) -> int:
        """Noise tokens at the top of the vocabulary (none here; see ``mad_noisy_recall``)."""
        return 0

    @staticmethod
    def frac_noise(cfg: InContextRecallConfig) -> float:
        """Probability that an earlier pair is replaced by two noise tokens (none here)."""
        return 0.0

    # ------------------------------------------------------------------ ExampleSetTask
    @classmethod
    def validate(cls, cfg: InContextRecallConfig) -> None:
        check_even(cfg, "seq_len", 4, "seq_len / 2 key-value pairs: at least one before the "
                   "final query, and the query")
        noise = cls.noise_vocab_size(cfg)
        check_at_least(cfg, "vocab_size", noise + 2,
                       "at least one key and one value" + (f" besides the {noise} noise tokens" if noise else ""))

    def data_fields(self, cfg: InContextRecallConfig) -> dict:
        return {"vocab_size": cfg.vocab_size, "seq_len": cfg.seq_len}

    def generate(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` recall sequences; see the module docstring for the layout."""
        cfg = self.cfg
        noise_vocab, frac = self.noise_vocab_size(cfg), self.frac_noise(cfg)
        symbols = cfg.vocab_size - noise_vocab          # keys and values
        num_keys, num_pairs = symbols // 2, cfg.seq_len // 2
        body = num_pairs - 1
        rows = np.arange(n)[:, None]

        keys = rng.integers(0, num_keys, size=(n, num_pairs))
        value_of = rng.integers(num_keys, symbols, size=(n, num_keys))   # each key's value
        noise = np.zeros((n, num_pairs), dtype=bool)
        if frac > 0:
            noise[:, :body] = rng.random((n, body)) < frac
            noise[np.arange(n), rng.integers(0, body, size=n)] = False   # one pair is kept

        presented = np.zeros((n, num_keys), dtype=bool)
        r, c = np.nonzero(~noise[:, :body])
        presented[r, keys[r, c]] = True
        scores = np.where(presented, rng.random((n, num_keys)), -1.0)
        keys[:, body] = np.argmax(scores, axis=1)                        # the final query

        values = value_of[rows, keys]
        inputs = np.empty((n, cfg.seq_len), dtype=np.int64)
        inputs[:, 0::2], inputs[:, 1::2] = keys, values
        # A noise pair's code is unique (>= num_keys), so it neither repeats nor is repeated.
        codes = np.where(noise, num_keys + np.arange(num_pairs), keys)
        scored = repeated(codes)
        targets = np.full((n, cfg.seq_len), IGNORE_INDEX, dtype=np.int64)
        targets[:, 0::2] = np.where(scored, values, IGNORE_INDEX)
        if frac > 0:
            tokens = rng.integers(symbols, cfg.vocab_size, size=(n, num_pairs, 2))
            pos = np.nonzero(noise)
            inputs[pos[0], 2 * pos[1]] = tokens[pos][:, 0]
            inputs[pos[0], 2 * pos[1] + 1] = tokens[pos][:, 1]
        return inputs, targets
