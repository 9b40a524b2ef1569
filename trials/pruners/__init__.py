"""Pruning decisions for running trials: ``decide(trial, step, metrics) -> CONTINUE | STOP``.

``base`` holds the ``Pruner`` protocol, the shared spec keys and the registry; each other
module here is one or more pruners (``pareto``: ours, multi-objective; ``optuna_shadow``:
Optuna's median / successive-halving / hyperband; ``none``). Every module of this package
is imported here, so a new pruner is one new file. The scheduler hosts the sweep's
pruner inside a Ray actor.
"""
import importlib
import pkgutil

from carvelab.trials.pruners.base import (
    END_STATES,
    Pruner,
    PrunerSpec,
    build_pruner,
    dominates,
    entry,
    metric_direction,
    modules,
    names,
    rebuild,
    register,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["END_STATES", "Pruner", "PrunerSpec", "build_pruner", "dominates", "entry", "metric_direction",
           "modules", "names", "rebuild", "register"]
