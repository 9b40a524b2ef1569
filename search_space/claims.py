"""Claims a sweep checks, and the sizes a sweep file can be run at.

A claim study is an ``ablation`` sweep whose file also declares what published work says
its changes do::

    claims:
      - name: negative eigenvalues solve parity          # optional
        change: {eigen_range: "[-1,1]"}                   # one of ablation.changes, as written there
        against: baseline                                 # or another of ablation.changes
        metric: test_accuracy                             # a reported metric (not a val_ one)
        expect: increase                                  # increase | decrease |
                                                          # {relative: -0.19, tolerance: 0.03}
        source: "Grazzi et al. 2024, Table 1"

Each claim gets a verdict from the paired-by-seed effect of ``change`` against ``against``
(``dashboards/claims.py``). A claim's metric is reported, never selected on: ``val_*``
metrics are refused (use ``test_*``).

Sizes. ``sizes: {gpu: {base.train.steps: 4000, resources.gpus_per_trial: 0.25}}`` maps a
size name to dotted overrides; ``load_sweep(..., size="gpu")`` (``--size gpu``) applies
them before the command-line overrides and names the sweep ``<name>_<size>`` (unless the
size sets ``name``), so two sizes never share a results folder. The file as written is the
default size.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

from carvelab.search_space import sweep_spec as S
from carvelab.search_space.points import change_label, nested, normalise
from carvelab.search_space.yaml_io import ConfigError, deep_merge

DIRECTIONS = ("increase", "decrease")
_CLAIM_KEYS = ("name", "change", "against", "metric", "expect", "source")
# Per-run metrics a claim may name beyond the sweep metrics: the test split's.
TEST_METRICS = ("test_accuracy", "test_loss", "test_ppl")


def apply_size(data: dict, size: Optional[str], where: str) -> dict:
    """``data`` without its ``sizes:`` section, with size ``size``'s overrides merged in."""
    sizes = data.pop("sizes", None)
    if sizes is not None and (not isinstance(sizes, Mapping)
                              or not all(isinstance(v, Mapping) for v in sizes.values())):
        raise ConfigError(f"{where}: sizes must map a size name to dotted overrides, "
                          "e.g. {gpu: {base.train.steps: 4000}}")
    if size is None:
        return data
    if not sizes or size not in sizes:
        raise ConfigError(f"{where}: size {size!r} is not declared; sizes here: {sorted(sizes or {})}")
    merged = data
    for key, value in sizes[size].items():
        if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{where}: sizes.{size}: {key!r} must be a dotted key, e.g. base.train.steps")
        merged = deep_merge(merged, nested(key, value))
    if "name" not in sizes[size]:
        merged["name"] = f"{data.get('name', '')}_{size}"
    return merged


def validate_claims(raw: Any, spec: S.SweepSpec, where: str) -> list[S.ClaimSpec]:
    """The typed claims of a sweep, each naming its key path when it is wrong."""
    if raw in (None, []):
        return []
    if not isinstance(raw, list) or not all(isinstance(c, Mapping) for c in raw):
        raise ConfigError(f"{where}: claims must be a list of mappings with keys {list(_CLAIM_KEYS)}")
    if spec.mode != "ablation":
        raise ConfigError(f"{where}: claims need mode 'ablation' (a baseline and one-factor changes, "
                          f"paired by seed); mode is {spec.mode!r}")
    return [_claim(dict(c), spec, f"{where}: claims[{i}]") for i, c in enumerate(raw)]


def _claim(c: dict, spec: S.SweepSpec, where: str) -> S.ClaimSpec:
    unknown = sorted(set(c) - set(_CLAIM_KEYS))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]} is not a claim key; allowed: {list(_CLAIM_KEYS)}")
    for key in ("change", "metric", "expect"):
        if key not in c:
            raise ConfigError(f"{where}.{key} is required")
    change = _match_change(c["change"], spec, f"{where}.change")
    against = None if c.get("against", "baseline") == "baseline" else _match_change(c["against"], spec,
                                                                                    f"{where}.against")
    if against == change:
        raise ConfigError(f"{where}: change and against are the same point {change}")
    metric = c["metric"]
    allowed = [m for m in S.METRICS if not m.startswith("val_")] + list(TEST_METRICS)
    if isinstance(metric, str) and metric.startswith("val_"):
        raise ConfigError(f"{where}.metric={metric!r}: a claim is reported, not selected on; use the test "
                          f"split's {'test_' + metric[4:]!r}")
    if metric not in allowed:
        raise ConfigError(f"{where}.metric={metric!r} is not allowed; choose one of {allowed}")
    if metric in S.INIT_METRICS and not (spec.base.get("train") or {}).get("eval_at_init", False):
        raise ConfigError(f"{where}.metric={metric!r} is measured only with base.train.eval_at_init: true")
    expect, relative, tolerance = _expectation(c["expect"], f"{where}.expect")
    source = c.get("source", "")
    if not isinstance(source, str):
        raise ConfigError(f"{where}.source={source!r} must be a string (where the claim is made)")
    name = c.get("name") or f"{change_label(change)} vs {change_label(against)}: {metric} {_describe(expect, relative)}"
    if not isinstance(name, str):
        raise ConfigError(f"{where}.name={name!r} must be a string")
    return S.ClaimSpec(name=name, change=change, against=against, metric=metric, expect=expect,
                       relative=relative, tolerance=tolerance, source=source)


def _match_change(value: Any, spec: S.SweepSpec, where: str) -> dict:
    """The entry of ``spec.changes`` that ``value`` (a mapping, axis names or dotted paths) is."""
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"{where}={value!r} must be 'baseline' or one of ablation.changes, e.g. "
                          f"{spec.changes[0] if spec.changes else {}}")
    def by_path(change: Mapping) -> dict:
        return {S.AXES.get(k, k): normalise(S.AXES.get(k, k), v) for k, v in change.items()}

    wanted = by_path(value)
    for change in spec.changes:
        if by_path(change) == wanted:
            return dict(change)
    raise ConfigError(f"{where}={dict(value)} is not one of ablation.changes {spec.changes}")


def _expectation(value: Any, where: str) -> tuple[str, Optional[float], Optional[float]]:
    if value in DIRECTIONS:
        return value, None, None
    if isinstance(value, Mapping) and set(value) == {"relative", "tolerance"}:
        rel, tol = value["relative"], value["tolerance"]
        for key, x in (("relative", rel), ("tolerance", tol)):
            if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x):
                raise ConfigError(f"{where}.{key}={x!r} must be a finite number")
        if tol <= 0:
            raise ConfigError(f"{where}.tolerance={tol!r} must be > 0 (the claim holds within relative ± tolerance)")
        return "relative", float(rel), float(tol)
    raise ConfigError(f"{where}={value!r} is not allowed; use one of {list(DIRECTIONS)} or "
                      "{relative: R, tolerance: T} (the claimed relative change R, within ± T)")


def _describe(expect: str, relative: Optional[float]) -> str:
    return expect if expect != "relative" else f"changes by {100 * relative:+.1f}%"
