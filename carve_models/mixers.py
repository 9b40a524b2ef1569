"""The layer kinds a hybrid stack is built from: kind name -> its mixer class.

A mixer is ``cls(cfg: ModelConfig, layer_idx: int)``, an ``nn.Module`` mapping
x [B, T, d_model] -> [B, T, d_model] (causal). Each block of the stack is pre-norm
``x + mixer(norm(x))`` then ``x + SwiGLU(norm(x))`` (``lm.Block``).

A new kind is one module with its class plus one entry in ``MIXERS``; ``model.block``
then names it (``hybrid_ratio: "H:A"`` is shorthand for H ``recurrent`` then A
``attention`` layers). Entries are ``"module:attribute"`` strings, resolved when a model
is built, so ``ModelConfig`` can validate kind names without importing the layers.

Costs (``costs``) read the built stack for parameters and linear-map FLOPs, so a new kind
is counted there at once; its own non-linear FLOPs (beyond ``nn.Linear`` maps) and its
inference state are counted for the built-in kinds only.
"""
from __future__ import annotations

import importlib

MIXERS: dict[str, str] = {
    "recurrent": "carvelab.carve_models.mixer:GatedDeltaMixer",
    "attention": "carvelab.carve_models.attention:SlidingWindowAttention",
}


def kinds() -> list[str]:
    return list(MIXERS)


def mixer_class(kind: str) -> type:
    """The mixer class of ``kind``; ValueError naming the allowed kinds otherwise."""
    if kind not in MIXERS:
        raise ValueError(f"layer kind {kind!r} is not allowed; choose one of {kinds()}")
    module, _, attr = MIXERS[kind].partition(":")
    return getattr(importlib.import_module(module), attr)
