"""Multi-query associative recall (MQAR), after Zoology (Arora et al., 2023).

Vocabulary (``V = task.vocab_size``, ``K = V // 2``): tokens ``0 .. K-1`` are keys,
``K .. V-1`` are values; filler tokens are drawn uniformly from the values, so a key
token only ever appears where the layout below puts one.

A sequence of length ``T`` with ``N = task.num_kv_pairs``::

    [0, 2N)            context: k_1 v_1 k_2 v_2 ... k_N v_N  (N distinct keys, N distinct values)
    [2N, 2N + 2S)      S = (T - 2N) // 2 two-token slots. N of them are queries, one per
                       key: slot s holds "k_j v_j", i.e. the queried key followed by its value.
                       The N query slots are drawn without replacement with
                       P(slot s) ∝ (s + 1)^(a - 1), a = task.power_a (Zoology's power law;
                       a < 1 puts queries early, a = 1 is uniform); the j-th drawn slot
                       queries the j-th context key, as in Zoology.
    other slots, and the last token when T is odd: filler (random value tokens).

Targets are ``-100`` everywhere except at the key token of each query slot, where the
target is that key's value, which is also the next input token: a next-token predictor
is scored exactly on the N recalls. Example with V = 16 (keys 0-7, values 8-15), N = 2,
T = 12 (``.`` = filler)::

    inputs   3  9  5 12  5 12  .  .  3  9  .  .
    targets  -  -  -  -  12 -  -  -  9  -  -  -

Requires ``T >= 4N`` (room for the N query slots) and ``V >= 2N`` (N distinct keys and
N distinct values).

Length generalisation (Zoology's evaluation beyond the training shape): ``task.test_seq_len``
and ``task.test_num_kv_pairs`` (default: as trained) give the test split its own T and N,
e.g. train at (T, N) = (64, 4), test at (256, 16). Training and validation keep
``seq_len`` and ``num_kv_pairs``; the vocabulary is shared, so ``V`` must fit the larger N.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np

from carvelab.trials.tasks._examples import ExampleSetTask
from carvelab.trials.tasks.base import IGNORE_INDEX, TaskConfig, positive_field


@dataclass
class MQARConfig(TaskConfig):
    name: str = "mqar"
    num_kv_pairs: int = 8          # N: key-value pairs in the context, each queried once
    power_a: float = 0.01          # power-law placement of queries (Zoology's alpha)
    train_examples: int = 20000    # size of the training set
    test_seq_len: Optional[int] = None       # T of the test split (None: seq_len)
    test_num_kv_pairs: Optional[int] = None  # N of the test split (None: num_kv_pairs)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("num_kv_pairs", "train_examples"):
            positive_field(self, key)
        for key in ("test_seq_len", "test_num_kv_pairs"):
            if getattr(self, key) is not None:
                positive_field(self, key)

    def test_config(self) -> "MQARConfig":
        """The config the test split is generated with (its own T and N, if set)."""
        return dataclasses.replace(self, seq_len=self.test_seq_len or self.seq_len,
                                   num_kv_pairs=self.test_num_kv_pairs or self.num_kv_pairs,
                                   test_seq_len=None, test_num_kv_pairs=None)
        if not isinstance(self.power_a, (int, float)) or isinstance(self.power_a, bool) or self.power_a <= 0:
            raise ValueError(f"task.power_a={self.power_a!r} must be a positive number")

# Random scores drawn per call of ``sample_distinct`` (bounds its scratch memory, ~16 MB).
_DISTINCT_SCRATCH = 1 << 21


def sample_distinct(rng: np.random.Generator, n: int, population: int, k: int) -> np.ndarray:
    """``[n, k]`` int64: per row, ``k`` distinct draws from ``range(population)`` in random order.

    The ``k`` smallest of ``population`` uniform scores, sorted by score: a uniformly
    random ordered k-subset. Rows are processed in blocks to bound memory.
    """
    if not 0 <= k <= population:
        raise ValueError(f"k={k} distinct draws need 0 <= k <= population={population}")
    out = np.empty((n, k), dtype=np.int64)
    if k == 0:
        return out
    rows_per_block = max(1, _DISTINCT_SCRATCH // population)
    for start in range(0, n, rows_per_block):
        scores = rng.random((min(rows_per_block, n - start), population))
        chosen = np.argpartition(scores, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(scores, chosen, axis=1), axis=1)
        out[start:start + len(scores)] = np.take_along_axis(chosen, order, axis=1)
    return out


def power_law_slots(rng: np.random.Generator, n: int, num_slots: int, k: int,
                    power_a: float) -> np.ndarray:
    """``[n, k]``: distinct slots drawn in order with ``P(s) ∝ (s + 1)^(power_a - 1)``.

    Gumbel top-k: the ``k`` largest ``log p_s + Gumbel`` scores, in decreasing order, are
    distributed exactly like ``k`` successive draws without replacement from ``p``.
    """
    log_p = (power_a - 1.0) * np.log(np.arange(1, num_slots + 1, dtype=np.float64))
    scores = log_p + rng.gumbel(size=(n, num_slots))
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def write_pairs(inputs: np.ndarray, targets: np.ndarray, start: int, slots: np.ndarray,
                keys: np.ndarray, values: np.ndarray, scored: bool) -> None:
    """Write "key value" into the two-token ``slots`` (``[n, m]``) of a region at ``start``.

    With ``scored`` the key's position gets the value as its target (recall a known key);
    otherwise the target stays ``-100`` (the value is new information).
    """
    rows = np.arange(len(inputs))[:, None]
    pos = start + 2 * slots
    inputs[rows, pos] = keys
    inputs[rows, pos + 1] = values
    if scored:
        targets[rows, pos] = values


def empty_examples(rng: np.random.Generator, n: int, seq_len: int,
                   vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Filler-only inputs (random value tokens) and all-ignored targets, ``[n, T]`` each."""
    key_vocab = vocab_size // 2
    inputs = rng.integers(key_vocab, vocab_size, size=(n, seq_len), dtype=np.int64)
    return inputs, np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)


