"""The on-disk layout of one sweep (``<root>/<name>/``) and its durable trial results.

    sweep.yaml            the validated spec as it was first run (a resume must match it)
    optuna.db             default Optuna storage
    mlflow.db, mlartifacts/   default tracking store (trials/tracking/mlflow_backend.py)
    results/trial-N.json  each finished trial's result, written before it is told to
                          Optuna or MLflow (recovery after a driver crash reads it)
    checkpoints/<key>/    per-(point, seed) training checkpoints (a re-queued trial resumes)
    failures/trial-N.txt  tracebacks of failed trials
    broker-journal.jsonl  the pruning broker's journal of this driver run (trials/sweep/broker.py)
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator, Optional

import yaml

from carvelab.search_space import sweep_spec as S
from carvelab.search_space.sweep_spec import SweepSpec
from carvelab.search_space.yaml_io import ConfigError

# Parts of a spec that define *what* is swept; budgets, resources and tracking may change on resume.
_IDENTITY = ("name", "base", "mode", "params", "changes", "objectives", "seeds", "tune", "suite_settings")
_ABSENT = {"tune": [], "suite_settings": {}}  # what a snapshot written before the key existed means by its absence


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class SweepDir:
    def __init__(self, root: str | Path, name: str):
        self.path = Path(root).expanduser().resolve() / name

    @property
    def optuna_url(self) -> str:
        return f"sqlite:///{self.path / 'optuna.db'}"

    def result_path(self, number: int) -> Path:
        return self.path / "results" / f"trial-{number}.json"

    def checkpoint_dir(self, key: str) -> Path:
        return self.path / "checkpoints" / hashlib.sha256(key.encode()).hexdigest()[:16]

    @property
    def broker_journal(self) -> Path:
        return self.path / "broker-journal.jsonl"

    def failure_path(self, number: int) -> Path:
        return self.path / "failures" / f"trial-{number}.txt"

    # ------------------------------------------------------------------ spec snapshot
    @property
    def snapshot(self) -> Path:
        """``sweep.yaml``: present once a sweep has been bound to this folder."""
        return self.path / "sweep.yaml"

    def bind(self, spec: SweepSpec) -> bool:
        """Create the directory for ``spec`` or check that it belongs to it. True if it existed."""
        snapshot = self.snapshot
        identity = {k: _plain(getattr(spec, k)) for k in _IDENTITY}
        if snapshot.exists():
            stored = yaml.safe_load(snapshot.read_text())
            stored_identity = {k: stored.get(k, _ABSENT.get(k)) for k in _IDENTITY}
            if json.dumps(stored_identity, sort_keys=True, default=str) != json.dumps(identity, sort_keys=True, default=str):
                changed = [k for k in _IDENTITY if json.dumps(stored_identity[k], sort_keys=True, default=str)
                           != json.dumps(identity[k], sort_keys=True, default=str)]
                raise ConfigError(
                    f"{self.path}: a sweep named {spec.name!r} already exists there with a different "
                    f"{', '.join(changed)}; resuming would mix two experiments. Use another name "
                    "or output directory (nothing was changed)."
                )
            return True
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(snapshot, yaml.safe_dump(_plain(dataclasses.asdict(spec)), sort_keys=False))
        os.chmod(snapshot, 0o600)  # it may hold storage/tracking credentials
        return False

    def spec(self) -> SweepSpec:
        """The sweep's validated spec as it was first run, read back from ``sweep.yaml``."""
        snapshot = self.snapshot
        if not snapshot.exists():
            raise ConfigError(f"{self.path}: no sweep named {self.path.name!r} here (use --root to point at its folder)")
        return spec_from_snapshot(yaml.safe_load(snapshot.read_text()))

    # ------------------------------------------------------------------ results
    def save_result(self, number: int, payload: dict) -> None:
        atomic_write(self.result_path(number), json.dumps(payload, default=_json_default))

    def load_result(self, number: int) -> Optional[dict]:
        path = self.result_path(number)
        return json.loads(path.read_text()) if path.exists() else None

    def all_results(self) -> dict[int, dict]:
        folder = self.path / "results"
        if not folder.exists():
            return {}
        out = {}
        for p in folder.glob("trial-*.json"):
            out[int(p.stem.split("-")[1])] = json.loads(p.read_text())
        return out


def _typed(cls: type, data: dict):
    """``cls(**data)`` with the keys ``cls`` has (a snapshot was validated when it was written;
    keys an older version wrote and this one dropped are left out)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in (data or {}).items() if k in names})


def spec_from_snapshot(data: dict) -> SweepSpec:
    """A ``SweepSpec`` from the plain data ``SweepDir.bind`` wrote."""
    from carvelab.trials import pruners  # the registry lives with the pruners

    pruner = data.get("pruner") or {}
    return SweepSpec(
        name=data["name"], base=data["base"], mode=data["mode"],
        params=[_typed(S.ParamSpec, p) for p in data.get("params", [])], changes=data.get("changes", []),
        objectives=[_typed(S.ObjectiveSpec, o) for o in data["objectives"]],
        sampler=_typed(S.SamplerSpec, data.get("sampler")),
        pruner=_typed(pruners.entry(pruner.get("name", "none")).spec, pruner), seeds=data.get("seeds") or [0],
        budget=_typed(S.BudgetSpec, data.get("budget")), resources=_typed(S.ResourcesSpec, data.get("resources")),
        tracking=_typed(S.TrackingSpec, data.get("tracking")), storage=data.get("storage"),
        source=data.get("source", "<sweep>"), task_keys=data.get("task_keys") or {},
        tune=[_typed(S.ParamSpec, p) for p in data.get("tune") or []],
        claims=[_typed(S.ClaimSpec, c) for c in data.get("claims") or []],
        suite=data.get("suite"), suite_settings=data.get("suite_settings") or {},
    )


def _plain(obj):
    return json.loads(json.dumps(dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj,
                                 default=_json_default))


def _json_default(o):
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, float):
        return repr(o)
    return str(o)


LOCK_NAME = "driver.lock"


@contextlib.contextmanager
def driver_lock(sweep_path: str | Path) -> Iterator[Path]:
    """Hold ``<sweep>/driver.lock`` (an exclusive ``flock``) for as long as a driver runs.

    Raises ``ConfigError`` if another process holds it. The lock goes with the process, so a
    SIGKILLed driver never leaves a stale one behind.
    """
    path = Path(sweep_path) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{path}: held by {lock_owner(path)}; another driver is running this sweep") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        os.close(fd)  # releases the lock


def lock_owner(path: Path) -> str:
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return "another process"
    return f"pid {pid}"
