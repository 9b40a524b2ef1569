"""On-disk cache of generated task data.

Files live under ``<root>/tasks/<kind>-<key>.npz`` where ``root`` is ``task.cache_dir``,
else ``$CARVELAB_CACHE``, else ``~/.cache/carvelab``, and ``key`` is a SHA-256 of the
config fields that determine the data (plus a format version, so a change of the
generator never reads stale files). Several trials on one node may build the same file at
once: each writes a private temporary file in the same directory and ``os.replace``-s it
into place, which is atomic on POSIX, so a reader sees either no file or a whole one.
Both writers produce identical bytes, so the last one winning is harmless.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np

logger = logging.getLogger(__name__)

ENV_VAR = "CARVELAB_CACHE"

Arrays = dict[str, np.ndarray]


def cache_root(cache_dir: Optional[str]) -> Path:
    """The cache root: ``cache_dir``, else ``$CARVELAB_CACHE``, else ``~/.cache/carvelab``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return Path("~/.cache/carvelab").expanduser()


def cache_key(payload: Mapping[str, object]) -> str:
    """A short stable hash of a JSON-serialisable mapping (key order does not matter)."""
    text = json.dumps(dict(payload), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cache_file(cache_dir: Optional[str], kind: str, payload: Mapping[str, object]) -> Path:
    """Where the data described by ``payload`` is cached."""
    return cache_root(cache_dir) / "tasks" / f"{kind}-{cache_key(payload)}.npz"


def save_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as an uncompressed ``.npz`` at ``path`` via a temp file + ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path, names: tuple[str, ...]) -> Optional[Arrays]:
    """The arrays ``names`` from ``path``, or None if it is missing, unreadable or incomplete."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {name: z[name] for name in names}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        # A damaged file (disk full, manual edit) is rebuilt rather than trusted.
        logger.warning("ignoring unreadable cache file %s (%s); rebuilding it", path, err)
        return None


def load_or_build(path: Path, names: tuple[str, ...], build: Callable[[], Arrays]) -> Arrays:
    """Read ``names`` from the cache file, or ``build()`` them and cache the result."""
    arrays = load(path, names)
    if arrays is not None:
        logger.debug("read cached task data %s", path)
        return arrays
    arrays = build()
    missing = set(names) - set(arrays)
    if missing:
        raise ValueError(f"built task data lacks the arrays {sorted(missing)}; expected {list(names)}")
    save_atomic(path, arrays)
    logger.info("cached task data at %s", path)
    return arrays
