"""Points of a validated sweep's space: grid, ablation and tune expansion, the planned runs
of grid and ablation modes, and the ``TrialConfig`` of one point, seed and tune combination.
Nothing here needs Optuna (``trials.sweep.study`` queues these runs in a study)."""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Mapping, Optional

from carvelab.search_space import sweep_spec as S
from carvelab.search_space.loading import load_trial_config
from carvelab.search_space.trial_config import TrialConfig
from carvelab.search_space.yaml_io import ConfigError, deep_merge
from carvelab.trials.tasks import DEFAULT_TASK, task_class

MAX_TRIALS = 100_000


def nested(path: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


def normalise(path: str, value: Any) -> Any:
    if path == "model.content_gate" and isinstance(value, str) and value.lower() in ("on", "off"):
        return value.lower() == "on"
    return value


def point_config(spec: S.SweepSpec, point: Mapping[str, Any], seed: int,
                 tune: Optional[Mapping[str, Any]] = None) -> TrialConfig:
    """The trial config of one point (``{name or path: value}``), replicate seed and tune
    values (``{path: value}``, one combination of ``spec.tune``).

    Raises ``ConfigError`` when the combination is infeasible.
    """
    data = dict(spec.base)
    for name, value in {**point, **(tune or {})}.items():
        if name == S.SUITE_PARAM and spec.suite:
            if value not in spec.suite_settings:
                raise ConfigError(f"suite={value!r} is not a setting of the sweep's suite {spec.suite!r}")
            data = {**data, "task": dict(spec.suite_settings[value])}   # the setting replaces the task
            continue
        path = S.AXES.get(name, name)
        data = deep_merge(data, nested(path, normalise(path, value)))
    data = deep_merge(data, {"train": {"seed": seed}, "model": {"seed": seed}})
    return load_trial_config(fit_task(data, spec.task_keys))


def fit_task(data: dict, task_keys: Mapping[str, dict]) -> dict:
    """A point of a sweep with a ``task.name`` axis: its task takes the keys of the point's
    mapping that its own config declares, plus the base keys kept for it in ``task_keys``
    (see ``_split_task_keys``); the point's own values win."""
    task = dict(data.get("task") or {})
    name = task.get("name", DEFAULT_TASK)
    if not task_keys or name not in task_keys:
        return data
    own = {f.name for f in dataclasses.fields(task_class(name).Config)}
    return {**data, "task": {**task_keys[name], **{k: v for k, v in task.items() if k in own}}}


def base_levels(spec: S.SweepSpec) -> dict:
    """Each swept parameter's value in the base config (what a one-factor change departs from)."""
    config = dataclasses.asdict(load_trial_config(fit_task(dict(spec.base), spec.task_keys)))
    out = {}
    for p in spec.params:
        node = config
        for part in p.path.split("."):
            node = node[part]
        out[p.name] = node
    return out


def grid_points(spec: S.SweepSpec) -> list[dict]:
    """Every combination of the space's values (grid mode), in file order."""
    names = [p.name for p in spec.params]
    values = [grid_values(p) for p in spec.params]
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def tune_points(spec: S.SweepSpec) -> list[dict]:
    """Every combination of the tune values (``[{}]`` without ``tune:``), in file order."""
    names = [p.name for p in spec.tune]
    return [dict(zip(names, combo)) for combo in itertools.product(*(p.choices for p in spec.tune))]


def grid_values(p: S.ParamSpec) -> list:
    if p.type == "categorical":
        return list(p.choices)
    if p.type == "int":
        step = int(p.step or 1)
        count = (int(p.high) - int(p.low)) // step + 1
        if count > MAX_TRIALS:
            raise ConfigError(f"space.{p.name}: {count} grid values; a grid takes at most {MAX_TRIALS}")
        return list(range(int(p.low), int(p.high) + 1, step))
    raise ConfigError(f"space.{p.name}: grid mode needs a finite set of values; {p.type} ranges have none")


def change_label(change: Optional[Mapping]) -> str:
    """An ablation change's label, ``axis=value[,axis=value]``; ``baseline`` for None or {}."""
    return ",".join(f"{k}={v}" for k, v in change.items()) if change else "baseline"


def ablation_points(spec: S.SweepSpec) -> list[tuple[str, dict]]:
    """(label, point) for the baseline then each one-factor change."""
    return [("baseline", {})] + [(change_label(change), dict(change)) for change in spec.changes]


def runs_of_point(spec: S.SweepSpec) -> list[tuple[int, dict]]:
    """(seed, tune values) of every training run of one point: each tune combination at each seed,
    the first is the one a sampled trial runs itself."""
    return [(seed, tune) for tune in tune_points(spec) for seed in spec.seeds]


def base_value(spec: S.SweepSpec, name: str) -> Any:
    """The base trial config's value of a space name (axis or dotted path)."""
    node: Any = dataclasses.asdict(load_trial_config(spec.base))
    for part in S.AXES.get(name, name).split("."):
        node = node[part]
    return node


def planned(spec: S.SweepSpec) -> list[tuple[dict, int, str, dict]]:
    """(full point, seed, label, tune values) for grid and ablation modes, in order; empty for
    search. An ablation point names every changed name (base values for those a change leaves)."""
    runs = runs_of_point(spec)
    if spec.mode == "grid":
        return [(p, s, "", t) for p in grid_points(spec) for s, t in runs]
    if spec.mode == "ablation":
        names = list(dict.fromkeys(name for change in spec.changes for name in change))
        out = []
        for label, change in ablation_points(spec):
            point = {n: change.get(n, base_value(spec, n)) for n in names}
            out += [(point, s, label, t) for s, t in runs]
        return out
    return []
