"""Trial-config loading: YAML (+ ``key=value`` overrides) -> a validated ``TrialConfig``.

A trial config file::

    preset: gdn2            # optional: a named model preset, the base of `model`
    model: {d_model: 64}    # ModelConfig fields, on top of the preset
    task: {name: mqar}      # the fields of that task's config (carvelab.trials.tasks)
    train: {steps: 200}     # TrainConfig fields

OmegaConf structured configs in struct mode do the type checking (unknown keys raise);
the dataclasses' own validation does the rest. Every error is a ``ConfigError`` naming
the file and the key path.
"""
from __future__ import annotations

import dataclasses
import functools
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from carvelab.carve_models.config import ModelConfig
from carvelab.search_space.trial_config import TrialConfig
from carvelab.search_space.yaml_io import ConfigError, deep_merge, parse_overrides, read_yaml
from carvelab.trials.tasks import DEFAULT_TASK, task_class  # the registry lives with the tasks

# `provenance` is written by `carvelab export` (where a config came from) and ignored here.
TOP_KEYS = ("preset", "model", "task", "train", "provenance")


def _allowed_keys(schema: Any, full_key: str) -> list[str]:
    node = schema
    for part in full_key.split(".")[:-1]:
        node = getattr(node, part, None)
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []


_SCHEMAS: OrderedDict = OrderedDict()
_SCHEMA_CACHE_SIZE = 64


def _typed_tree(value: Any) -> Any:
    """A hashable picture of ``value`` that tells apart what a schema tells apart: each
    dataclass by its class object (two classes of one name are two keys), each leaf with
    its type (1, 1.0 and True are three keys)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value), tuple((f.name, _typed_tree(getattr(value, f.name))) for f in dataclasses.fields(value)))
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(_typed_tree(v) for v in value))
    if isinstance(value, Mapping):
        return (dict, tuple(sorted(((repr(k), _typed_tree(v)) for k, v in value.items()), key=lambda kv: kv[0])))
    return (type(value), value)


def _schema(cls_instance: Any) -> Any:
    """The struct-mode structured schema of ``cls_instance``, built once per distinct value
    (``OmegaConf.structured`` is most of a config's loading time; a sweep loads the same
    bases again and again). A cached schema is only ever read: ``OmegaConf.merge`` copies
    it, and ``to_object`` builds fresh dataclasses from the copy."""
    key = _typed_tree(cls_instance)
    try:
        schema = _SCHEMAS.pop(key)
    except KeyError:
        schema = OmegaConf.structured(cls_instance)
        OmegaConf.set_struct(schema, True)
    except TypeError:  # an unhashable leaf: no caching
        schema = OmegaConf.structured(cls_instance)
        OmegaConf.set_struct(schema, True)
        return schema
    _SCHEMAS[key] = schema
    while len(_SCHEMAS) > _SCHEMA_CACHE_SIZE:
        _SCHEMAS.popitem(last=False)
    return schema


def to_dataclass(cls_instance: Any, data: Mapping, where: str) -> Any:
    """Merge ``data`` into the structured schema of ``cls_instance`` and build the dataclass."""
    schema = _schema(cls_instance)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.create(dict(data)))
        return OmegaConf.to_object(merged)
    except ConfigKeyError as exc:
        key = getattr(exc, "full_key", None) or "?"
        allowed = _allowed_keys(cls_instance, key)
        raise ConfigError(f"{where}: unknown key {key!r}; allowed keys here: {allowed}") from None
    except ValidationError as exc:
        key = getattr(exc, "full_key", None) or "?"
        msg = str(exc).split("\n")[0]
        raise ConfigError(f"{where}: {key}: {msg}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{where}: {str(exc).splitlines()[0]}") from None
    except ValueError as exc:  # the dataclasses' own validation
        raise ConfigError(f"{where}: {exc}") from None


def typed_section(key: str, cls: type, data: Mapping, where: str) -> Any:
    """``data`` (the mapping under ``key``) as a ``cls`` instance, in struct mode: unknown
    keys and bad types raise ``ConfigError`` naming ``key.<field>``."""
    return getattr(to_dataclass(_holder(key, cls)(), {key: dict(data)}, where), key)


@functools.lru_cache(maxsize=None)
def _holder(key: str, cls: type) -> type:
    """The one-field dataclass ``typed_section`` validates through, one class per (key, cls)
    (a new class per call would make every schema a new one)."""
    return dataclasses.make_dataclass("Section", [(key, cls, dataclasses.field(default_factory=cls))])


def task_config(data: Mapping, where: str) -> Any:
    """A ``task:`` mapping as an instance of its task's own config class."""
    try:
        cls = task_class(data.get("name", DEFAULT_TASK)).Config
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return typed_section("task", cls, data, where)


def base_model(preset: Any, where: str) -> ModelConfig:
    if preset is None:
        return ModelConfig()
    from carvelab.carve_models.presets import preset_config

    try:
        return preset_config(str(preset))
    except ValueError as exc:
        raise ConfigError(f"{where}: preset: {exc}") from None


def trial_config_from_dict(data: Mapping, where: str = "<config>") -> TrialConfig:
    """Validate a plain mapping (already merged with overrides) into a ``TrialConfig``."""
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key {unknown[0]!r}; allowed: {list(TOP_KEYS)}")
    for key in ("model", "task", "train"):
        if data.get(key) is not None and not isinstance(data[key], Mapping):
            raise ConfigError(f"{where}: {key} must be a mapping of fields, got {data[key]!r}")
    model = base_model(data.get("preset"), where)
    body = {k: v for k, v in data.items() if k not in ("preset", "provenance", "task") and v is not None}
    task = task_config(data.get("task") or {}, where)
    return to_dataclass(TrialConfig(model=model, task=task), body, where)


def load_trial_config(source: str | Path | Mapping, overrides: list[str] | tuple[str, ...] = ()) -> TrialConfig:
    """Load a trial config from a YAML file or a mapping, with ``dotted.key=value`` overrides."""
    if isinstance(source, Mapping):
        data, where = dict(source), "<config>"
    else:
        data, where = read_yaml(source), str(source)
    return trial_config_from_dict(deep_merge(data, parse_overrides(overrides)), where)


def trial_config_to_dict(cfg: TrialConfig) -> dict:
    """The fully resolved config as plain data (re-loadable by ``load_trial_config``)."""
    return dataclasses.asdict(cfg)
