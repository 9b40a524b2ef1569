"""Update-MQAR: the latest-value solver recovers every target, the first-value one cannot."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from carvelab.trials.tasks import IGNORE_INDEX, UpdateMQARConfig, UpdateMQARTask, build_task


def make_cfg(tmp_path, **overrides) -> UpdateMQARConfig:
    fields = dict(name="update_mqar", vocab_size=70, seq_len=53, num_kv_pairs=5, num_updates=3,
                  train_examples=257, val_examples=61, data_seed=1,
                  cache_dir=str(tmp_path / "cache"))
    fields.update(overrides)
    return UpdateMQARConfig(**fields)


def validation_set(task):
    pairs = list(task.val_batches(19))
    return (torch.cat([p[0] for p in pairs]).numpy(), torch.cat([p[1] for p in pairs]).numpy())


def solve(seq, key_vocab: int, keep: str) -> dict[int, int]:
    """Position -> value a solver recalls for each key token seen before.

    ``keep="latest"`` lets a later "key value" pair overwrite the key's value;
    ``keep="first"`` remembers only the first value ever given to a key.
    """
    known, answers = {}, {}
    for t, tok in enumerate(seq.tolist()):
        if tok >= key_vocab:
            continue
        if tok in known:
            answers[t] = known[tok]
        if t + 1 < len(seq) and (keep == "latest" or tok not in known):
            known[tok] = int(seq[t + 1])
    return answers


def solver_hits(inputs, targets, key_vocab: int, keep: str) -> np.ndarray:
    """Per example, whether the solver recovers every scored target."""
    hits = []
    for seq, tgt in zip(inputs, targets):
        answers = solve(seq, key_vocab, keep)
        scored = np.flatnonzero(tgt != IGNORE_INDEX)
        hits.append([answers.get(int(t)) for t in scored] == tgt[scored].tolist())
    return np.array(hits)


CASES = [
    pytest.param(dict(), id="V70-T53-N5-U3"),
    pytest.param(dict(vocab_size=41, seq_len=81, num_kv_pairs=12, num_updates=7), id="V41-T81-N12-U7"),
    pytest.param(dict(vocab_size=16, seq_len=32, num_kv_pairs=4, num_updates=4), id="V16-T32-N4-U4-tight"),
    pytest.param(dict(num_updates=1), id="U1"),
]


@pytest.mark.parametrize("overrides", CASES)
def test_latest_value_solver_recovers_every_target(tmp_path, overrides):
    task = build_task(make_cfg(tmp_path, **overrides))
    inputs, targets = validation_set(task)
    assert solver_hits(inputs, targets, task.vocab_size // 2, keep="latest").all()
    x, y = task.train_batch(3, 40)
    assert solver_hits(x.numpy(), y.numpy(), task.vocab_size // 2, keep="latest").all()


@pytest.mark.parametrize("overrides", CASES)
def test_first_value_solver_fails_on_every_example(tmp_path, overrides):
    """Every sequence has U late queries whose answer the update changed."""
    task = build_task(make_cfg(tmp_path, **overrides))
    inputs, targets = validation_set(task)
    assert not solver_hits(inputs, targets, task.vocab_size // 2, keep="first").any()


def test_queries_before_an_update_return_the_old_value(tmp_path):
    """Some scored keys are re-assigned later in the sequence, yet answer the old value."""
    task = build_task(make_cfg(tmp_path, val_examples=300))
    inputs, targets = validation_set(task)
    key_vocab, before_update = task.vocab_size // 2, 0
    for seq, tgt in zip(inputs, targets):
        for t in np.flatnonzero(tgt != IGNORE_INDEX):
            later_values = {int(seq[s + 1]) for s in range(t + 2, len(seq) - 1)
                            if seq[s] == seq[t] and seq[s] < key_vocab}
            if later_values - {int(tgt[t])}:
                before_update += 1
                assert tgt[t] == seq[t + 1]
    assert before_update > 0


@pytest.mark.parametrize("overrides", CASES)
def test_scored_positions_per_example(tmp_path, overrides):
    cfg = make_cfg(tmp_path, **overrides)
    task = build_task(cfg)
    inputs, targets = validation_set(task)
    assert inputs.shape == (cfg.val_examples, cfg.seq_len)
    assert ((targets != IGNORE_INDEX).sum(axis=1) == cfg.num_kv_pairs + cfg.num_updates).all()
    assert inputs.min() >= 0 and inputs.max() < cfg.vocab_size
    rows, cols = np.nonzero(targets != IGNORE_INDEX)
    assert (inputs[rows, cols + 1] == targets[rows, cols]).all()


def test_updated_values_are_new(tmp_path):
    """Each sequence holds N + U distinct values: an update never restates an old value."""
    cfg = make_cfg(tmp_path)
    inputs, _ = validation_set(build_task(cfg))
    key_vocab = cfg.vocab_size // 2
    for seq in inputs:
        assigned = {int(seq[t + 1]) for t in range(len(seq) - 1) if seq[t] < key_vocab}
        assert len(assigned) == cfg.num_kv_pairs + cfg.num_updates


def test_zero_updates_is_plain_recall(tmp_path):
    task = build_task(make_cfg(tmp_path, num_updates=0))
    inputs, targets = validation_set(task)
    assert solver_hits(inputs, targets, task.vocab_size // 2, keep="first").all()
    assert ((targets != IGNORE_INDEX).sum(axis=1) == 5).all()


def test_determinism_and_disjoint_splits(tmp_path):
    task = build_task(make_cfg(tmp_path))
    assert isinstance(task, UpdateMQARTask) and task.quality_metric == "accuracy"
    fresh = build_task(make_cfg(tmp_path, cache_dir=str(tmp_path / "fresh")))
    assert torch.equal(task.train_batch(6, 9)[0], fresh.train_batch(6, 9)[0])
    assert torch.equal(task.train_batch(6, 9)[1], task.train_batch(6, 9)[1])
    assert not torch.equal(task.train_batch(6, 9)[0], task.train_batch(7, 9)[0])
    train = torch.cat([task.train_batch(s, 64)[0] for s in range(5)]).numpy()
    val, _ = validation_set(task)
    assert not {r.tobytes() for r in train} & {r.tobytes() for r in val}


def test_cache_reused_and_keyed_by_num_updates(tmp_path):
    task = build_task(make_cfg(tmp_path))
    mtime = task.cache_path.stat().st_mtime_ns
    assert build_task(make_cfg(tmp_path)).cache_path.stat().st_mtime_ns == mtime
    changed = build_task(make_cfg(tmp_path, num_updates=2))
    assert changed.cache_path != task.cache_path and changed.cache_path.is_file()
    mqar = build_task(make_cfg(tmp_path, name="mqar"))
    assert mqar.cache_path != task.cache_path


@pytest.mark.parametrize("overrides,field", [
    pytest.param(dict(num_updates=6), "task.num_updates", id="more-updates-than-keys"),
    pytest.param(dict(seq_len=31), "task.seq_len", id="no-room-for-updates"),
    pytest.param(dict(vocab_size=14), "task.vocab_size", id="too-few-values"),
])
def test_bad_configs_name_the_field(tmp_path, overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        build_task(make_cfg(tmp_path, **overrides))


def test_test_split_at_a_larger_shape_keeps_the_updates(tmp_path):
    task = build_task(make_cfg(tmp_path, test_seq_len=120, test_num_kv_pairs=12, test_examples=20))
    x, y = next(task.test_batches(20))
    assert x.shape == (20, 120) and ((y != IGNORE_INDEX).sum(1) == 12 + 3).all()
    assert task.train_batch(0, 4)[0].shape == (4, 53)
