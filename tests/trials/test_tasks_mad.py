"""MAD's six tasks: the docstrings' hand-checked examples, every generated target recomputed
by code that shares nothing with the generators, row structure, disjoint splits,
determinism per seed, config errors, and MAD's benchmark settings."""
from __future__ import annotations

import numpy as np
import pytest

from carvelab.trials.tasks.base import IGNORE_INDEX
from carvelab.trials.tasks.mad import MAD_SETTINGS
from carvelab.trials.tasks.mad_compression import CompressionConfig, CompressionTask
from carvelab.trials.tasks.mad_fuzzy_recall import FuzzyRecallConfig, FuzzyRecallTask
from carvelab.trials.tasks.mad_in_context_recall import InContextRecallConfig, InContextRecallTask
from carvelab.trials.tasks.mad_memorization import MemorizationConfig, MemorizationTask
from carvelab.trials.tasks.mad_noisy_recall import NoisyRecallConfig, NoisyRecallTask
from carvelab.trials.tasks.mad_selective_copying import SelectiveCopyingConfig, SelectiveCopyingTask

_ = IGNORE_INDEX
SMALL = dict(train_examples=200, val_examples=50, test_examples=50)
TASKS = {
    "mad_in_context_recall": (InContextRecallConfig, InContextRecallTask),
    "mad_noisy_recall": (NoisyRecallConfig, NoisyRecallTask),
    "mad_fuzzy_recall": (FuzzyRecallConfig, FuzzyRecallTask),
    "mad_selective_copying": (SelectiveCopyingConfig, SelectiveCopyingTask),
    "mad_compression": (CompressionConfig, CompressionTask),
    "mad_memorization": (MemorizationConfig, MemorizationTask),
}
TINY = {   # the docstrings' example vocabularies, at lengths with room for distinct splits
    "mad_in_context_recall": dict(vocab_size=8, seq_len=20),
    "mad_noisy_recall": dict(vocab_size=12, noise_vocab_size=4, frac_noise=0.5, seq_len=20),
    "mad_fuzzy_recall": dict(vocab_size=8, k_motif_size=2, v_motif_size=2, seq_len=24),
    "mad_selective_copying": dict(vocab_size=6, num_tokens_to_copy=3, seq_len=12),
    "mad_compression": dict(vocab_size=5, seq_len=12),
    "mad_memorization": dict(vocab_size=33, seq_len=8, train_examples=64),
}


def build(name, tmp_path, **overrides):
    Config, Task = TASKS[name]
    fields = {**SMALL, **TINY[name], "cache_dir": str(tmp_path), **overrides}
    return Task(Config(**fields))


def splits(task):
    return {"train": task._train, "val": task._val, "test": task._test}


# ---------------------------------------------------------------- independent solvers
def recall_targets(x, vocab_size, noise=0):
    """Keys < K, values in [K, S), noise >= S (S = V - noise); pairs at (2i, 2i + 1)."""
    symbols = vocab_size - noise
    num_keys, known, out = symbols // 2, {}, [_] * len(x)
    for i in range(0, len(x), 2):
        key, value = int(x[i]), int(x[i + 1])
        if key >= symbols:
            assert value >= symbols                          # a noise pair: two noise tokens
            continue
        assert key < num_keys <= value < symbols
        if key in known:
            assert known[key] == value
            out[i] = value
        known[key] = value
    assert out[-2] != _                                      # the final query is a recall
    return out


def fuzzy_targets(x, last, vocab_size, k_motif, v_motif):
    """Parse the runs of key tokens (< K) and value tokens; score values of repeated keys.

    ``last`` is the final target (the row's T+1-th token, the query's last value token)."""
    pad, num_keys = vocab_size - 1, (vocab_size - 1) // 2
    full = [int(t) for t in x] + [int(last)]
    start = next(i for i, t in enumerate(full) if t != pad)
    assert start >= 2 and pad not in full[start:]
    runs, pos = [], start
    while pos < len(full):
        kind = full[pos] < num_keys
        end = pos
        while end < len(full) and (full[end] < num_keys) == kind:
            end += 1
        runs.append((pos, tuple(full[pos:end])))
        pos = end
    assert len(runs) % 2 == 0 and runs[0][1][0] < num_keys   # key, value, key, value, ...
    known, unshifted, sizes = {}, [_] * len(full), []
    for (_k, key), (at, value) in zip(runs[0::2], runs[1::2]):
        assert 1 <= len(key) <= k_motif and len(set(key)) == len(key)
        assert 1 <= len(value) <= v_motif and len(set(value)) == len(value)
        if key in known:
            assert known[key] == value
            unshifted[at:at + len(value)] = value
        known[key] = value
        sizes.append(len(key))
    assert unshifted[-1] != _                               # the final query is a recall
    return unshifted[1:], sizes


def copy_targets(x, vocab_size, num_copy):
    blank, copy, T = vocab_size - 2, vocab_size - 1, len(x)
    head = [int(t) for t in x[:T - num_copy - 1]]
    content = [t for t in head if t != blank]
    assert len(content) == num_copy and max(content) < blank
    assert head[-1] != blank                                 # MAD: no blank after the last token
    assert x[T - num_copy - 1] == copy and (x[T - num_copy:] == blank).all()
    return [_] * (T - num_copy) + content


