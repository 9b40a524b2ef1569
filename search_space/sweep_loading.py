"""Sweep files -> validated ``SweepSpec`` (points of the space -> ``TrialConfig``: ``points``).

Everything is checked before anything starts: unknown keys, bad values, unknown dotted
paths, axis values a model cannot take, and axes that can have no effect. Errors are
``ConfigError`` naming the file, the key path, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from carvelab.search_space import sweep_spec as S
from carvelab.search_space.claims import apply_size, validate_claims
from carvelab.search_space.loading import load_trial_config, task_config, to_dataclass, typed_section
from carvelab.search_space.points import (
    MAX_TRIALS, fit_task, grid_points, grid_values, nested, normalise, point_config, tune_points,
)
from carvelab.search_space.suite_loading import validate_suite
from carvelab.search_space.trial_config import TrainConfig
from carvelab.carve_models.config import ModelConfig
from carvelab.kernels.options import check_triton_chunk
from carvelab.trials import pruners  # the task and pruner registries live with their implementations
from carvelab.trials.tasks import DEFAULT_TASK, task_class
from carvelab.search_space.yaml_io import ConfigError, deep_merge, parse_overrides, read_yaml

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
MAX_SECONDS = 30 * 24 * 3600.0
MAX_SEED = 2**32 - 1          # what torch, numpy and Optuna's samplers accept
MAX_SAMPLER_SEED = 2**31 - 1  # leaves room for the offset a resumed sweep adds
URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_MAPPINGS = {"sampler": S.SamplerSpec, "budget": S.BudgetSpec,
             "resources": S.ResourcesSpec, "tracking": S.TrackingSpec, "ablation": S.AblationSpec}
_SECTIONS = {"model": ModelConfig, "train": TrainConfig}  # and task: the base's task's own config class


def bundled_sweeps() -> list[str]:
    folder = resources.files("carvelab.search_space") / "sweeps"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def find_sweep_file(name_or_path: str | Path) -> Path:
    """A path to an existing file, or the name of a bundled sweep."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if NAME_RE.match(str(name_or_path)) and str(name_or_path) in bundled_sweeps():
        return Path(str(resources.files("carvelab.search_space") / "sweeps" / f"{name_or_path}.yaml"))
    raise ConfigError(
        f"{name_or_path}: no such sweep file, and not a bundled sweep; bundled: {bundled_sweeps()}"
    )


def load_sweep(source: str | Path | Mapping, overrides: list[str] | tuple[str, ...] = (),
               size: str | None = None) -> S.SweepSpec:
    """Load, merge overrides into, and validate a sweep file (or mapping); ``size`` picks one
    of the file's ``sizes:`` (search_space.claims.apply_size), applied before ``overrides``."""
    if isinstance(source, Mapping):
        data, where, folder = dict(source), "<sweep>", Path.cwd()
    else:
        path = find_sweep_file(source)
        data, where, folder = read_yaml(path), str(path), path.parent
    data = apply_size(dict(data), size, where)
    data = resolve_interpolations(deep_merge(data, parse_overrides(overrides)), where)
    _check_sections(data, where)
    # `base`, `space` and `ablation.changes` are open mappings: checked by _validate, not by the schema.
    free = {k: data.pop(k) for k in ("base", "space", "pruner", "tune", "claims", "suite") if k in data}
    changes = None
    if isinstance(data.get("ablation"), Mapping) and "changes" in data["ablation"]:
        data["ablation"] = dict(data["ablation"])
        changes = data["ablation"].pop("changes")
    custom = None  # resources.custom is an open mapping of Ray resource names
    if isinstance(data.get("resources"), Mapping) and "custom" in data["resources"]:
        data["resources"] = dict(data["resources"])
        custom = data["resources"].pop("custom")
        if not isinstance(custom, Mapping):
            raise ConfigError(f"{where}: resources.custom={custom!r} must be a mapping of Ray resource name -> "
                              "amount per trial, e.g. {accelerator_a100: 1}")
    raw: S.SweepFile = to_dataclass(S.SweepFile(), data, where)
    if custom is not None:
        raw.resources.custom = {str(k): v for k, v in custom.items()}
    raw.base = free.get("base")
    raw.suite = free.get("suite")
    raw.pruner = free.get("pruner") or {}
    space = free.get("space") or {}
    if not isinstance(space, Mapping):
        raise ConfigError(f"{where}: space must be a mapping of axis or dotted path -> values, got {space!r}")
    raw.space = dict(space)
    tune = free.get("tune") or {}
    if not isinstance(tune, Mapping):
        raise ConfigError(f"{where}: tune must be a mapping of dotted path -> list of values, "
                          f"e.g. {{train.lr: [1.0e-3, 3.0e-3]}}, got {tune!r}")
    raw.tune = _dotted(tune)
    if changes is not None:
        if not isinstance(changes, list) or not all(isinstance(c, Mapping) for c in changes):
            raise ConfigError(f"{where}: ablation.changes must be a list of mappings, e.g. [{{erase_axis: value}}]")
        raw.ablation.changes = [dict(c) for c in changes]
    spec = _validate(raw, where, folder)
    spec.claims = validate_claims(free.get("claims"), spec, where)
    return spec


