"""A sweep's ``suite:`` key -> the ``suite`` parameter of its points.

    suite: mad                                # every setting (``settings: all``)
    suite: {name: state_tracking, settings: baseline}
    suite: {name: mad, settings: [mad_fuzzy_recall, "mad_noisy_recall:frac_noise=0.8"]}   # these settings

The suite (``carvelab.trials.tasks.suites``) decides the task of every trial: each point of
the sweep is trained at each setting of the suite. The points carry one categorical
parameter, ``suite``, whose values are the settings' labels; ``points.point_config`` turns a
label into the trial's ``task:`` mapping. A grid crosses the settings with the other axes, a
search samples them like any categorical axis. Refused, each with its own message: an
ablation (its changes are the space), a ``task.*`` axis or tune path (the suite sets the
task), ``base.task.name``, and a ``base.task`` key that some setting sets (it would replace
that key's default in the others, e.g. MAD's baseline ``seq_len``). The base's other task
keys (``val_examples``, ``cache_dir``, ...) reach every task of the suite that takes them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from carvelab.search_space import sweep_spec as S
from carvelab.search_space.loading import load_trial_config
from carvelab.search_space.points import fit_task
from carvelab.search_space.yaml_io import ConfigError
from carvelab.trials.tasks import task_class
from carvelab.trials.tasks.suites import SUITES, WHICH, get_suite


def validate_suite(value: Any, raw: S.SweepFile, base: dict, where: str):
    """``(base, task_keys, param, name, settings)``: the base with the suite's first setting as
    its task, the base's task keys per task, the ``suite`` ParamSpec, the suite's name and
    ``{label: task mapping}`` of the selected settings."""
    name, which = _name_and_which(value, where)
    try:
        settings = get_suite(name).selected(which)
    except ValueError as exc:
        raise ConfigError(f"{where}: suite: {exc}") from None
    if raw.mode == "ablation":
        raise ConfigError(f"{where}: suite: a suite is swept in mode 'grid' or 'search'; mode 'ablation' takes "
                          "its points from ablation.changes alone")
    for section, keys in (("space", raw.space), ("tune", raw.tune)):
        for key in keys:
            if str(key).startswith("task."):
                raise ConfigError(f"{where}: {section}.{key}: the suite {name!r} sets the task of every trial; "
                                  "drop the suite or this key (a suite's settings are listed in "
                                  "carvelab.trials.tasks.suites)")
    task = dict(base.get("task") or {})
    if "name" in task:
        raise ConfigError(f"{where}: base.task.name={task['name']!r}: the suite {name!r} names the tasks "
                          f"({', '.join(get_suite(name).tasks())}); remove base.task.name")
    varied = {k for s in settings.values() for k in s if k != "name"}
    fields_of = {t: {f.name for f in dataclasses.fields(task_class(t).Config)}
                 for t in dict.fromkeys(s["name"] for s in settings.values())}
    for key in task:
        if key in varied:
            raise ConfigError(f"{where}: base.task.{key}: the suite {name!r} sets {key} in some of its settings, so "
                              "a base value would replace its default in the others; remove it from base.task")
        if not any(key in f for f in fields_of.values()):
            takes = sorted(set().union(*fields_of.values()) - {"name"} - varied)
            raise ConfigError(f"{where}: base.task.{key}: no task of the suite {name!r} takes it; keys they take: {takes}")
    task_keys = {t: {k: v for k, v in task.items() if k in f} for t, f in fields_of.items()}
    first = next(iter(settings.values()))
    base = {**base, "task": {**task_keys[first["name"]], **first}}
    for label, setting in settings.items():
        try:
            load_trial_config(fit_task({**base, "task": dict(setting)}, task_keys))
        except ConfigError as exc:
            raise ConfigError(f"{where}: suite {name!r}, setting {label!r}: {str(exc).split(': ', 1)[-1]}") from None
    param = S.ParamSpec(name=S.SUITE_PARAM, path=S.SUITE_PARAM, type="categorical", choices=list(settings))
    return base, task_keys, param, name, settings


def _name_and_which(value: Any, where: str) -> tuple[str, str]:
    if isinstance(value, str):
        name, which = value, "all"
    elif isinstance(value, Mapping):
        extra = sorted(set(value) - {"name", "settings"}, key=str)
        if extra:
            raise ConfigError(f"{where}: suite: unknown key {extra[0]!r}; allowed: name, settings")
        name, which = value.get("name"), value.get("settings", "all")
    else:
        raise ConfigError(f"{where}: suite={value!r} must be a suite name or "
                          "{name: ..., settings: all|baseline|[labels]}")
    if not isinstance(name, str) or name not in SUITES:
        raise ConfigError(f"{where}: suite.name={name!r} is not a registered suite; registered: {sorted(SUITES)}")
    if isinstance(which, (list, tuple)):
        bad = [x for x in which if not isinstance(x, str)]
        if bad:
            raise ConfigError(f"{where}: suite.settings: {bad[0]!r} is not a setting label (a string such as "
                              f"'mad_noisy_recall:frac_noise=0.8'; `carvelab suites {name}` lists them)")
        return name, list(which)
    if which not in WHICH:
        raise ConfigError(f"{where}: suite.settings={which!r} is not allowed; choose one of {list(WHICH)} or a list "
                          f"of setting labels (`carvelab suites {name}`)")
    return name, which