def compression_targets(x, vocab_size):
    n = len(x) // 2
    assert (x[:n] < vocab_size - 1).all() and (x[n:] == vocab_size - 1).all()
    return [_] * n + [int(t) for t in x[:n]]


# ---------------------------------------------------------------- hand-checked examples
def test_the_docstring_examples_by_the_independent_solvers():
    assert recall_targets([2, 5, 0, 7, 2, 5, 3, 4, 0, 7], 8) == [_, _, _, _, 5, _, _, _, 7, _]
    assert recall_targets([2, 5, 9, 11, 2, 5, 3, 4, 2, 5], 12, noise=4) == [_, _, _, _, 5, _, _, _, 5, _]
    fuzzy = [7, 7, 7, 7, 7, 0, 1, 4, 2, 3, 5, 0, 1, 4, 2, 3]
    assert fuzzy_targets(fuzzy, 5, 8, 2, 2)[0] == [_] * 12 + [4, _, 3, 5]
    assert copy_targets(np.array([4, 2, 4, 4, 0, 3, 5, 4, 4, 4]), 6, 3) == [_] * 7 + [2, 0, 3]
    assert compression_targets(np.array([2, 0, 3, 3, 4, 4, 4, 4]), 5) == [_] * 4 + [2, 0, 3, 3]


def test_recall_rows_recomputed(tmp_path):
    for name, noise in (("mad_in_context_recall", 0), ("mad_noisy_recall", 4)):
        task = build(name, tmp_path)
        noisy_pairs = 0
        for inputs, targets in splits(task).values():
            assert inputs.shape[1] == 20
            for x, y in zip(inputs, targets):
                assert recall_targets(x, task.vocab_size, noise) == y.tolist()
                noisy_pairs += int((x[0::2] >= task.vocab_size - noise).sum())
        assert (noisy_pairs > 0) == (noise > 0)
        x, y = task._train[0][0], task._train[1][0]
        assert y[-1] == _ and (y[1::2] == _).all() and y[-2] == x[-1]   # scored: key -> next token


def test_fuzzy_rows_recomputed_and_key_sizes_per_split(tmp_path):
    task = build("mad_fuzzy_recall", tmp_path)
    for split, (inputs, targets) in splits(task).items():
        sizes = set()
        for x, y in zip(inputs, targets):
            expected, key_sizes = fuzzy_targets(x, y[-1], 8, 2, 2)
            assert expected == y.tolist()
            sizes.update(key_sizes)
        assert sizes == ({1, 2} if split == "train" else {2}), split
    x, y = task._test
    scored = y != _
    assert (y[scored] >= 3).all() and (y[scored] < 7).all()


def test_copying_and_compression_rows_recomputed(tmp_path):
    copying = build("mad_selective_copying", tmp_path)
    compression = build("mad_compression", tmp_path)
    for inputs, targets in splits(copying).values():
        for x, y in zip(inputs, targets):
            assert copy_targets(x, 6, 3) == y.tolist()
        assert (inputs[:, 0] == 4).any() and (inputs[:, 0] != 4).any()   # blanks are scattered
    for inputs, targets in splits(compression).values():
        for x, y in zip(inputs, targets):
            assert compression_targets(x, 5) == y.tolist()


def test_memorization_shares_one_mapping_across_splits(tmp_path):
    task = build("mad_memorization", tmp_path)
    num_keys, mapping, keys_in = 16, {}, {}
    for split, (inputs, targets) in splits(task).items():
        assert (inputs[:, 1::2] == 32).all() and (inputs[:, 0::2] < num_keys).all()
        assert (targets[:, 0::2] == _).all()
        for key, value in zip(inputs[:, 0::2].ravel().tolist(), targets[:, 1::2].ravel().tolist()):
            assert mapping.setdefault(key, value) == value        # one value per key, everywhere
            keys_in.setdefault(split, set()).add(key)
    assert len(mapping) == num_keys and len(set(mapping.values())) == num_keys   # injective
    assert all(num_keys <= v < 32 for v in mapping.values())
    assert keys_in["test"] <= keys_in["train"]                    # every test fact was trained on
    assert [mapping[k] for k in range(num_keys)] == task.value_of.tolist()
    longer = build("mad_memorization", tmp_path, seq_len=16)      # the mapping is the seed's
    assert np.array_equal(longer.value_of, task.value_of)
    other = build("mad_memorization", tmp_path, data_seed=1)
    assert not np.array_equal(other.value_of, task.value_of)


