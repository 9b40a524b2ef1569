"""Update-MQAR: multi-query associative recall where some keys are re-assigned.

The vocabulary and the context are MQAR's (see ``carvelab.trials.tasks.mqar``): keys
``0 .. K-1``, values ``K .. V-1`` (``K = V // 2``), filler = random value tokens, and the
context ``k_1 v_1 ... k_N v_N`` at ``[0, 2N)``. The rest holds ``S = (T - 2N) // 2``
two-token slots, ``U = task.num_updates``::

    N regular queries   one per key, slots drawn with MQAR's power law; slot holds "k_j x"
    U updates           U distinct keys j (a random subset) get a new value v'_j, distinct
                        from every other value of the sequence; slot holds "k_j v'_j"
    U late queries      one per updated key, in a slot after its update; holds "k_j v'_j"

For each updated key, two slots are drawn uniformly from those left free by the regular
queries: the earlier is the update, the later the late query. Every query (regular or
late) asks for the value current at its slot: ``x = v'_j`` if key j was updated in an
earlier slot, else ``x = v_j``. So the input stream is a sequence of "key value" pairs
in which each key token is followed by the key's current value.

Targets are ``-100`` except at the key token of every query, where the target is the
current value (= the next input token): ``N + U`` scored positions per sequence. Update
slots are not scored (their value is new information). Example with V = 16 (keys 0-7,
values 8-15), N = 2, U = 1, T = 16; key 5 is queried before its update (old value 12),
updated to 14 in slot 1 and queried again in slot 4::

    inputs   3  9  5 12  5 12  5 14  .  .  3  9  5 14  .  .
    targets  -  -  -  -  12 -  -  -  -  -  9  -  14 -  -  -

Requires ``U <= N``, ``T >= 4 (N + U)`` and ``V >= max(2N, 2 (N + U) - 1)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carvelab.trials.tasks.mqar import (
    MQARConfig,
    MQARTask,
    check_recall_config,
    empty_examples,
    power_law_slots,
    sample_distinct,
    write_pairs,
)


def free_slot_pairs(rng: np.random.Generator, taken: np.ndarray, num_slots: int,
                    num_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, ``num_pairs`` ordered pairs ``(early, late)`` of distinct slots not in ``taken``.

    ``taken`` is ``[n, m]``; returns two ``[n, num_pairs]`` arrays with ``early < late``.
    The ``2 * num_pairs`` slots are uniform among the free ones (Gumbel top-k with
    taken slots excluded), then paired in draw order.
    """
    n = len(taken)
    scores = rng.gumbel(size=(n, num_slots))
    np.put_along_axis(scores, taken, -np.inf, axis=1)
    chosen = np.argsort(-scores, axis=1, kind="stable")[:, :2 * num_pairs]
    first, second = chosen[:, :num_pairs], chosen[:, num_pairs:]
    return np.minimum(first, second), np.maximum(first, second)


@dataclass
class UpdateMQARConfig(MQARConfig):
    name: str = "update_mqar"
    num_updates: int = 4           # keys re-assigned to new values later in the sequence

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.num_updates, int) or isinstance(self.num_updates, bool) or self.num_updates < 0:
            raise ValueError(f"task.num_updates={self.num_updates!r} must be a non-negative integer")


class UpdateMQARTask(MQARTask):
    """MQAR with ``num_updates`` keys re-assigned; scored on ``N + U`` positions per sequence."""

    name = "update_mqar"
    Config = UpdateMQARConfig

    @classmethod
    def check(cls, cfg: UpdateMQARConfig) -> None:
        if cfg.num_updates > cfg.num_kv_pairs:
            raise ValueError(
                f"task.num_updates={cfg.num_updates} must not exceed "
                f"task.num_kv_pairs={cfg.num_kv_pairs}: allowed is 0 <= num_updates <= "
                "num_kv_pairs (each update re-assigns a distinct key)"
            )
        check_recall_config(cfg, cfg.num_updates)

    def data_fields(self, cfg: UpdateMQARConfig) -> dict:
        return {**super().data_fields(cfg), "num_updates": cfg.num_updates}

    def sequences(self, rng: np.random.Generator, n: int, cfg: UpdateMQARConfig) -> tuple[np.ndarray, np.ndarray]:
        """``n`` Update-MQAR sequences of ``cfg``'s shape; see the module docstring for the layout."""
        num_pairs, num_upd = cfg.num_kv_pairs, cfg.num_updates
        key_vocab = cfg.vocab_size // 2
        keys = sample_distinct(rng, n, key_vocab, num_pairs)
        all_values = key_vocab + sample_distinct(
            rng, n, cfg.vocab_size - key_vocab, num_pairs + num_upd)
        values, new_values = all_values[:, :num_pairs], all_values[:, num_pairs:]
        inputs, targets = empty_examples(rng, n, cfg.seq_len, cfg.vocab_size)
        context = np.broadcast_to(np.arange(num_pairs), (n, num_pairs))
        write_pairs(inputs, targets, 0, context, keys, values, scored=False)

        num_slots = (cfg.seq_len - 2 * num_pairs) // 2
        query_slots = power_law_slots(rng, n, num_slots, num_pairs, cfg.power_a)
        updated = sample_distinct(rng, n, num_pairs, num_upd)  # indices into the N keys
        update_slots, late_slots = free_slot_pairs(rng, query_slots, num_slots, num_upd)

        current = _values_at(query_slots, values, updated, update_slots, new_values)
        updated_keys = np.take_along_axis(keys, updated, axis=1)
        start = 2 * num_pairs
        write_pairs(inputs, targets, start, query_slots, keys, current, scored=True)
        write_pairs(inputs, targets, start, update_slots, updated_keys, new_values, scored=False)
        write_pairs(inputs, targets, start, late_slots, updated_keys, new_values, scored=True)
        return inputs, targets


def _values_at(query_slots: np.ndarray, values: np.ndarray, updated: np.ndarray,
               update_slots: np.ndarray, new_values: np.ndarray) -> np.ndarray:
    """``[n, N]``: each key's value at its regular query's slot (new iff updated earlier)."""
    rows = np.arange(len(values))[:, None]
    never = np.iinfo(np.int64).max
    update_slot_of_key = np.full(values.shape, never, dtype=np.int64)
    update_slot_of_key[rows, updated] = update_slots
    new_value_of_key = values.copy()
    new_value_of_key[rows, updated] = new_values
    return np.where(update_slot_of_key < query_slots, new_value_of_key, values)
