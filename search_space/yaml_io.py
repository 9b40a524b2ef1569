"""YAML reading with the two surprises of YAML 1.1 that matter here handled.

``hybrid_ratio: 3:1`` would be read by a YAML 1.1 parser as the base-60 integer 181;
we keep such scalars as strings. ``on`` / ``off`` stay booleans (``content_gate: [off, on]``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

_INT_1_2 = re.compile(r"^[-+]?(0|[1-9][0-9_]*)$|^0x[0-9a-fA-F_]+$|^0o?[0-7_]+$")


class _Loader(yaml.SafeLoader):
    """SafeLoader without the sexagesimal (base-60) integer and float forms."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (
        "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT_1_2, list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"),
    list("-+0123456789."),
)


class ConfigError(ValueError):
    """A config or sweep file that cannot be used; the message names the file and key path."""


def parse_yaml_text(text: str, where: str = "<string>") -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{where}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping from ``path``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    data = parse_yaml_text(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values, got {type(data).__name__}")
    return data


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict:
    """``["train.lr=1e-3", "model.hybrid_ratio=3:1"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} must look like dotted.key=value")
        value = parse_yaml_text(raw, f"override {key}") if raw.strip() else ""
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict, extra: dict) -> dict:
    """A new dict: ``extra`` merged into ``base`` recursively (mappings merge, values replace)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