def _dotted(mapping: Mapping, prefix: str = "") -> dict:
    """Nested mappings as dotted keys: ``{train: {lr: [..]}}`` (an override ``tune.train.lr=[..]``)
    is ``{"train.lr": [..]}``."""
    out = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        nested_keys = isinstance(value, Mapping) and not set(value) & {"type", "low", "high", "choices", "step"}
        out.update(_dotted(value, name + ".") if nested_keys else {name: value})
    return out


def resolve_interpolations(data: dict, where: str) -> dict:
    """Resolve OmegaConf ``${...}`` interpolations over the whole file."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(OmegaConf.create(data), resolve=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"{where}: {key + ': ' if key else ''}interpolation failed: "
                          f"{str(exc).splitlines()[0]}") from None


def _check_sections(data: dict, where: str) -> None:
    """Sections must be mappings and objectives a list of {metric, direction} mappings."""
    for key, cls in _MAPPINGS.items():
        if key in data and not isinstance(data[key], Mapping):
            fields = [f.name for f in dataclasses.fields(cls)]
            raise ConfigError(f"{where}: {key}={data[key]!r} must be a mapping with keys {fields}")
    if "pruner" in data and not isinstance(data["pruner"], Mapping):
        raise ConfigError(f"{where}: pruner={data['pruner']!r} must be a mapping like {{name: median, warmup_steps: 10}}")
    objectives = data.get("objectives")
    if isinstance(objectives, list):
        for i, obj in enumerate(objectives):
            if not isinstance(obj, Mapping):
                raise ConfigError(f"{where}: objectives[{i}]={obj!r} must be a mapping like "
                                  "{metric: val_accuracy, direction: maximize}")
            extra = sorted(set(obj) - {"metric", "direction"}, key=str)
            if extra:
                raise ConfigError(f"{where}: objectives[{i}]: unknown key {extra[0]!r}; allowed: metric, direction")


# ----------------------------------------------------------------------------- paths
def param_path(name: str, where: str, prefix: str = "space", base: Mapping | None = None) -> str:
    """Canonical axis or dotted trial-config path -> dotted path; unknown names are errors.
    ``task.<field>`` must be a field of the config class of ``base``'s task."""
    if not isinstance(name, str):
        raise ConfigError(f"{where}: {prefix}: key {name!r} must be an axis name or a dotted path (a string)")
    if name in S.AXES:
        return S.AXES[name]
    section, _, fld = name.partition(".")
    cls = _SECTIONS.get(section)
    if section == "task":
        cls = type(task_config(dict((base or {}).get("task") or {}), where))
    if cls is None or fld not in [f.name for f in dataclasses.fields(cls)]:
        allowed = sorted(S.AXES) + ["model.<field>", "task.<field>", "train.<field>"]
        hint = ""
        if cls is not None:
            hint = f"; fields of {section}: {[f.name for f in dataclasses.fields(cls)]}"
        raise ConfigError(f"{where}: {prefix}.{name}: unknown axis or path; allowed: {allowed}{hint}")
    return name


# ----------------------------------------------------------------------------- points
def _swept_tasks(raw: S.SweepFile, where: str) -> list[str]:
    """Task names the sweep's ``task.name`` axis or ablation changes train."""
    values = raw.space.get("task.name", [])
    names = list(values) if isinstance(values, list) else []
    names += [c["task.name"] for c in raw.ablation.changes if isinstance(c, Mapping) and "task.name" in c]
    for name in names:
        try:
            task_class(name)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return names


