"""The needle task: every target recomputed from the inputs alone, the three RULER variants,
disjoint splits, bad configs."""
import numpy as np
import pytest

from carvelab.trials.tasks import IGNORE_INDEX, build_task
from carvelab.trials.tasks.needle import NeedleConfig

SMALL = dict(train_examples=300, val_examples=40, test_examples=40)


def retrieve(seq, V, M):
    """Find the question "Q k" and the haystack needle "k v_1 .. v_M"; return its values."""
    q = int(np.flatnonzero(seq == V - 1)[0])
    key = seq[q + 1]
    at = [i for i in range(q) if seq[i] == key]
    assert len(at) == 1                                   # the key occurs once in the haystack
    return q, list(seq[at[0] + 1:at[0] + 1 + M])


@pytest.mark.parametrize("N, M", [(1, 1), (4, 1), (2, 3)], ids=["single", "multi-key", "multi-value"])
def test_targets_are_the_queried_needles_values(tmp_path, N, M):
    cfg = NeedleConfig(vocab_size=64, seq_len=48, num_needles=N, num_values=M, cache_dir=str(tmp_path), **SMALL)
    task = build_task(cfg)
    for inputs, targets in (task._train, task._val, task._test):
        for seq, tgt in zip(inputs, targets):
            q, vals = retrieve(seq, 64, M)
            assert list(tgt[q + 1:]) == vals and (tgt[:q + 1] == IGNORE_INDEX).all()
            assert list(seq[q + 2:]) == vals[:-1]
            keys = [t for t in seq[:q] if 16 <= t < 32]
            assert len(keys) == N and len(set(keys)) == N  # N distinct needles, nothing else key-like
            assert all(s < 16 for s in seq[:q] if not 16 <= s < 63)


def test_hand_checked_layout():
    """The docstring example: V 16, N 2, M 1, T 10; the needle of key 7 answers."""
    seq = np.array([5, 12, 0, 1, 7, 9, 3, 2, 15, 7])
    q, vals = retrieve(seq, 16, 1)
    assert q == 8 and vals == [9]


def test_splits_are_disjoint(tmp_path):
    task = build_task(NeedleConfig(vocab_size=32, seq_len=24, num_needles=2, cache_dir=str(tmp_path), **SMALL))
    rows = [{r.tobytes() for r in x} for x, _ in (task._train, task._val, task._test)]
    assert not rows[0] & rows[1] and not rows[2] & (rows[0] | rows[1])


@pytest.mark.parametrize("kwargs, match", [
    (dict(vocab_size=16, num_needles=5), r"task.vocab_size=16 is too small for task.num_needles=5"),
    (dict(vocab_size=16, num_needles=2, num_values=4), r"vocab_size - 1 - vocab_size // 2 >= num_needles \* num_values"),
    (dict(seq_len=10, num_needles=4, num_values=2), r"task.seq_len=10 is too short .* allowed is seq_len >= 15"),
    (dict(num_values=0), r"task.num_values=0 must be a positive integer"),
])
def test_bad_configs_name_the_key(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_task(NeedleConfig(cache_dir=str(tmp_path), **{**SMALL, **kwargs}))
