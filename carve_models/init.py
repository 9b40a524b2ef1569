"""Parameter initialisation: ``init: default`` and ``init: matched``.

Both modes use the same rule per parameter:
- a rule a module declares in ``special_inits() -> {relative name: fn(tensor, generator)}``
  (A_log, dt_bias, the zero write-gate weight and its constant bias, the content gate's
  U = 0 and V, norm weights = 1, short-conv kernels);
- otherwise by owning module: ``nn.Linear`` / ``nn.Embedding`` weight ~ N(0, 0.02²),
  ``nn.Linear`` bias = 0.

They differ in the random stream:
- ``default``: torch's global RNG after ``torch.manual_seed(cfg.seed)``, parameters in
  module order (adding a parameter shifts every draw after it);
- ``matched``: each parameter draws from its own generator seeded by
  ``crc32(f"{cfg.seed}:{qualified name}")``, so two models that share a parameter name
  (and shape) get identical values whatever other parameters they have.

Models are initialised on the CPU (seeded CPU and CUDA generators give different streams).
"""
from __future__ import annotations

import zlib
from typing import Callable, Optional

import torch
from torch import nn

from carvelab.carve_models.config import ModelConfig

INIT_STD = 0.02

Rule = Callable[[torch.Tensor, Optional[torch.Generator]], None]


def _normal(p: torch.Tensor, generator=None) -> None:
    p.normal_(0.0, INIT_STD, generator=generator)


def _zeros(p: torch.Tensor, generator=None) -> None:
    p.zero_()


def matched_seed(seed: int, name: str) -> int:
    """The generator seed of parameter ``name``: a stable hash of (seed, name)."""
    return zlib.crc32(f"{seed}:{name}".encode())


def special_rules(model: nn.Module) -> dict[str, Rule]:
    """Every rule declared by a module's ``special_inits``, keyed by qualified name."""
    rules: dict[str, Rule] = {}
    for prefix, module in model.named_modules():
        declare = getattr(module, "special_inits", None)
        if declare is None:
            continue
        for rel, rule in declare().items():
            rules[f"{prefix}.{rel}" if prefix else rel] = rule
    return rules


def _type_rule(module: nn.Module, local: str, name: str) -> Rule:
    if isinstance(module, (nn.Linear, nn.Embedding)) and local == "weight":
        return _normal
    if isinstance(module, nn.Linear) and local == "bias":
        return _zeros
    raise ValueError(f"parameter {name!r} of {type(module).__name__} has no initialisation rule")


def parameter_rules(model: nn.Module) -> dict[str, Rule]:
    """Qualified parameter name -> its init rule, in module order (shared tensors once)."""
    specials = special_rules(model)
    rules: dict[str, Rule] = {}
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        for local, p in module.named_parameters(recurse=False):
            name = f"{prefix}.{local}" if prefix else local
            if id(p) in seen:
                continue
            seen.add(id(p))
            rules[name] = specials.get(name) or _type_rule(module, local, name)
    return rules


@torch.no_grad()
def apply_special_inits(module: nn.Module) -> None:
    """Apply ``module.special_inits()`` with torch's global RNG as it stands (no reseeding).

    Modules call this in their constructor so a layer built on its own holds valid values
    (no ``torch.empty`` garbage); ``HybridLM`` then re-initialises everything by ``cfg.init``.
    """
    for rel, rule in module.special_inits().items():
        rule(module.get_parameter(rel), None)


@torch.no_grad()
def init_weights(model: nn.Module, cfg: ModelConfig) -> None:
    """Initialise every parameter of ``model`` in place, as ``cfg.init`` and ``cfg.seed`` say."""
    if cfg.init not in ("default", "matched"):
        raise ValueError(f"model.init={cfg.init!r} is not allowed; choose one of ['default', 'matched']")
    if cfg.init == "default":
        torch.manual_seed(cfg.seed)
    params = dict(model.named_parameters())
    for name, rule in parameter_rules(model).items():
        p = params[name]
        if p.is_meta:  # shapes only (costs.py): no values, and no generator exists on the meta device
            continue
        generator = None
        if cfg.init == "matched":
            generator = torch.Generator(device=p.device).manual_seed(matched_seed(cfg.seed, name))
        rule(p, generator)