def _split_task_keys(base: dict, tasks: list[str]) -> tuple[dict, dict]:
    """(base with only its own task's keys, {task: the keys of base's task mapping that only
    other tasks take, for each swept task that takes them}). Keys the base's task shares with
    a swept task stay in base and reach that task through the point. A key no task of the
    sweep takes stays in base, where loading refuses it."""
    if not tasks or not isinstance(base.get("task"), Mapping):
        return base, {}
    task = dict(base["task"])
    own = {f.name for f in dataclasses.fields(task_class(task.get("name", DEFAULT_TASK)).Config)}
    fields_of = {t: {f.name for f in dataclasses.fields(task_class(t).Config)} for t in tasks}
    foreign = {k for k in task if k not in own and any(k in f for f in fields_of.values())}
    kept = {t: {k: task[k] for k in foreign if k in f} for t, f in fields_of.items()}
    return {**base, "task": {k: v for k, v in task.items() if k not in foreign}}, kept


# ----------------------------------------------------------------------------- validation
def _validate(raw: S.SweepFile, where: str, folder: Path) -> S.SweepSpec:
    if not NAME_RE.match(raw.name or ""):
        raise ConfigError(f"{where}: name={raw.name!r} must be 1-100 characters of letters, digits, '_', '.', '-'")
    _choice(where, "mode", raw.mode, S.MODES)
    suite = None
    if raw.suite is not None:
        base, task_keys, suite_param, *suite = validate_suite(raw.suite, raw, _raw_base(raw.base, where, folder), where)
    else:
        base, task_keys = _split_task_keys(_raw_base(raw.base, where, folder), _swept_tasks(raw, where))
    base = _checked_base(base, where)
    objectives = _validate_objectives(raw.objectives, where)
    _validate_sampler(raw.sampler, raw, where)
    pruner = _validate_pruner(raw.pruner, objectives, where)
    seeds = _validate_seeds(raw.seeds, where)
    _validate_budget(raw.budget, raw.mode, where)
    _validate_resources(raw.resources, where)
    _validate_uris(raw, where)
    params = ([suite_param] if suite else []) + [_param(name, value, base, where) for name, value in raw.space.items()]
    changes = _validate_changes(raw, base, task_keys, where)
    tune = _validate_tune(raw, base, params, changes, where)
    spec = S.SweepSpec(
        name=raw.name, base=base, mode=raw.mode, params=params, changes=changes,
        objectives=objectives, sampler=raw.sampler, pruner=pruner, seeds=seeds, budget=raw.budget,
        resources=raw.resources, tracking=raw.tracking, storage=raw.storage, source=where, task_keys=task_keys,
        tune=tune, suite=suite[0] if suite else None, suite_settings=suite[1] if suite else {},
    )
    _check_effective_axes(spec, where)
    _check_triton_chunks(spec, where)
    timed = [o.metric for o in objectives if o.metric in S.ISOLATED_METRICS]
    if timed and load_trial_config(base).train.timing_steps == 0:
        raise ConfigError(f"{where}: objectives: {timed[0]!r} is measured in the isolated timing window, and "
                          "base.train.timing_steps is 0 (no window); set it > 0 or use tokens_per_s_contended")
    if raw.mode == "grid" or (raw.mode == "search" and raw.sampler.name == "grid"):
        for p in spec.params:
            try:
                grid_values(p)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        size = _grid_size(spec) * (len(spec.seeds) * len(tune_points(spec)) if raw.mode == "grid" else 1)
        if size > MAX_TRIALS:
            raise ConfigError(f"{where}: space: the grid has {size} points (times seeds); at most {MAX_TRIALS}")
    finite = all(p.type in ("categorical", "int") for p in spec.params)
    if spec.params and finite and _grid_size(spec) <= 4096:
        points = grid_points(spec)
        if not any(_feasible(spec, p) for p in points):
            raise ConfigError(f"{where}: space: every point is infeasible, e.g. "
                              f"{points[0]}: {_infeasibility(spec, points[0])}")
    return spec


