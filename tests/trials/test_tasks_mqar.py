"""MQAR: layout checked by an independent dictionary solver, determinism, caching, errors."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from carvelab.trials.tasks import IGNORE_INDEX, MQARConfig, MQARTask, build_task


def make_cfg(tmp_path, **overrides) -> MQARConfig:
    fields = dict(name="mqar", vocab_size=64, seq_len=37, num_kv_pairs=5, train_examples=301,
                  val_examples=53, data_seed=3, cache_dir=str(tmp_path / "cache"))
    fields.update(overrides)
    return MQARConfig(**fields)


def all_examples(task, batch_size=17):
    """The whole validation set as numpy arrays [n, T]."""
    pairs = list(task.val_batches(batch_size))
    return (torch.cat([p[0] for p in pairs]).numpy(), torch.cat([p[1] for p in pairs]).numpy())


def dictionary_answers(seq, key_vocab: int) -> dict[int, int]:
    """Position -> recalled value, for every key token seen before (keys are < key_vocab).

    Reads the layout only: each key token is followed by its value.
    """
    known, answers = {}, {}
    for t, tok in enumerate(seq.tolist()):
        if tok >= key_vocab:
            continue
        if tok in known:
            answers[t] = known[tok]
        if t + 1 < len(seq):
            known[tok] = int(seq[t + 1])
    return answers


SOLVER_CASES = [
    pytest.param(dict(vocab_size=64, seq_len=37, num_kv_pairs=5), id="V64-T37-N5"),
    pytest.param(dict(vocab_size=129, seq_len=70, num_kv_pairs=17), id="V129-T70-N17"),
    pytest.param(dict(vocab_size=10, seq_len=20, num_kv_pairs=5, train_examples=200,
                      val_examples=20), id="V10-T20-N5-tight"),
]


@pytest.mark.parametrize("overrides", SOLVER_CASES)
def test_dictionary_solver_recovers_every_target(tmp_path, overrides):
    task = build_task(make_cfg(tmp_path, **overrides))
    key_vocab = task.vocab_size // 2
    for inputs, targets in (task.train_batch(0, 64), task.train_batch(7, 64)):
        for seq, tgt in zip(inputs.numpy(), targets.numpy()):
            answers = dictionary_answers(seq, key_vocab)
            scored = np.flatnonzero(tgt != IGNORE_INDEX)
            assert [answers.get(int(t)) for t in scored] == tgt[scored].tolist()


@pytest.mark.parametrize("overrides", SOLVER_CASES)
def test_scored_positions_and_tokens(tmp_path, overrides):
    cfg = make_cfg(tmp_path, **overrides)
    task = build_task(cfg)
    inputs, targets = all_examples(task)
    assert inputs.shape == targets.shape == (cfg.val_examples, cfg.seq_len)
    assert ((targets != IGNORE_INDEX).sum(axis=1) == cfg.num_kv_pairs).all()
    assert inputs.min() >= 0 and inputs.max() < task.vocab_size
    # Scored targets are values and equal the next input token (next-token prediction).
    rows, cols = np.nonzero(targets != IGNORE_INDEX)
    assert (targets[rows, cols] >= task.vocab_size // 2).all()
    assert (inputs[rows, cols + 1] == targets[rows, cols]).all()
    assert (cols >= 2 * cfg.num_kv_pairs).all()


def test_context_keys_and_values_are_distinct(tmp_path):
    cfg = make_cfg(tmp_path)
    inputs, _ = all_examples(build_task(cfg))
    context = inputs[:, : 2 * cfg.num_kv_pairs]
    for row in context:
        assert len(set(row[0::2])) == len(set(row[1::2])) == cfg.num_kv_pairs


def test_interface_attributes(tmp_path):
    cfg = make_cfg(tmp_path)
    task = build_task(cfg)
    assert isinstance(task, MQARTask)
    assert (task.name, task.vocab_size, task.seq_len, task.quality_metric) == ("mqar", 64, 37, "accuracy")


def test_same_config_same_batches_and_fresh_cache(tmp_path):
    task = build_task(make_cfg(tmp_path))
    again = build_task(make_cfg(tmp_path, cache_dir=str(tmp_path / "fresh")))
    assert again.cache_path != task.cache_path and again.cache_path.is_file()
    for step in (0, 5, 123):
        x1, y1 = task.train_batch(step, 11)
        x2, y2 = task.train_batch(step, 11)
        x3, y3 = again.train_batch(step, 11)
        assert x1.dtype == y1.dtype == torch.long
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert torch.equal(x1, x3) and torch.equal(y1, y3)


def test_different_steps_and_seeds_differ(tmp_path):
    task = build_task(make_cfg(tmp_path))
    assert not torch.equal(task.train_batch(0, 11)[0], task.train_batch(1, 11)[0])
    other = build_task(make_cfg(tmp_path, data_seed=4))
    assert not torch.equal(task.train_batch(0, 11)[0], other.train_batch(0, 11)[0])


def test_resumed_run_sees_the_same_batch(tmp_path):
    """A fresh task object asked for step 9 directly equals one that walked steps 0..9."""
    walked = build_task(make_cfg(tmp_path))
    batches = [walked.train_batch(step, 13) for step in range(10)]
    resumed = build_task(make_cfg(tmp_path))
    assert torch.equal(resumed.train_batch(9, 13)[0], batches[9][0])


def test_each_epoch_visits_every_training_example_once(tmp_path):
    cfg = make_cfg(tmp_path, train_examples=37)
    task = build_task(cfg)
    stream = torch.cat([task.train_batch(step, 5)[0] for step in range(15)]).numpy()  # 75 rows
    epoch0 = sorted(row.tobytes() for row in stream[:37])
    epoch1 = sorted(row.tobytes() for row in stream[37:74])
    assert epoch0 == epoch1
    assert len(set(epoch0)) == len(set(row.tobytes() for row in stream))


def test_train_and_validation_are_disjoint(tmp_path):
    task = build_task(make_cfg(tmp_path, train_examples=1001))
    train = torch.cat([task.train_batch(s, 77)[0] for s in range(13)]).numpy()
    val, _ = all_examples(task)
    assert not {r.tobytes() for r in train} & {r.tobytes() for r in val}


def test_test_split_is_disjoint_from_train_and_validation(tmp_path):
    task = build_task(make_cfg(tmp_path, train_examples=1001, test_examples=41))
    train = {r.tobytes() for r in torch.cat([task.train_batch(s, 77)[0] for s in range(13)]).numpy()}
    val = {r.tobytes() for r in all_examples(task)[0]}
    test = torch.cat([x for x, _ in task.test_batches(16)]).numpy()
    assert len(test) == 41 and len({r.tobytes() for r in test}) == 41
    assert not {r.tobytes() for r in test} & (train | val)
    assert [len(x) for x, _ in task.test_batches(16, max_batches=2)] == [16, 16]


def test_validation_redraws_collisions_in_a_tiny_space(tmp_path):
    """With 2 keys, 2 values and no free slot, many val draws collide and are redrawn."""
    cfg = make_cfg(tmp_path, vocab_size=4, seq_len=8, num_kv_pairs=2, train_examples=3,
                   val_examples=3, test_examples=3)
    task = build_task(cfg)
    train = {r.tobytes() for r in torch.cat([task.train_batch(s, 3)[0] for s in range(2)]).numpy()}
    val, _ = all_examples(task)
    assert len(val) == 3 and not train & {r.tobytes() for r in val}


def test_power_law_puts_queries_early(tmp_path):
    def early_fraction(power_a: float) -> float:
        cfg = make_cfg(tmp_path, seq_len=81, num_kv_pairs=4, power_a=power_a,
                       train_examples=50, val_examples=2000)
        _, targets = all_examples(build_task(cfg), batch_size=500)
        slots = (np.nonzero(targets != IGNORE_INDEX)[1] - 2 * cfg.num_kv_pairs) // 2
        num_slots = (cfg.seq_len - 2 * cfg.num_kv_pairs) // 2
        return float((slots < num_slots / 2).mean())

    skewed, uniform = early_fraction(0.01), early_fraction(1.0)
    assert skewed > 0.75
    assert abs(uniform - 0.5) < 0.05


def test_val_batches_sizes_and_limit(tmp_path):
    task = build_task(make_cfg(tmp_path))
    assert [len(x) for x, _ in task.val_batches(20)] == [20, 20, 13]
    assert [len(x) for x, _ in task.val_batches(20, max_batches=2)] == [20, 20]
    first = next(task.val_batches(7))[0]
    assert torch.equal(first, next(task.val_batches(7))[0])


def test_cache_is_reused_not_rewritten(tmp_path):
    task = build_task(make_cfg(tmp_path))
    path = task.cache_path
    mtime = path.stat().st_mtime_ns
    again = build_task(make_cfg(tmp_path))
    assert again.cache_path == path and path.stat().st_mtime_ns == mtime
    assert torch.equal(task.train_batch(2, 9)[1], again.train_batch(2, 9)[1])
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


@pytest.mark.parametrize("field,value", [("num_kv_pairs", 6), ("power_a", 0.5), ("data_seed", 7),
                                         ("seq_len", 39), ("vocab_size", 66),
                                         ("train_examples", 300), ("val_examples", 52)])
def test_changed_field_gives_a_different_cache_file(tmp_path, field, value):
    base = build_task(make_cfg(tmp_path))
    changed = build_task(make_cfg(tmp_path, **{field: value}))
    assert changed.cache_path != base.cache_path and changed.cache_path.is_file()


def test_cache_location_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CARVELAB_CACHE", str(tmp_path / "env"))
    task = build_task(make_cfg(tmp_path, cache_dir=None))
    assert task.cache_path.is_relative_to(tmp_path / "env") and task.cache_path.is_file()


def test_damaged_cache_file_is_rebuilt(tmp_path):
    task = build_task(make_cfg(tmp_path))
    expected = task.train_batch(4, 6)[0]
    task.cache_path.write_bytes(b"not an npz")
    rebuilt = build_task(make_cfg(tmp_path))
    assert torch.equal(rebuilt.train_batch(4, 6)[0], expected)
    assert os.path.getsize(rebuilt.cache_path) > 100


@pytest.mark.parametrize("overrides,field", [
    pytest.param(dict(seq_len=19, num_kv_pairs=5), "task.seq_len", id="seq-too-short"),
    pytest.param(dict(vocab_size=9, num_kv_pairs=5), "task.vocab_size", id="vocab-too-small"),
    pytest.param(dict(data_seed=-1), "task.data_seed", id="negative-seed"),
    pytest.param(dict(vocab_size=4, seq_len=8, num_kv_pairs=2, train_examples=50,
                      val_examples=10), "task.val_examples", id="space-too-small"),
])
def test_bad_configs_name_the_field(tmp_path, overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        build_task(make_cfg(tmp_path, **overrides))


@pytest.mark.parametrize("step,batch_size,name", [(-1, 4, "step"), (0, 0, "batch_size"),
                                                  (1.5, 4, "step")])
def test_bad_batch_arguments(tmp_path, step, batch_size, name):
    task = build_task(make_cfg(tmp_path))
    with pytest.raises(ValueError, match=name):
        task.train_batch(step, batch_size)


def test_length_generalisation_tests_a_longer_shape_than_it_trains(tmp_path):
    """Zoology's evaluation beyond the training shape: train at (T, N) = (32, 4), test at (128, 16)."""
    task = build_task(make_cfg(tmp_path, seq_len=32, num_kv_pairs=4, test_seq_len=128, test_num_kv_pairs=16,
                               test_examples=40))
    inputs, targets = task.train_batch(0, 8)
    assert inputs.shape == (8, 32) and ((targets != IGNORE_INDEX).sum(1) == 4).all()
    val = all_examples(task)
    assert val[0].shape[1] == 32
    test = [b for b in task.test_batches(16)]
    x = torch.cat([b[0] for b in test]).numpy()
    y = torch.cat([b[1] for b in test]).numpy()
    assert x.shape == (40, 128) and ((y != IGNORE_INDEX).sum(1) == 16).all()
    key_vocab = task.vocab_size // 2
    for seq, tgt in zip(x, y):                                   # the test split is still MQAR
        answers = dictionary_answers(seq, key_vocab)
        scored = np.flatnonzero(tgt != IGNORE_INDEX)
        assert [answers.get(int(t)) for t in scored] == tgt[scored].tolist()
    same = build_task(make_cfg(tmp_path, seq_len=32, num_kv_pairs=4))
    assert same.cache_path != task.cache_path
    assert next(same.test_batches(4))[0].shape[1] == 32          # by default the test split is as trained


def test_length_generalisation_refuses_a_test_shape_that_cannot_be_generated(tmp_path):
    with pytest.raises(ValueError, match=r"the test split \(task.test_seq_len=32, task.test_num_kv_pairs=16\): "
                                         r"task.seq_len=32 is too short"):
        build_task(make_cfg(tmp_path, seq_len=32, num_kv_pairs=4, test_seq_len=32, test_num_kv_pairs=16))
    with pytest.raises(ValueError, match=r"task.test_seq_len=0 must be a positive integer"):
        make_cfg(tmp_path, test_seq_len=0)
