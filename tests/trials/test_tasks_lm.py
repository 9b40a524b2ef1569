"""LM task: stdlib corpus split by file, text and uint16 .bin files, windows, caching, errors."""
from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from carvelab.trials.tasks import LMConfig, LMTask, _corpus, build_task

SMALL_STDLIB = 300_000  # bytes: enough for a few dozen files, builds in well under a second


def make_cfg(tmp_path, **overrides) -> LMConfig:
    fields = dict(name="lm", seq_len=31, val_examples=23, data_seed=5,
                  cache_dir=str(tmp_path / "cache"))
    fields.update(overrides)
    return LMConfig(**fields)


@pytest.fixture
def small_stdlib(monkeypatch):
    monkeypatch.setattr(_corpus, "STDLIB_MAX_BYTES", SMALL_STDLIB)


def write_text(path, n_bytes: int, seed: int = 0) -> bytes:
    """Pseudo-random lowercase words, ``n_bytes`` long."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     \n", dtype=np.uint8)
    data = letters[rng.integers(0, len(letters), n_bytes)].tobytes()
    path.write_bytes(data)
    return data


def window_bytes(inputs, targets) -> list[bytes]:
    """Each window's T + 1 tokens as bytes (inputs then the last target)."""
    full = torch.cat([inputs, targets[:, -1:]], dim=1)
    return [bytes(row.tolist()) for row in full]


def test_stdlib_splits_by_file(tmp_path, small_stdlib):
    task = build_task(make_cfg(tmp_path))
    assert isinstance(task, LMTask) and task.quality_metric == "loss" and task.vocab_size == 256
    assert task.train_files and task.val_files
    assert not set(task.train_files) & set(task.val_files)
    assert all(f.endswith(".py") and "site-packages" not in f for f in task.train_files)


def test_stdlib_windows_come_from_their_split(tmp_path, small_stdlib):
    """The longest document piece of every window is a substring of a file of its split."""
    task = build_task(make_cfg(tmp_path))
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = {split: [(root / f).read_bytes() for f in files]
             for split, files in (("train", task.train_files), ("val", task.val_files))}
    val_windows = [w for x, y in task.val_batches(8) for w in window_bytes(x, y)]
    train_windows = window_bytes(*task.train_batch(3, 16))
    for split, windows in (("val", val_windows), ("train", train_windows)):
        for window in windows:
            piece = max(window.split(_corpus.END_OF_DOCUMENT), key=len)
            assert any(piece in text for text in texts[split]), (split, piece)


def test_targets_are_inputs_shifted_by_one(tmp_path, small_stdlib):
    task = build_task(make_cfg(tmp_path))
    for inputs, targets in [task.train_batch(0, 7), next(task.val_batches(5))]:
        assert inputs.shape == targets.shape and inputs.shape[1] == 31
        assert inputs.dtype == targets.dtype == torch.long
        assert torch.equal(inputs[:, 1:], targets[:, :-1])
        assert int(inputs.max()) < 256 and int(targets.min()) >= 0


def test_stdlib_batches_are_deterministic(tmp_path, small_stdlib):
    task = build_task(make_cfg(tmp_path))
    fresh = build_task(make_cfg(tmp_path, cache_dir=str(tmp_path / "fresh")))
    for step in (0, 11):
        assert torch.equal(task.train_batch(step, 6)[0], task.train_batch(step, 6)[0])
        assert torch.equal(task.train_batch(step, 6)[0], fresh.train_batch(step, 6)[0])
    assert not torch.equal(task.train_batch(0, 6)[0], task.train_batch(1, 6)[0])
    other_seed = build_task(make_cfg(tmp_path, data_seed=6))
    assert not torch.equal(task.train_batch(0, 6)[0], other_seed.train_batch(0, 6)[0])
    val = [x for x, _ in task.val_batches(10)]
    assert [len(x) for x in val] == [10, 10, 3]
    assert torch.equal(torch.cat(val), torch.cat([x for x, _ in fresh.val_batches(23)]))
    assert len(list(task.val_batches(4, max_batches=2))) == 2