# ---------------------------------------------------------------- every task
@pytest.mark.parametrize("name", list(TASKS))
def test_splits_disjoint_deterministic_and_in_vocab(tmp_path, name):
    a = build(name, tmp_path / "a")
    b = build(name, tmp_path / "b")
    assert a.name == name and a.Config().name == name
    rows = {split: {r.tobytes() for r in inputs} for split, (inputs, _t) in splits(a).items()}
    assert not rows["train"] & rows["val"]
    assert not rows["test"] & (rows["train"] | rows["val"])
    for (x1, y1), (x2, y2) in zip(splits(a).values(), splits(b).values()):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
        assert x1.min() >= 0 and x1.max() < a.vocab_size and y1.max() < a.vocab_size
        assert ((y1 == _) | (y1 >= 0)).all() and (y1 != _).any(axis=1).all()
    assert a.cache_path.is_file()
    inputs, targets = a.train_batch(2, 8)
    assert inputs.shape == targets.shape == (8, a.seq_len)
    other = build(name, tmp_path / "a", data_seed=1)
    assert other.cache_path != a.cache_path and not np.array_equal(other._train[0], a._train[0])


BAD = [
    ("mad_in_context_recall", dict(seq_len=21), "seq_len"),
    ("mad_in_context_recall", dict(seq_len=2), "seq_len"),
    ("mad_in_context_recall", dict(vocab_size=1), "vocab_size"),
    ("mad_in_context_recall", dict(train_examples=0), "train_examples"),
    ("mad_noisy_recall", dict(frac_noise=1.0), "frac_noise"),
    ("mad_noisy_recall", dict(frac_noise=-0.1), "frac_noise"),
    ("mad_noisy_recall", dict(noise_vocab_size=0), "noise_vocab_size"),
    ("mad_noisy_recall", dict(vocab_size=5, noise_vocab_size=4), "vocab_size"),
    ("mad_fuzzy_recall", dict(k_motif_size=0), "k_motif_size"),
    ("mad_fuzzy_recall", dict(v_motif_size=5), "vocab_size"),        # V = 8: 4 value tokens
    ("mad_fuzzy_recall", dict(k_motif_size=4), "vocab_size"),        # V = 8: 3 key tokens
    ("mad_fuzzy_recall", dict(seq_len=8), "seq_len"),
    ("mad_selective_copying", dict(seq_len=7), "seq_len"),
    ("mad_selective_copying", dict(vocab_size=2), "vocab_size"),
    ("mad_selective_copying", dict(num_tokens_to_copy=-1), "num_tokens_to_copy"),
    ("mad_compression", dict(seq_len=13), "seq_len"),
    ("mad_compression", dict(vocab_size=1), "vocab_size"),
    ("mad_memorization", dict(seq_len=9), "seq_len"),
    ("mad_memorization", dict(vocab_size=2), "vocab_size"),
]


@pytest.mark.parametrize("name, overrides, key", BAD)
def test_bad_configs_name_the_key(tmp_path, name, overrides, key):
    with pytest.raises(ValueError, match=rf"task\.{key}="):
        build(name, tmp_path, **overrides)


# ---------------------------------------------------------------- MAD's benchmark grid
MAD_BASELINES = {   # configs/tasks/*.yml of athms/mad-lab, in our field names
    "mad_in_context_recall": dict(vocab_size=16, seq_len=128, train_examples=12800),
    "mad_noisy_recall": dict(vocab_size=32, noise_vocab_size=16, seq_len=128, train_examples=12800,
                             frac_noise=0.2),
    "mad_fuzzy_recall": dict(vocab_size=16, seq_len=128, train_examples=12800, k_motif_size=3,
                             v_motif_size=3),
    "mad_selective_copying": dict(vocab_size=16, seq_len=256, num_tokens_to_copy=16, train_examples=12800),
    "mad_compression": dict(vocab_size=16, seq_len=62, train_examples=12800),   # MAD seq_len 32
    "mad_memorization": dict(vocab_size=256, seq_len=32, train_examples=256),
}


def test_mad_settings_are_the_benchmark_and_every_one_builds(tmp_path):
    assert set(MAD_SETTINGS) == set(TASKS)
    assert {k: len(v) for k, v in MAD_SETTINGS.items()} == {
        "mad_in_context_recall": 11, "mad_fuzzy_recall": 11, "mad_noisy_recall": 14,
        "mad_selective_copying": 13, "mad_compression": 11, "mad_memorization": 6}
    assert sum(len(v) for v in MAD_SETTINGS.values()) == 66
    assert {"vocab_size": 144} in MAD_SETTINGS["mad_noisy_recall"]
    assert {"seq_len": 510} in MAD_SETTINGS["mad_compression"]
    for name, settings in MAD_SETTINGS.items():
        Config, Task = TASKS[name]
        baseline = Config()
        assert settings[0] == {} and all(len(s) == 1 for s in settings[1:])
        assert {k: getattr(baseline, k) for k in MAD_BASELINES[name]} == MAD_BASELINES[name]
        assert baseline.test_examples == 1280
        for setting in settings:
            Config(**setting)                                        # valid at MAD's sizes
            small = dict(train_examples=min(64, setting.get("train_examples", 64)),
                         val_examples=8, test_examples=8)
            task = Task(Config(**{**setting, **small, "cache_dir": str(tmp_path)}))
            assert task.seq_len == setting.get("seq_len", baseline.seq_len)
            assert task.vocab_size == setting.get("vocab_size", baseline.vocab_size)
            assert (task._test[1] != _).any(axis=1).all()
