"""The pruner interface, the keys every pruner's spec shares, and the registry.

A pruner is one file in this package: a spec dataclass (its sweep-file keys, validated
before launch) and a class with the ``Pruner`` methods, registered with ``@register``::

    @dataclass
    class PatienceSpec(PrunerSpec):
        patience: int = 3

    @register("patience", PatienceSpec)
    class PatiencePruner:
        def __init__(self, spec, objectives, seed): ...
        def decide(self, trial, step, metrics): ...   # CONTINUE or STOP
        def complete(self, trial, state, value): ...
        def state_dict(self): ...
        def load_state_dict(self, state): ...

The package imports every module in it, so dropping the file in registers the pruner
(the same decorator registers one from anywhere else, e.g. a test).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol

from carvelab.search_space.sweep_spec import ObjectiveSpec

# How a trial ended, as ``complete`` is told (the driver's trial states).
END_STATES = ("completed", "pruned", "failed")


@dataclass
class PrunerSpec:
    """Keys every pruner takes; a pruner's own spec subclasses this and adds its keys."""

    name: str = "none"
    metric: Optional[str] = None  # the intermediate metric pruned on; default: the first quality objective
    warmup_steps: int = 0         # never prune before this training step

    def check(self) -> None:
        """Raise ValueError naming the key, the value and what is allowed."""
        at_least(self, "warmup_steps", 0)


def at_least(spec: PrunerSpec, key: str, low: int) -> None:
    value = getattr(spec, key)
    if value < low:
        raise ValueError(f"pruner.{key}={value} must be >= {low}")


class Pruner(Protocol):
    """Decides, for a running trial's report, whether it goes on; the driver hosts one."""

    def decide(self, trial: int, step: int, metrics: dict[str, float]) -> str:
        """CONTINUE or STOP for ``trial``'s report at training ``step``."""

    def complete(self, trial: int, state: str, value: Optional[float]) -> None:
        """``trial`` ended in ``state`` (END_STATES) with final ``value`` of the pruned metric.
        Called at most once per trial that matters; a second call must be ignored."""

    def state_dict(self) -> dict:
        """Everything needed to continue deciding exactly as now (JSON-serialisable)."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned, on a freshly built pruner of the same spec."""


Builder = Callable[[PrunerSpec, list, int], Pruner]


@dataclass(frozen=True)
class Entry:
    spec: type
    build: Builder


_REGISTRY: dict[str, Entry] = {}


def register(name: str, spec: type) -> Callable[[Builder], Builder]:
    """Class decorator: ``name`` in a sweep file's ``pruner.name`` builds this class with a ``spec``."""
    if not (isinstance(spec, type) and issubclass(spec, PrunerSpec)):
        raise TypeError(f"the spec of pruner {name!r} must subclass PrunerSpec, got {spec!r}")

    def add(build: Builder) -> Builder:
        if name in _REGISTRY and _REGISTRY[name].build is not build:
            raise ValueError(f"a pruner named {name!r} is already registered ({_REGISTRY[name].build!r})")
        _REGISTRY[name] = Entry(spec, build)
        return build

    return add


def modules() -> set[str]:
    """Modules the registered pruners are defined in."""
    return {e.build.__module__ for e in _REGISTRY.values()} | {e.spec.__module__ for e in _REGISTRY.values()}


def names() -> list[str]:
    return sorted(_REGISTRY)


def entry(name: str) -> Entry:
    if name not in _REGISTRY:
        raise ValueError(f"pruner.name={name!r} is not allowed; choose one of {names()}")
    return _REGISTRY[name]


def build_pruner(spec: PrunerSpec, objectives: list[ObjectiveSpec], seed: int = 0) -> Pruner:
    return entry(spec.name).build(spec, objectives, seed)


def rebuild(pruner: Pruner, finished: list[tuple[int, list, str, Optional[float]]]) -> None:
    """Bring a fresh pruner to where an uninterrupted sweep's pruner would be once these
    trials had ended: each trial's reports replayed through ``decide``, then ``complete``
    (trial number order). ``finished`` holds ``(trial, [(step, metrics), ...], state, value)``."""
    for trial, history, state, value in sorted(finished, key=lambda f: f[0]):
        for step, metrics in history:
            pruner.decide(trial, int(step), metrics)
        pruner.complete(trial, state, value)


def metric_direction(metric: str, objectives: list[ObjectiveSpec]) -> str:
    for obj in objectives:
        if obj.metric == metric:
            return obj.direction
    return "maximize" if metric == "val_accuracy" else "minimize"


def dominates(a: list[float], b: list[float]) -> bool:
    """a dominates b (all coordinates already oriented so that larger is better)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))
