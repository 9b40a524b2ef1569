"""State-tracking tasks (parity, modular arithmetic with / without brackets, S5):
hand-checked examples, independent recomputation of every target, disjoint splits,
test sequences longer than every training one, test scoring beyond the training lengths,
determinism and the cache."""
from itertools import permutations

import numpy as np
import pytest

from carvelab.trials.tasks import (
    IGNORE_INDEX,
    ModularArithmeticConfig,
    ParityConfig,
    S5Config,
    build_task,
)
from carvelab.trials.tasks.modular_arithmetic import evaluate, random_expression
from carvelab.trials.tasks.s5 import composition_table

SMALL = dict(train_examples=600, val_examples=64, test_examples=64)


def _arrays(task):
    return {"train": task._train, "val": task._val, "test": task._test}


def _real_lengths(task, inputs):
    return (inputs != task.pad).sum(1)


@pytest.fixture
def tasks(tmp_path):
    return {
        "parity": build_task(ParityConfig(cache_dir=str(tmp_path), **SMALL)),
        "s5": build_task(S5Config(cache_dir=str(tmp_path), **SMALL)),
        "mod": build_task(ModularArithmeticConfig(cache_dir=str(tmp_path), **SMALL)),
        "brackets": build_task(ModularArithmeticConfig(brackets=True, cache_dir=str(tmp_path), **SMALL)),
    }


def test_hand_checked_examples():
    # parity: 1 0 1 1 0 -> running parity 1 1 0 1 1
    bits = np.array([[1, 0, 1, 1, 0]])
    assert (np.cumsum(bits, 1) % 2).tolist() == [[1, 1, 0, 1, 1]]
    # S5: 24 = swap(0, 1), 1 = swap(3, 4): products 24, 25 = (1, 0, 2, 4, 3), 24
    perms = list(permutations(range(5)))
    assert perms[1] == (0, 1, 2, 4, 3) and perms[24] == (1, 0, 2, 3, 4) and perms[25] == (1, 0, 2, 4, 3)
    table = composition_table()
    assert table[0, 24] == 24 and table[24, 1] == 25 and table[25, 1] == 24
    # modular arithmetic, m = 5: tokens + 5, - 6, * 7, ( 8, ) 9
    assert evaluate([3, 5, 4, 7, 2, 6, 1], 5) == 0                     # 3 + 4 * 2 - 1 = 10
    assert evaluate([8, 1, 5, 3, 9, 7, 4], 5) == 1                     # (1 + 3) * 4 = 16
    assert evaluate([1, 5, 3, 7, 4], 5) == 3                           # 1 + 3 * 4 = 13
    assert evaluate([2, 6, 3], 5) == 4                                 # 2 - 3 = -1
    assert evaluate([2, 6, 8, 3, 6, 4, 9, 7, 2], 5) == 4               # 2 - (3 - 4) * 2 = 4


def test_every_target_recomputed_independently(tasks):
    """Each row's targets from its inputs, by code that shares nothing with the generators."""
    perms = list(permutations(range(5)))
    index = {p: i for i, p in enumerate(perms)}
    for split, (inputs, targets) in _arrays(tasks["parity"]).items():
        for x, y in zip(inputs[:20], targets[:20]):
            parity = 0
            for t, (a, b) in enumerate(zip(x, y)):
                if a == 2:
                    assert b == IGNORE_INDEX
                    continue
                parity ^= int(a)
                assert b == (parity if split != "test" or t >= 40 else IGNORE_INDEX)
    for inputs, targets in _arrays(tasks["s5"]).values():
        for x, y in zip(inputs[:10], targets[:10]):
            state = tuple(range(5))
            for a, b in zip(x, y):
                if a == 120:
                    break
                state = tuple(perms[a][state[i]] for i in range(5))
                assert b in (index[state], IGNORE_INDEX)
    chars = {5: "+", 6: "-", 7: "*", 8: "(", 9: ")"}
    for key in ("mod", "brackets"):
        for inputs, targets in _arrays(tasks[key]).values():
            for x, y in zip(inputs[:20], targets[:20]):
                text = ""
                for a, b in zip(x, y):
                    if a == 11:                       # pad
                        assert b == IGNORE_INDEX
                        continue
                    if a == 10:                       # '='
                        assert b == eval(text) % 5
                        continue
                    text += chars.get(int(a), str(int(a)))
                    if b != IGNORE_INDEX:
                        assert key == "mod" and a < 5 and b == eval(text) % 5


