"""Token streams for the language-modelling task: where the bytes/tokens come from.

Three sources, chosen by ``task.data_path``:

- ``None``: the Python standard library's own ``.py`` files (offline, always present),
  byte-level (vocab 256). Files under ``site-packages``/``dist-packages`` and the test
  suites are skipped (they differ between installations). Files are taken in a fixed
  pseudo-random order (a hash of the relative path, so the sample spans the whole
  library instead of its alphabetical start) until ``STDLIB_MAX_BYTES`` is reached; a
  second hash of the path sends ~5% of the files to validation, so the two splits never
  share a file. Each file is followed by a NUL byte (end of document). Cached on disk.
- a ``.bin`` file: pre-tokenised uint16 tokens (nanoGPT layout, a flat ``np.uint16``
  array). ``.../train.bin`` with a sibling ``val.bin`` uses that for validation, any
  other file its last 5%. Vocabulary: the largest token + 1 rounded up to a multiple of
  64, or ``task.vocab_size`` if larger.
- any other file: raw bytes (vocab 256), the last 5% for validation.

Files are memory-mapped, never read whole, so large corpora cost no RAM.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from carvelab.trials.tasks import _cache

logger = logging.getLogger(__name__)

BYTE_VOCAB = 256
VAL_FRACTION = 0.05
VAL_PERCENT = 5                 # stdlib split: files whose split hash mod 100 is below this
STDLIB_MAX_BYTES = 4 << 20      # a few MB: builds in about a second, ample for small models
STDLIB_FORMAT = 1               # bump when the stdlib corpus layout changes
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test",
                           "__pycache__"})
END_OF_DOCUMENT = b"\x00"
VOCAB_MULTIPLE = 64
_MAX_CHUNK = 1 << 24            # tokens scanned at a time for a .bin's largest token


@dataclass(frozen=True)
class Corpus:
    """Training and validation token streams (1-D arrays, possibly memory-mapped)."""

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    source: str
    train_files: tuple[str, ...] = ()   # stdlib corpus only: relative paths per split
    val_files: tuple[str, ...] = ()


def load_corpus(cfg) -> Corpus:
    """The corpus the lm task config ``cfg`` (``LMConfig``) names by ``data_path`` (see the module docstring)."""
    if cfg.data_path is None:
        return stdlib_corpus(cfg.cache_dir)
    path = Path(cfg.data_path).expanduser()
    if not path.is_file():
        raise ValueError(
            f"task.data_path={cfg.data_path!r} is not an existing file; allowed: null (the "
            "standard-library corpus), a text file, or a flat uint16 .bin of token ids"
        )
    if path.stat().st_size == 0:
        raise ValueError(f"task.data_path={cfg.data_path!r} is empty")
    if path.suffix == ".bin":
        return bin_corpus(path, cfg)
    return text_corpus(path)


# ---------------------------------------------------------------- text and .bin files
def text_corpus(path: Path) -> Corpus:
    """Raw bytes of ``path``; the last 5% are the validation stream."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    train, val = _split_tail(data)
    return Corpus(train, val, BYTE_VOCAB, source=str(path))


def bin_corpus(path: Path, cfg) -> Corpus:
    """uint16 tokens of ``path``, validation from a sibling ``val.bin`` or the last 5%."""
    train = _uint16_memmap(path, cfg.data_path)
    sibling = path.with_name("val.bin")
    if path.name == "train.bin" and sibling.is_file():
        val = _uint16_memmap(sibling, str(sibling))
    else:
        train, val = _split_tail(train)
    largest = max(_largest_token(path, cfg.cache_dir, train), int(val.max()))
    vocab = max(_round_up(largest + 1, VOCAB_MULTIPLE), cfg.vocab_size)
    return Corpus(train, val, vocab, source=str(path))


def _uint16_memmap(path: Path, shown: Optional[str]) -> np.ndarray:
    size = path.stat().st_size
    if size == 0 or size % 2:
        raise ValueError(f"task.data_path={shown!r}: {path} has {size} bytes; a uint16 .bin "
                         "needs a positive, even number of bytes")
    return np.memmap(path, dtype=np.uint16, mode="r")