def _choice(where: str, key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{where}: {key}={value!r} is not allowed; choose one of {list(allowed)}")


def _check_triton_chunks(spec: S.SweepSpec, where: str) -> None:
    """A chunk size the Triton kernels cannot run is refused before launch when the trials will
    run on them (model.backend 'triton', or 'auto' with GPUs), not run on smaller chunks."""
    base = load_trial_config(spec.base)
    backend, gpus = base.model.backend, spec.resources.gpus_per_trial
    if not (backend == "triton" or (backend == "auto" and gpus > 0 and base.train.device != "cpu")):
        return
    values = [("base.model.chunk_size", base.model.chunk_size)]
    for p in spec.params:
        if p.path == "model.chunk_size" and p.type in ("categorical", "int"):
            values = [(f"space.{p.name}", v) for v in grid_values(p)]
    values += [(f"ablation.changes[{i}].{name}", value) for i, change in enumerate(spec.changes)
               for name, value in change.items() if param_path(name, where, base=spec.base) == "model.chunk_size"]
    for key, value in values:
        try:
            check_triton_chunk(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {key}: {exc} (trials run on the Triton kernels: model.backend="
                              f"{backend!r}, resources.gpus_per_trial={gpus})") from None


def _raw_base(base: Any, where: str, folder: Path) -> dict:
    """``base`` (a preset name, a trial-config file or a mapping) as a trial-config mapping."""
    if base is None:
        raise ConfigError(f"{where}: base is required: a preset name (e.g. gdn2) or a trial config mapping")
    if isinstance(base, str):
        if base.endswith((".yaml", ".yml")):
            path = Path(base) if Path(base).is_absolute() else folder / base
            try:
                return read_yaml(path)
            except ConfigError as exc:
                raise ConfigError(f"{where}: base={base!r}: {exc}") from None
        return {"preset": base}
    if isinstance(base, Mapping):
        return dict(base)
    raise ConfigError(f"{where}: base={base!r} must be a preset name, a .yaml path or a mapping")


def _checked_base(data: dict, where: str) -> dict:
    try:
        load_trial_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: base: {str(exc).split(': ', 1)[-1]}") from None
    return data


def _validate_objectives(objectives: list, where: str) -> list:
    if not objectives:
        raise ConfigError(f"{where}: objectives must list at least one {{metric, direction}}")
    seen = set()
    for i, obj in enumerate(objectives):
        if isinstance(obj.metric, str) and obj.metric.startswith("test_"):
            raise ConfigError(
                f"{where}: objectives[{i}].metric={obj.metric!r}: the test split is reported, never optimised "
                f"(nothing that selects may see it); name {'val_' + obj.metric[5:]!r}: the front and the "
                f"tables report {obj.metric!r} for it")
        _choice(where, f"objectives[{i}].metric", obj.metric, S.METRICS)
        _choice(where, f"objectives[{i}].direction", obj.direction, S.DIRECTIONS)
        if obj.metric in seen:
            raise ConfigError(f"{where}: objectives[{i}].metric={obj.metric!r} is listed twice")
        seen.add(obj.metric)
    if not any(o.metric in S.INTERMEDIATE_METRICS for o in objectives):
        raise ConfigError(
            f"{where}: objectives: at least one must be a quality metric {list(S.INTERMEDIATE_METRICS)}"
        )
    return list(objectives)


def _validate_sampler(sampler: S.SamplerSpec, raw: S.SweepFile, where: str) -> None:
    _choice(where, "sampler.name", sampler.name, S.SAMPLERS)
    if not 0 <= sampler.seed <= MAX_SAMPLER_SEED:
        raise ConfigError(f"{where}: sampler.seed={sampler.seed} must be between 0 and {MAX_SAMPLER_SEED}")
    if sampler.n_startup_trials < 0 or sampler.population_size < 2:
        raise ConfigError(f"{where}: sampler.n_startup_trials must be >= 0 and sampler.population_size >= 2")
    if sampler.name == "grid" and raw.mode == "search":
        bad = [k for k, v in raw.space.items() if isinstance(v, Mapping) and v.get("type") in ("float", "log_float")]
        if bad:
            raise ConfigError(f"{where}: sampler.name='grid' needs finite values; space.{bad[0]} is a continuous range")


def _validate_pruner(data: Mapping, objectives: list, where: str):
    """The ``pruner`` mapping as an instance of its pruner's own spec class (unknown keys raise)."""
    name = data.get("name", "none")
    if not isinstance(name, str) or name not in pruners.names():
        raise ConfigError(f"{where}: pruner.name={name!r} is not allowed; choose one of {pruners.names()}")
    pruner = typed_section("pruner", pruners.entry(name).spec, data, where)
    if pruner.metric is None:
        quality = [o.metric for o in objectives if o.metric in S.INTERMEDIATE_METRICS]
        pruner = dataclasses.replace(pruner, metric=quality[0])
    _choice(where, "pruner.metric", pruner.metric, S.INTERMEDIATE_METRICS)
    try:
        pruner.check()
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return pruner


def _validate_seeds(seeds: list, where: str) -> list:
    if not seeds:
        raise ConfigError(f"{where}: seeds must list at least one integer seed")
    for i, s in enumerate(seeds):
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= MAX_SEED:
            raise ConfigError(f"{where}: seeds[{i}]={s!r} must be an integer between 0 and {MAX_SEED}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds={list(seeds)} has duplicates")
    if any(s < 0 for s in seeds):
        raise ConfigError(f"{where}: seeds={list(seeds)} must be non-negative")
    return list(seeds)


def _validate_budget(budget: S.BudgetSpec, mode: str, where: str) -> None:
    if budget.trials is not None and not 1 <= budget.trials <= MAX_TRIALS:
        raise ConfigError(f"{where}: budget.trials={budget.trials} must be between 1 and {MAX_TRIALS}")
    if budget.seconds is not None and not 0 < budget.seconds <= MAX_SECONDS:
        raise ConfigError(f"{where}: budget.seconds={budget.seconds} must be in (0, {MAX_SECONDS:.0f}] (30 days)")
    if mode == "search" and budget.trials is None and budget.seconds is None:
        raise ConfigError(f"{where}: budget: mode 'search' needs budget.trials and/or budget.seconds")


def _validate_resources(res: S.ResourcesSpec, where: str) -> None:
    if not 0 < res.cpus_per_trial <= 1024:
        raise ConfigError(f"{where}: resources.cpus_per_trial={res.cpus_per_trial} must be in (0, 1024]")
    gpus = res.gpus_per_trial
    if not math.isfinite(gpus) or gpus < 0 or (gpus > 1 and gpus != int(gpus)):
        raise ConfigError(
            f"{where}: resources.gpus_per_trial={gpus} must be 0, a fraction in (0, 1] or a whole number"
        )
    if not 1 <= res.concurrency <= 10_000:
        raise ConfigError(f"{where}: resources.concurrency={res.concurrency} must be between 1 and 10000")
    if res.trial_timeout_s is not None and not 0 < res.trial_timeout_s < math.inf:
        raise ConfigError(f"{where}: resources.trial_timeout_s={res.trial_timeout_s} must be a finite number > 0")
    if res.max_retries < 0:
        raise ConfigError(f"{where}: resources.max_retries={res.max_retries} must be >= 0")
    if res.memory_mb is not None and not 0 < res.memory_mb < math.inf:
        raise ConfigError(f"{where}: resources.memory_mb={res.memory_mb} must be a finite number > 0")
    if res.pending_timeout_s is not None and not 0 < res.pending_timeout_s < math.inf:
        raise ConfigError(f"{where}: resources.pending_timeout_s={res.pending_timeout_s} must be a finite number > 0")
    for name, amount in res.custom.items():
        if name in ("CPU", "GPU", "memory", "object_store_memory"):
            raise ConfigError(f"{where}: resources.custom.{name}: use resources.cpus_per_trial / gpus_per_trial / "
                              "memory_mb for Ray's built-in resources")
        if not isinstance(amount, (int, float)) or isinstance(amount, bool) or not 0 < amount < math.inf:
            raise ConfigError(f"{where}: resources.custom.{name}={amount!r} must be a finite number > 0")


def _validate_uris(raw: S.SweepFile, where: str) -> None:
    """Storage and tracking URIs need a scheme (the values are not echoed: they may hold passwords)."""
    if raw.storage and not URI_RE.match(raw.storage):
        raise ConfigError(f"{where}: storage must be a database URL such as sqlite:///path/optuna.db or "
                          "postgresql://user@host/db (or null for the sweep directory's SQLite file)")
    from carvelab.trials.tracking import tracker_names  # the registry lives with the trackers

    if raw.tracking.backend not in tracker_names():
        raise ConfigError(f"{where}: tracking.backend={raw.tracking.backend!r} is not allowed; choose one of "
                          f"{tracker_names()}")
    uri = raw.tracking.uri
    if uri and not (URI_RE.match(uri) or uri.startswith(("file:", "databricks"))):
        raise ConfigError(f"{where}: tracking.uri must be a tracking URI such as http://127.0.0.1:5000 or "
                          "sqlite:///path/mlflow.db (or null for the sweep directory's SQLite file)")


def _apply(base: dict, path: str, value: Any, key: str, where: str) -> None:
    """Refuse a value the field can never take.

    A value that only conflicts with other fields of ``base`` (e.g. a per-value write
    gate on a preset with tied gates) may be feasible together with other axes of the
    space; such points are recorded as infeasible when sampled, never trained.
    """
    change = nested(path, normalise(path, value))
    try:
        load_trial_config(deep_merge(base, change))
        return
    except ConfigError as exc:
        first = exc
    try:
        load_trial_config(change)
    except ConfigError:
        raise ConfigError(f"{where}: {key}={value!r}: {str(first).split(': ', 1)[-1]}") from None


def _param(name: str, value: Any, base: dict, where: str) -> S.ParamSpec:
    path = param_path(name, where, base=base)
    if isinstance(value, (list, tuple)):
        value = {"type": "categorical", "choices": list(value)}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: space.{name}={value!r} must be a list of values or a mapping with 'type'")
    extra = set(value) - {"type", "choices", "low", "high", "step"}
    if extra:
        raise ConfigError(f"{where}: space.{name}: unknown key {sorted(extra)[0]!r}; allowed: type, choices, low, high, step")
    kind = value.get("type", "categorical")
    _choice(where, f"space.{name}.type", kind, S.PARAM_TYPES)
    if kind == "categorical":
        choices = value.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise ConfigError(f"{where}: space.{name}.choices must be a non-empty list")
        choices = [normalise(path, c) for c in choices]
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{where}: space.{name}.choices={choices} has duplicates")
        for i, c in enumerate(choices):
            if not isinstance(c, (str, int, float, bool)) or c is None:
                raise ConfigError(f"{where}: space.{name}[{i}]={c!r} must be a string, number or boolean")
            if isinstance(c, (int, float)) and not isinstance(c, bool) and not _finite(c):
                raise ConfigError(f"{where}: space.{name}[{i}]={c!r} must be a finite number")
            _apply(base, path, c, f"space.{name}[{i}]", where)
        return S.ParamSpec(name=name, path=path, type=kind, choices=choices)
    low, high, step = value.get("low"), value.get("high"), value.get("step")
    for key, v in (("low", low), ("high", high)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not _finite(v):
            raise ConfigError(f"{where}: space.{name}.{key}={v!r} must be a finite number")
    if not low < high:
        raise ConfigError(f"{where}: space.{name}: low={low} must be < high={high}")
    if kind == "log_float" and low <= 0:
        raise ConfigError(f"{where}: space.{name}.low={low} must be > 0 for log_float")
    if kind == "int" and (int(low) != low or int(high) != high):
        raise ConfigError(f"{where}: space.{name}: int range needs integer low/high, got {low}, {high}")
    if step is not None and (not isinstance(step, (int, float)) or isinstance(step, bool) or not _finite(step)
                             or step <= 0):
        raise ConfigError(f"{where}: space.{name}.step={step!r} must be a positive number")
    if kind == "int" and step is not None and int(step) != step:
        raise ConfigError(f"{where}: space.{name}.step={step!r} must be a positive integer for an int range")
    for key, v in (("low", low), ("high", high)):
        _apply(base, path, int(v) if kind == "int" else float(v), f"space.{name}.{key}", where)
    return S.ParamSpec(name=name, path=path, type=kind, low=low, high=high, step=step)


def _finite(v: Any) -> bool:
    """A number that converts to a finite float (not NaN, not infinite, not an int too large for a float)."""
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


# Paths a tune value may not set: the seeds have their own list, and the question's axes
# belong in ``space`` (a tuned axis would be selected away, not compared).
_UNTUNABLE = ("train.seed", "model.seed", "task.name", "train.device", "train.checkpoint_dir")
MAX_TUNE_POINTS = 64


def _validate_tune(raw: S.SweepFile, base: dict, params: list, changes: list, where: str) -> list:
    """``tune: {path: [values]}`` as categorical ParamSpecs; nuisance paths only."""
    swept = {p.path for p in params} | {param_path(n, where, base=base) for c in changes for n in c}
    out, count = [], 1
    for name, values in raw.tune.items():
        path = param_path(name, where, prefix="tune", base=base)
        if name in S.AXES:
            raise ConfigError(f"{where}: tune.{name}: {name!r} is an axis of the design space; tune takes "
                              "nuisance hyperparameters (e.g. train.lr, train.weight_decay): put axes in space")
        if path in _UNTUNABLE:
            raise ConfigError(f"{where}: tune.{name} cannot be tuned; paths that cannot: {list(_UNTUNABLE)}"
                              + (" (list seeds under seeds:)" if path.endswith(".seed") else ""))
        if path in swept:
            raise ConfigError(f"{where}: tune.{name} is also swept (space or ablation.changes); "
                              "a path is either a question (space) or a nuisance (tune), not both")
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"{where}: tune.{name}={values!r} must be a non-empty list of values "
                              "(each is trained at every point; ranges belong in space)")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{where}: tune.{name}={list(values)} has duplicates")
        for i, v in enumerate(values):
            if not isinstance(v, (str, int, float, bool)) or (isinstance(v, float) and not _finite(v)):
                raise ConfigError(f"{where}: tune.{name}[{i}]={v!r} must be a string, a finite number or a boolean")
            _apply(base, path, v, f"tune.{name}[{i}]", where)
        count *= len(values)
        out.append(S.ParamSpec(name=path, path=path, type="categorical", choices=list(values)))
    if count > MAX_TUNE_POINTS:
        raise ConfigError(f"{where}: tune has {count} combinations; at most {MAX_TUNE_POINTS} "
                          "(each is trained at every point and seed)")
    return out


def _validate_changes(raw: S.SweepFile, base: dict, task_keys: dict, where: str) -> list:
    changes = [dict(c) for c in raw.ablation.changes]
    if raw.mode != "ablation":
        if changes:
            raise ConfigError(f"{where}: ablation.changes is only used with mode 'ablation' (mode is {raw.mode!r})")
        return []
    if not changes:
        raise ConfigError(f"{where}: ablation.changes must list at least one change, e.g. [{{erase_axis: value}}]")
    if raw.space:
        raise ConfigError(f"{where}: space must be empty in mode 'ablation' (the changes are the space)")
    out = []
    for i, change in enumerate(changes):
        if not change:
            raise ConfigError(f"{where}: ablation.changes[{i}] is empty")
        merged: dict = dict(base)
        for name, value in change.items():
            path = param_path(name, where, prefix=f"ablation.changes[{i}]", base=base)
            merged = deep_merge(merged, nested(path, normalise(path, value)))
        try:
            load_trial_config(fit_task(merged, task_keys))
        except ConfigError as exc:
            raise ConfigError(f"{where}: ablation.changes[{i}]={change}: {str(exc).split(': ', 1)[-1]}") from None
        out.append({name: normalise(S.AXES.get(name, name), v) for name, v in change.items()})
    return out


def _grid_size(spec: S.SweepSpec) -> int:
    size = 1
    for p in spec.params:
        size *= len(p.choices) if p.type == "categorical" else int((p.high - p.low) // (p.step or 1)) + 1
    return size


def _infeasibility(spec: S.SweepSpec, point: dict) -> str:
    try:
        point_config(spec, point, spec.seeds[0])
        return ""
    except ConfigError as exc:
        return str(exc).split(": ", 1)[-1]


def _feasible(spec: S.SweepSpec, point: dict) -> bool:
    try:
        point_config(spec, point, spec.seeds[0])
        return True
    except ConfigError:
        return False


def _check_effective_axes(spec: S.SweepSpec, where: str) -> None:
    """Refuse axes that can have no effect (contradictory with the rest of the sweep)."""
    names = {p.path: p for p in spec.params}
    gate = names.get("model.content_gate")
    base_gate = load_trial_config(spec.base).model.content_gate
    gate_can_be_on = base_gate or (gate is not None and gate.type == "categorical" and True in gate.choices)
    for dep in ("model.content_rank", "model.content_target"):
        if dep in names and not gate_can_be_on:
            raise ConfigError(
                f"{where}: space.{names[dep].name} has no effect: the content gate is off in base and "
                "never switched on by space.content_gate"
            )
