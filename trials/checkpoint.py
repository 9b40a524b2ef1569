"""Periodic checkpoints of one trial, written atomically, keyed by the trial's config."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

FILE = "trial_checkpoint.pt"


def config_digest(config_dict: dict) -> str:
    """A stable digest of the resolved trial config (a checkpoint only resumes its own trial)."""
    return hashlib.sha256(json.dumps(config_dict, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save(directory: str | Path, payload: dict) -> Path:
    """Write ``payload`` to ``directory/trial_checkpoint.pt`` via a temp file + rename."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / FILE
    tmp = directory / f".{FILE}.{os.getpid()}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, target)
    return target


def load(directory: str | Path | None, digest: str) -> dict | None:
    """The checkpoint in ``directory`` if it belongs to the config with ``digest``.

    A checkpoint of a different config is an error, never silently overwritten.
    """
    if directory is None:
        return None
    path = Path(directory) / FILE
    if not path.exists():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if payload.get("digest") != digest:
        raise ValueError(
            f"train.checkpoint_dir={str(directory)!r} holds a checkpoint of another trial config "
            f"(digest {payload.get('digest')} != {digest}); use an empty directory"
        )
    return payload