def test_random_expressions_evaluate_like_python():
    rng = np.random.default_rng(0)
    chars = {7: "+", 8: "-", 9: "*", 10: "(", 11: ")"}
    for length in (1, 3, 5, 11, 41, 101):
        for _ in range(20):
            expr = random_expression(rng, length, 7)
            assert len(expr) == length
            assert evaluate(expr, 7) == eval("".join(chars.get(t, str(t)) for t in expr)) % 7
    with pytest.raises(ValueError, match="odd number of tokens"):
        random_expression(rng, 4, 5)


def test_splits_are_disjoint_and_test_is_longer(tasks):
    for name, task in tasks.items():
        arrays = _arrays(task)
        rows = {split: {r.tobytes() for r in inputs} for split, (inputs, _) in arrays.items()}
        assert not rows["train"] & rows["val"], name
        assert not rows["test"] & (rows["train"] | rows["val"]), name
        train_len = _real_lengths(task, arrays["train"][0])
        test_len = _real_lengths(task, arrays["test"][0])
        assert arrays["train"][0].shape[1] == 40 and arrays["test"][0].shape[1] == 256, name
        assert train_len.min() >= (2 if name == "brackets" else 3) and train_len.max() <= 40, name
        assert test_len.min() >= 41 and test_len.max() <= 256, name
        assert test_len.min() > train_len.max(), name
        assert test_len.mean() > 4 * train_len.mean(), name
        if name == "brackets":
            assert (train_len % 2 == 0).all() and (test_len % 2 == 0).all()


def test_test_split_scores_only_beyond_the_training_lengths(tasks):
    for name in ("parity", "s5", "mod"):
        _, targets = tasks[name]._test
        scored = np.nonzero(targets != IGNORE_INDEX)[1]
        assert scored.min() >= 40 and scored.size > 0, name     # prefixes of 41+ tokens
        _, train_targets = tasks[name]._train
        assert (train_targets[:, 0] != IGNORE_INDEX).all(), name  # training scores every prefix
    inputs, targets = tasks["brackets"]._test
    scored = targets != IGNORE_INDEX
    assert (scored.sum(1) == 1).all()
    assert (inputs[scored] == 10).all()                          # the '=' token, only


def test_deterministic_per_seed_and_cached(tmp_path):
    a = build_task(ParityConfig(cache_dir=str(tmp_path / "a"), **SMALL))
    b = build_task(ParityConfig(cache_dir=str(tmp_path / "b"), **SMALL))
    assert a.cache_path.is_file()
    for (x1, y1), (x2, y2) in zip(_arrays(a).values(), _arrays(b).values()):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert np.array_equal(a.train_batch(3, 8)[0], b.train_batch(3, 8)[0])
    again = build_task(ParityConfig(cache_dir=str(tmp_path / "a"), **SMALL))
    assert np.array_equal(again._test[0], a._test[0])
    other = build_task(ParityConfig(cache_dir=str(tmp_path / "a"), data_seed=1, **SMALL))
    assert other.cache_path != a.cache_path and not np.array_equal(other._train[0], a._train[0])
    longer = build_task(ParityConfig(cache_dir=str(tmp_path / "a"), test_seq_len=100, **SMALL))
    assert longer.cache_path != a.cache_path and longer._test[0].shape == (64, 100)


@pytest.mark.parametrize("cls, kwargs, match", [
    (ParityConfig, dict(min_len=50), r"task.min_len=50 must not exceed task.seq_len=40"),
    (ParityConfig, dict(test_min_len=300), r"task.test_min_len=300 must not exceed task.test_seq_len=256"),
    (ParityConfig, dict(vocab_size=2), r"task.vocab_size=2 is too small for task 'parity': allowed is vocab_size >= 3"),
    (S5Config, dict(vocab_size=120), r"vocab_size >= 121"),
    (ModularArithmeticConfig, dict(modulus=1), r"task.modulus=1 must be an integer >= 2"),
    (ModularArithmeticConfig, dict(modulus=7), r"task.vocab_size=12 is too small .* vocab_size >= 14"),
    (ModularArithmeticConfig, dict(brackets=True, test_min_len=41, test_seq_len=41),
     r"task.brackets=true needs an even length >= 2 in \[task.test_min_len, task.test_seq_len\] = \[41, 41\]"),
], ids=["min-len", "test-min-len", "parity-vocab", "s5-vocab", "modulus", "mod-vocab", "brackets-odd"])
def test_bad_configs_name_the_key(tmp_path, cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_task(cls(cache_dir=str(tmp_path), **{**SMALL, **kwargs}))