def _split_tail(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n_val = math.ceil(len(data) * VAL_FRACTION)
    return data[: len(data) - n_val], data[len(data) - n_val:]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _largest_token(path: Path, cache_dir: Optional[str], tokens: np.ndarray) -> int:
    """The largest token of a (possibly huge) stream, cached by file identity."""
    stat = path.resolve().stat()
    payload = {"kind": "bin-max", "path": str(path.resolve()), "size": stat.st_size,
               "mtime_ns": stat.st_mtime_ns, "n": len(tokens)}
    cached = _cache.load_or_build(
        _cache.cache_file(cache_dir, "bin-meta", payload), ("largest",),
        lambda: {"largest": np.array(max(int(tokens[i:i + _MAX_CHUNK].max())
                                         for i in range(0, len(tokens), _MAX_CHUNK)))})
    return int(cached["largest"])


# ---------------------------------------------------------------- the stdlib corpus
def stdlib_corpus(cache_dir: Optional[str]) -> Corpus:
    """The standard-library corpus, built once per Python install and cached."""
    root = Path(sysconfig.get_paths()["stdlib"])
    payload = {"kind": "stdlib", "format": STDLIB_FORMAT, "python": platform.python_version(),
               "stdlib": str(root), "max_bytes": STDLIB_MAX_BYTES, "val_percent": VAL_PERCENT}
    path = _cache.cache_file(cache_dir, "lm-stdlib", payload)
    arrays = _cache.load_or_build(path, ("train", "val", "train_files", "val_files"),
                                  lambda: build_stdlib_arrays(root, STDLIB_MAX_BYTES))
    return Corpus(arrays["train"], arrays["val"], BYTE_VOCAB, source=f"stdlib:{root}",
                  train_files=tuple(str(f) for f in arrays["train_files"]),
                  val_files=tuple(str(f) for f in arrays["val_files"]))


def stdlib_files(root: Path) -> list[str]:
    """Relative POSIX paths of the stdlib's ``.py`` files, sorted, excluded dirs skipped."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in EXCLUDED_DIRS]  # prune: never walk them
        rel_folder = Path(folder).relative_to(root)
        found += [(rel_folder / name).as_posix() for name in names if name.endswith(".py")]
    return sorted(found)


def path_hash(tag: str, rel: str) -> int:
    """A stable 64-bit hash of a relative path (``tag`` makes independent hashes)."""
    return int.from_bytes(hashlib.sha1(f"{tag}:{rel}".encode()).digest()[:8], "big")


def is_val_file(rel: str) -> bool:
    """Whether a stdlib file belongs to the validation split (~VAL_PERCENT % of files)."""
    return path_hash("split", rel) % 100 < VAL_PERCENT


def select_files(root: Path, files: list[str], max_bytes: int) -> tuple[list[str], list[str]]:
    """Fill each split up to its share of ``max_bytes``, in hash order; returns (train, val)."""
    budget = {False: max_bytes * (1 - VAL_FRACTION), True: max_bytes * VAL_FRACTION}
    chosen: dict[bool, list[str]] = {False: [], True: []}
    for rel in sorted(files, key=lambda r: path_hash("order", r)):
        split = is_val_file(rel)
        if budget[split] > 0:
            chosen[split].append(rel)
            budget[split] -= (root / rel).stat().st_size
        if budget[False] <= 0 and budget[True] <= 0:
            break
    return chosen[False], chosen[True]


def build_stdlib_arrays(root: Path, max_bytes: int) -> _cache.Arrays:
    """Read the selected files into two uint8 streams (each file + END_OF_DOCUMENT)."""
    train_files, val_files = select_files(root, stdlib_files(root), max_bytes)
    if not train_files or not val_files:
        raise ValueError(f"the standard library at {root} has too few .py files for a "
                         "train/validation split; set task.data_path to a text file")

    def stream(files: list[str]) -> np.ndarray:
        data = b"".join((root / rel).read_bytes() + END_OF_DOCUMENT for rel in files)
        return np.frombuffer(data, dtype=np.uint8).copy()

    logger.info("building the stdlib corpus from %d + %d files under %s",
                len(train_files), len(val_files), root)
    return {"train": stream(train_files), "val": stream(val_files),
            "train_files": np.array(train_files, dtype=str),
            "val_files": np.array(val_files, dtype=str)}
