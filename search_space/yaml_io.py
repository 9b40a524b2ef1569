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


# Far beyond what any config needs; keeps alias bombs and deep nesting from hanging or
# overflowing the stack of the loaders that walk the data after YAML.
MAX_DEPTH = 32
MAX_VALUES = 100_000


def parse_yaml_text(text: str, where: str = "<string>") -> Any:
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{where}: not usable YAML: nested more than {MAX_DEPTH} levels deep") from None
    check_shape(data, where)
    return data


def check_shape(data: Any, where: str) -> None:
    """Refuse data nested deeper than MAX_DEPTH, expanding (through YAML aliases) to more than
    MAX_VALUES values, or with mapping keys that are not strings; errors name the key path."""
    seen: dict[int, tuple[int, int]] = {}  # id -> (values, height) of the containers walked

    def walk(node: Any, path: str, depth: int) -> tuple[int, int]:
        if not isinstance(node, (dict, list)):
            return 1, 0
        if id(node) not in seen:  # a YAML alias is the same object again: walk it once
            if isinstance(node, dict):
                for key in node:
                    if not isinstance(key, str):
                        raise ConfigError(f"{where}: {_join(path, repr(key))}: keys must be strings, "
                                          f"got {type(key).__name__}")
                items = [(_join(path, key), value) for key, value in node.items()]
            else:
                items = [(f"{path}[{i}]", value) for i, value in enumerate(node)]
            values, height = 1, 0
            for sub, value in items:
                if depth + 1 > MAX_DEPTH:
                    raise ConfigError(f"{where}: {sub}: nested more than {MAX_DEPTH} levels deep")
                n, h = walk(value, sub, depth + 1)
                values, height = values + n, max(height, h + 1)
                if values > MAX_VALUES:
                    raise ConfigError(f"{where}: {path or 'the top level'}: expands to more than "
                                      f"{MAX_VALUES} values (YAML aliases?)")
            seen[id(node)] = (values, height)
        values, height = seen[id(node)]
        if depth + height > MAX_DEPTH:
            raise ConfigError(f"{where}: {path or 'the top level'}: nested more than {MAX_DEPTH} levels deep")
        return values, height

    walk(data, "", 0)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


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
