"""Named points of the architecture space.

Every preset sets all mixer axes (decay, erase axis and gate, write gate, tied gates,
covariance, content gate), so a preset means the same thing whatever ``ModelConfig``'s
defaults are; sizes and the hybrid stack come from the defaults or the overrides.

    deltanet  no decay, one beta per head, w = beta                  (DeltaNet)
    gdn       scalar decay per head, w = beta                         (Gated DeltaNet)
    kda       channel-wise decay, w = beta                            (KDA)
    gdn2      channel decay, channel erase gate on the key axis,
              per-value write gate                                   (Gated DeltaNet-2)
    carve     gdn2 + the content gate on the erase gate               (CARVE)
    bayes     channel decay, covariance propagation, w = b = 1/(1+r)  (Bayesian Layer)
"""
from __future__ import annotations

from types import MappingProxyType

from carvelab.carve_models.config import ModelConfig

_MIXER_BASE = dict(
    decay="channel", erase_axis="key", erase_gate="head", write_gate="scalar",
    tie_gates=True, covariance="reset", content_gate=False, content_target="erase", eigen_range="[0,1]",
)
_GDN2 = dict(_MIXER_BASE, erase_gate="channel", write_gate="per_value", tie_gates=False)

PRESETS = MappingProxyType({
    "deltanet": MappingProxyType(dict(_MIXER_BASE, decay="none")),
    "gdn": MappingProxyType(dict(_MIXER_BASE, decay="scalar")),
    "kda": MappingProxyType(dict(_MIXER_BASE)),
    "gdn2": MappingProxyType(dict(_GDN2)),
    "carve": MappingProxyType(dict(_GDN2, content_gate=True)),
    "bayes": MappingProxyType(dict(_MIXER_BASE, covariance="propagate")),
})


def preset_config(name: str, **overrides) -> ModelConfig:
    """The ``ModelConfig`` of preset ``name`` with ``overrides`` (ModelConfig fields) applied."""
    if name not in PRESETS:
        raise ValueError(f"model preset {name!r} is not allowed; choose one of {sorted(PRESETS)}")
    allowed = ModelConfig.field_names()
    for key in overrides:
        if key not in allowed:
            raise ValueError(f"model.{key} is not a model field (override of preset {name!r}); allowed: {allowed}")
    return ModelConfig(**{**PRESETS[name], **overrides})
