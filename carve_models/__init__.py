"""carvelab.carve_models: the gated delta-rule model family.

- ``ModelConfig`` (``config``): one point of the architecture space, validated.
- ``GatedDeltaMixer`` (``mixer``; gates in ``gates``, short conv in ``conv``): the
  recurrent layer, calling ``carvelab.kernels.dispatch.gated_delta``.
- ``SlidingWindowAttention`` (``attention``), ``SwiGLU`` (``mlp``), ``RMSNorm`` /
  ``GatedRMSNorm`` (``norm``).
- ``HybridLM`` (``lm``): the hybrid stack; ``init_weights`` (``init``): default / matched.
- ``PRESETS`` / ``preset_config`` (``presets``): gdn, kda, gdn2, carve, bayes, deltanet.
- ``param_count`` / ``flops_per_token`` / ``state_bytes`` (``costs``): analytic costs.
"""
from carvelab.carve_models.attention import SlidingWindowAttention
from carvelab.carve_models.config import ModelConfig, parse_hybrid_ratio
from carvelab.carve_models.costs import flops_per_token, param_count, state_bytes
from carvelab.carve_models.init import init_weights
from carvelab.carve_models.lm import HybridLM
from carvelab.carve_models.mixer import GatedDeltaMixer
from carvelab.carve_models.mlp import SwiGLU
from carvelab.carve_models.norm import GatedRMSNorm, RMSNorm
from carvelab.carve_models.presets import PRESETS, preset_config

__all__ = [
    "GatedDeltaMixer",
    "GatedRMSNorm",
    "HybridLM",
    "ModelConfig",
    "PRESETS",
    "RMSNorm",
    "SlidingWindowAttention",
    "SwiGLU",
    "flops_per_token",
    "init_weights",
    "param_count",
    "parse_hybrid_ratio",
    "preset_config",
    "state_bytes",
]
