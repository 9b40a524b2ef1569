"""MAD fuzzy in-context recall (Poli et al. 2024, athms/mad-lab
``generate_fuzzy_in_context_recall_instance``, multi-query, as MAD's benchmark runs it).

Recall where keys and values are *motifs*: runs of tokens. Vocabulary (``V =
task.vocab_size``): ``K = (V - 1) // 2`` key tokens ``0 .. K-1``, value tokens
``K .. V-2``, and the pad token ``V - 1``. A key is an ordered tuple of ``1 ..
k_motif_size`` distinct key tokens, a value one of ``1 .. v_motif_size`` distinct value
tokens (``task.k_motif_size``, ``task.v_motif_size``); since key and value tokens differ,
the runs of a sequence alternate key, value, key, ... and parse without ambiguity.

A sequence is built as MAD builds it, then shifted for next-token prediction::

    probe        a key (size uniform in 1 .. k_motif_size, tokens uniform) and a value (size
                 uniform in 1 .. v_motif_size); s = their total length
    context      pairs "key value" while the context is shorter than B = T - s - (k_motif_size
                 + v_motif_size): each key drawn like the probe's; a key's value is drawn
                 (like the probe's) where the key first occurs and repeats afterwards. The
                 probe's pair enters the context at the first pair boundary at or after
                 position i, i uniform in [0, T - 2s) (MAD's probe_idx), unless its key came
                 up at random before (then with the probe's value)
    final query  the probe: its key and its value
    padding      pad tokens in front, to T + 1 tokens; the row's inputs are the first T, and
                 the target at t scores token t + 1

Scoring (multi-query): every value token of a pair whose key occurred earlier (the final
query always does) is the target of the position before it: the key's last token, then
each value token but the last. Everything else is ``-100``. The splits differ as MAD's do:
training keys have random sizes, validation and test keys (probe included) all have
``k_motif_size`` tokens; value sizes stay random. Example with V = 8 (keys 0-2, values
3-6, pad 7), motif sizes 2 and 2, T = 16 (B = 9); the probe is key (2) -> value (3 5),
key (0 1) -> (4) recurs::

    inputs   7  7  7  7  7  0  1  4  2  3  5  0  1  4  2  3
    targets  -  -  -  -  -  -  -  -  -  -  -  -  4  -  3  5

(the last target, 5, is the 17th token, not an input). A model trained on mixed key sizes
cannot tell at a key token whether the key is complete: the "fuzziness" MAD intends.

MAD's baseline (configs/tasks/fuzzy-in-context-recall.yml): ``vocab_size = 16``,
``seq_len = 128``, ``k_motif_size = v_motif_size = 3``, ``num_train_examples = 12800``,
1280 test examples; changes in ``carvelab.trials.tasks.mad.MAD_SETTINGS``.

Where this differs from MAD. (1) MAD trains on the full next-token loss and scores the
recalls on its test set; we score the recalls in every split (validation drawn like the
test split). (2) MAD can end the context before the probe's pair was placed (when i
falls after the last pair boundary), asking for a value never shown; we place the probe
no later than the boundary at or after ``max(0, B - k_motif_size - v_motif_size)``, which
the context always reaches. (3) MAD's noise options are not used by its benchmark for
this task and are left out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carvelab.trials.tasks._examples import ExampleSetTask
from carvelab.trials.tasks.base import IGNORE_INDEX, positive_field
from carvelab.trials.tasks.mad import MADTaskConfig
from carvelab.trials.tasks.mqar import sample_distinct


@dataclass
class FuzzyRecallConfig(MADTaskConfig):
    name: str = "mad_fuzzy_recall"
    vocab_size: int = 16
    seq_len: int = 128
    k_motif_size: int = 3          # the longest key (training keys have 1 .. k_motif_size tokens)
    v_motif_size: int = 3          # the longest value (values have 1 .. v_motif_size tokens)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("k_motif_size", "v_motif_size"):
            positive_field(self, key)


class FuzzyRecallTask(ExampleSetTask):
    """Multi-query recall of multi-token keys and values (MAD)."""

    name = "mad_fuzzy_recall"
    Config = FuzzyRecallConfig

    @classmethod
    def validate(cls, cfg: FuzzyRecallConfig) -> None:
        keys = (cfg.vocab_size - 1) // 2
        values = cfg.vocab_size - 1 - keys
        if keys < cfg.k_motif_size or values < cfg.v_motif_size:
            least = max(2 * cfg.k_motif_size, 2 * cfg.v_motif_size - 1) + 1
            raise ValueError(
                f"task.vocab_size={cfg.vocab_size} is too small for task.k_motif_size="
                f"{cfg.k_motif_size} and task.v_motif_size={cfg.v_motif_size}: allowed is "
                f"vocab_size >= {least} ((vocab_size - 1) // 2 key tokens, the rest but the pad "
                "token value tokens; a motif's tokens are distinct)")
        longest = cfg.k_motif_size + cfg.v_motif_size
        if cfg.seq_len <= 2 * longest:
            raise ValueError(
                f"task.seq_len={cfg.seq_len} is too short for task.k_motif_size={cfg.k_motif_size} "
                f"and task.v_motif_size={cfg.v_motif_size}: allowed is seq_len > {2 * longest} "
                "(2 (k_motif_size + v_motif_size): the context, the probe's pair and the query)")

    def data_fields(self, cfg: FuzzyRecallConfig) -> dict:
        return {"vocab_size": cfg.vocab_size, "seq_len": cfg.seq_len,
                "k_motif_size": cfg.k_motif_size, "v_motif_size": cfg.v_motif_size}

    def generate(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.generate_split(rng, n, "train")

    def generate_split(self, rng: np.random.Generator, n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``n`` sequences; keys of every size in training, of ``k_motif_size`` otherwise."""
        cfg, T = self.cfg, self.cfg.seq_len
        km, vm = cfg.k_motif_size, cfg.v_motif_size
        num_keys = (cfg.vocab_size - 1) // 2
        # Every draw up front: pair 0 is the probe, pairs 1.. the context's (at most T / 2).
        m = T // 2 + 1
        if split == "train":
            key_sizes = rng.integers(1, km + 1, size=(n, m))
        else:
            key_sizes = np.full((n, m), km)
        value_sizes = rng.integers(1, vm + 1, size=(n, m))
        # A uniform ordered k-subset's first j tokens are a uniform ordered j-subset.
        key_tokens = sample_distinct(rng, n * m, num_keys, km).reshape(n, m, km)
        value_tokens = num_keys + sample_distinct(rng, n * m, cfg.vocab_size - 1 - num_keys,
                                                  vm).reshape(n, m, vm)
        probe_size = key_sizes[:, 0] + value_sizes[:, 0]
        probe_at = rng.integers(0, T - 2 * probe_size)
        inputs = np.empty((n, T), dtype=np.int64)
        targets = np.empty((n, T), dtype=np.int64)
        for r in range(n):
            inputs[r], targets[r] = self._row(
                key_sizes[r].tolist(), value_sizes[r].tolist(), key_tokens[r].tolist(),
                value_tokens[r].tolist(), int(probe_at[r]))
        return inputs, targets

    def _row(self, key_sizes: list, value_sizes: list, key_tokens: list, value_tokens: list,
             probe_at: int) -> tuple[list, list]:
        """One sequence from its pre-drawn pairs: inputs and (shifted) targets, ``T`` each."""
        cfg, T = self.cfg, self.cfg.seq_len
        longest = cfg.k_motif_size + cfg.v_motif_size
        probe_key = tuple(key_tokens[0][:key_sizes[0]])
        probe_value = tuple(value_tokens[0][:value_sizes[0]])
        bound = T - len(probe_key) - len(probe_value) - longest
        probe_at = min(probe_at, max(0, bound - longest))
        value_of = {probe_key: probe_value}
        tokens, scored, seen = [], [], set()
        probe_shown, j = False, 1

        def add(key: tuple, value: tuple) -> None:
            hit = key in seen
            seen.add(key)
            tokens.extend(key)
            tokens.extend(value)
            scored.extend([False] * len(key) + [hit] * len(value))

        while len(tokens) < bound:
            if not probe_shown and len(tokens) >= probe_at:
                key = probe_key
            else:
                key = tuple(key_tokens[j][:key_sizes[j]])
                value_of.setdefault(key, tuple(value_tokens[j][:value_sizes[j]]))
                j += 1
            probe_shown = probe_shown or key == probe_key
            add(key, value_of[key])
        add(probe_key, probe_value)
        pad = T + 1 - len(tokens)
        full = [cfg.vocab_size - 1] * pad + tokens
        hits = [False] * pad + scored
        target = [tok if hit else IGNORE_INDEX for tok, hit in zip(full, hits)]
        return full[:-1], target[1:]