def test_stdlib_cache_is_reused(tmp_path, small_stdlib):
    build_task(make_cfg(tmp_path))
    files = list((tmp_path / "cache" / "tasks").glob("lm-stdlib-*.npz"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    build_task(make_cfg(tmp_path, seq_len=17, data_seed=9))  # same corpus, other windows
    assert list((tmp_path / "cache" / "tasks").glob("lm-stdlib-*.npz")) == files
    assert files[0].stat().st_mtime_ns == mtime


def test_text_file_last_five_percent_is_held_out_in_two_halves(tmp_path):
    """The last 5% is held out: validation windows in its first half, test windows in its second."""
    data = write_text(tmp_path / "corpus.txt", 4001)
    task = build_task(make_cfg(tmp_path, data_path=str(tmp_path / "corpus.txt"), vocab_size=512,
                               test_examples=11))
    assert task.vocab_size == 256
    split = 4001 - 201  # ceil(5% of 4001) = 201 held-out bytes: 100 validation, 101 test
    head, val_part, test_part = data[:split], data[split:split + 100], data[split + 100:]
    val_windows = [w for x, y in task.val_batches(7) for w in window_bytes(x, y)]
    test_windows = [w for x, y in task.test_batches(4) for w in window_bytes(x, y)]
    assert len(val_windows) == 23 and len(test_windows) == 11
    assert val_windows[0] == val_part[:32] and val_windows[-1] == val_part[-32:]
    assert test_windows[0] == test_part[:32] and test_windows[-1] == test_part[-32:]
    assert all(w in head for w in window_bytes(*task.train_batch(2, 9)))


def write_tokens(path, tokens) -> np.ndarray:
    array = np.asarray(tokens, dtype=np.uint16)
    array.tofile(path)
    return array


@pytest.mark.parametrize("largest,configured,expected", [
    pytest.param(300, 128, 320, id="max300-rounds-to-320"),
    pytest.param(255, 128, 256, id="max255-is-256"),
    pytest.param(1000, 2048, 2048, id="configured-larger"),
    pytest.param(50_000, 128, 50_048, id="gpt2-like"),
])
def test_bin_vocab_size(tmp_path, largest, configured, expected):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, largest, 1997)
    tokens[500] = largest
    write_tokens(tmp_path / "tokens.bin", tokens)
    task = build_task(make_cfg(tmp_path, data_path=str(tmp_path / "tokens.bin"),
                               vocab_size=configured))
    assert task.vocab_size == expected


def test_bin_without_sibling_uses_last_five_percent(tmp_path):
    write_tokens(tmp_path / "tokens.bin", np.arange(2003))  # token id = position
    task = build_task(make_cfg(tmp_path, data_path=str(tmp_path / "tokens.bin")))
    assert task.vocab_size == 2048
    split = 2003 - 101  # ceil(5% of 2003) = 101 validation tokens
    val_inputs = torch.cat([x for x, _ in task.val_batches(10)])
    assert int(val_inputs.min()) == split and len(val_inputs) == 23
    x, y = task.train_batch(0, 5)
    window = torch.cat([x, y[:, -1:]], dim=1)
    assert int(window.max()) < split
    assert torch.equal(window, x[:, :1] + torch.arange(32))  # consecutive tokens


def test_train_bin_uses_sibling_val_bin(tmp_path):
    write_tokens(tmp_path / "train.bin", np.arange(1500) % 400)
    write_tokens(tmp_path / "val.bin", 500 + np.arange(301) % 100)
    task = build_task(make_cfg(tmp_path, data_path=str(tmp_path / "train.bin")))
    assert task.vocab_size == 640  # largest token 599 (val.bin) -> 600 -> 640
    val_inputs = torch.cat([x for x, _ in task.val_batches(10)])
    assert int(val_inputs.min()) >= 500
    train_inputs, _ = task.train_batch(4, 32)
    assert int(train_inputs.max()) < 400


@pytest.mark.parametrize("setup,field", [
    pytest.param("missing", "task.data_path", id="missing-file"),
    pytest.param("empty", "task.data_path", id="empty-file"),
    pytest.param("odd-bin", "task.data_path", id="odd-byte-bin"),
    pytest.param("short", "task.seq_len", id="shorter-than-a-window"),
    pytest.param("seed", "task.data_seed", id="negative-seed"),
])
def test_bad_configs_name_the_field(tmp_path, setup, field):
    path = tmp_path / {"odd-bin": "x.bin"}.get(setup, "x.txt")
    overrides = {"data_path": str(path)}
    if setup == "empty":
        path.write_bytes(b"")
    elif setup == "odd-bin":
        path.write_bytes(b"\x01\x00\x02")
    elif setup == "short":
        write_text(path, 300)  # 15 validation bytes < seq_len + 1
    elif setup == "seed":
        write_text(path, 3000)
        overrides["data_seed"] = -2
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        build_task(make_cfg(tmp_path, **overrides))


def test_bad_batch_arguments(tmp_path):
    write_text(tmp_path / "c.txt", 3000)
    task = build_task(make_cfg(tmp_path, data_path=str(tmp_path / "c.txt")))
    with pytest.raises(ValueError, match="batch_size"):
        task.train_batch(0, 0)
    with pytest.raises(ValueError, match="max_batches"):
        next(task.val_batches(4, max_batches=-1))