def check_recall_config(cfg: MQARConfig, num_updates: int = 0) -> None:
    """Length and vocabulary checks shared by MQAR and Update-MQAR (``U = num_updates``).

    Needs ``T >= 4 (N + U)``: 2N context tokens plus N queries, U updates and U
    post-update queries of two tokens each; and ``V // 2 >= N`` keys and
    ``V - V // 2 >= N + U`` values, all distinct within a sequence.
    """
    n, u = cfg.num_kv_pairs, num_updates
    min_len = 4 * (n + u)
    if cfg.seq_len < min_len:
        updates = f" and task.num_updates={u}" if u else ""
        raise ValueError(
            f"task.seq_len={cfg.seq_len} is too short for task.num_kv_pairs={n}{updates}: "
            f"allowed is seq_len >= {min_len} (2 context tokens per pair plus a two-token "
            "slot per query" + (", update and post-update query)" if u else ")")
        )
    min_vocab = max(2 * n, 2 * (n + u) - 1)
    if cfg.vocab_size < min_vocab:
        raise ValueError(
            f"task.vocab_size={cfg.vocab_size} is too small for task.num_kv_pairs={n}"
            + (f" and task.num_updates={u}" if u else "")
            + f": allowed is vocab_size >= {min_vocab} (vocab_size // 2 distinct keys, the "
            "rest distinct values)"
        )


class MQARTask(ExampleSetTask):
    """Multi-query associative recall; scored on ``num_kv_pairs`` positions per sequence."""

    name = "mqar"
    Config = MQARConfig

    @classmethod
    def validate(cls, cfg: MQARConfig) -> None:
        cls.check(cfg)
        if cfg.test_seq_len is not None or cfg.test_num_kv_pairs is not None:
            try:
                cls.check(cfg.test_config())
            except ValueError as exc:
                raise ValueError(f"the test split (task.test_seq_len={cfg.test_seq_len}, task.test_num_kv_pairs="
                                 f"{cfg.test_num_kv_pairs}): {exc}") from None

    @classmethod
    def check(cls, cfg: MQARConfig) -> None:
        """Raise ValueError naming the key if ``cfg``'s (T, N, V) cannot be generated."""
        check_recall_config(cfg)

    def data_fields(self, cfg: MQARConfig) -> dict:
        shape = {k: getattr(cfg, k) for k in ("test_seq_len", "test_num_kv_pairs") if getattr(cfg, k) is not None}
        return {"vocab_size": cfg.vocab_size, "seq_len": cfg.seq_len,
                "num_kv_pairs": cfg.num_kv_pairs, "power_a": float(cfg.power_a), **shape}

    def split_len(self, split: str) -> int:
        return self.cfg.test_config().seq_len if split == "test" else self.seq_len

    def generate_split(self, rng: np.random.Generator, n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
        return self.sequences(rng, n, self.cfg.test_config() if split == "test" else self.cfg)

    def generate(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.sequences(rng, n, self.cfg)

    def sequences(self, rng: np.random.Generator, n: int, cfg: MQARConfig) -> tuple[np.ndarray, np.ndarray]:
        """``n`` MQAR sequences of ``cfg``'s shape; see the module docstring for the layout."""
        num_pairs = cfg.num_kv_pairs
        key_vocab = cfg.vocab_size // 2
        keys = sample_distinct(rng, n, key_vocab, num_pairs)
        values = key_vocab + sample_distinct(rng, n, cfg.vocab_size - key_vocab, num_pairs)
        inputs, targets = empty_examples(rng, n, cfg.seq_len, cfg.vocab_size)
        context = np.broadcast_to(np.arange(num_pairs), (n, num_pairs))
        write_pairs(inputs, targets, 0, context, keys, values, scored=False)
        num_slots = (cfg.seq_len - 2 * num_pairs) // 2
        slots = power_law_slots(rng, n, num_slots, num_pairs, cfg.power_a)
        write_pairs(inputs, targets, 2 * num_pairs, slots, keys, values, scored=True)
        return inputs, targets
