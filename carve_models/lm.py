"""``HybridLM``: a causal LM of gated-delta mixers and sliding-window attention.

    h_0 = E[input_ids]                                       [B, T, d_model]
    for each layer ℓ (kind from ``cfg.layer_kinds()``):
        h = h + mixer_ℓ(RMSNorm(h))        mixer: the kind's class (carve_models.mixers)
        h = h + SwiGLU_ℓ(RMSNorm(h))
    logits = RMSNorm(h) Eᵀ                                   [B, T, vocab]   (tied head)

With ``tie_embeddings: false`` the head is a separate ``lm_head`` linear map.

Where the norms run fused (``RMSNorm`` on ``kernels/triton_norm.py``), each residual add and
the norm that reads its result run as one kernel (``add_rms_norm``): the same h and the same
norm outputs, without a separate pass over h for the add (and its gradient's sum and cast).
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from carvelab.carve_models.config import ModelConfig
from carvelab.carve_models.init import init_weights
from carvelab.carve_models.mixers import mixer_class
from carvelab.carve_models.mlp import SwiGLU
from carvelab.carve_models.norm import RMSNorm, matmul_dtype
from carvelab.kernels.dispatch import resolve_backend
from carvelab.kernels.fused import add_rms_norm, cast_all, cast_once_enabled, on_triton

logger = logging.getLogger(__name__)


class Block(nn.Module):
    """Pre-norm residual block: mixer then SwiGLU. x [B, T, d] -> [B, T, d]. (``HybridLM``
    runs the same maps itself where its residual adds are fused into the norms.)"""

    def __init__(self, cfg: ModelConfig, layer_idx: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.mixer_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.recurrence, feeds_matmul=True)
        mixer_cls = mixer_class(kind)
        # Without sequence mixing each position is processed alone: the no-mixing control.
        self.mixer = mixer_cls(cfg, layer_idx) if cfg.sequence_mixing else None
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.recurrence, feeds_matmul=True)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mixer is not None:
            x = x + self.mixer(self.mixer_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class HybridLM(nn.Module):
    """The model of one ``ModelConfig``; built and initialised on the CPU."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i, kind) for i, kind in enumerate(cfg.layer_kinds()))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.recurrence, feeds_matmul=True)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        init_weights(self, cfg)
        logger.debug("built HybridLM: %s layers %s, %d parameters", cfg.n_layers, cfg.layer_kinds(), self.num_parameters())

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T] (int) -> the final norm's output [B, T, d_model], what the head reads."""
        return self._with_cast_weights(self._hidden, input_ids, head=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T] (int) -> logits [B, T, vocab_size]."""
        return self._with_cast_weights(self._forward, input_ids, head=True)

    def _with_cast_weights(self, fn, input_ids: torch.Tensor, head: bool) -> torch.Tensor:
        """``fn(input_ids)``, where ``CARVELAB_CAST_ONCE=1`` under autocast with the recurrence on
        Triton with every projection weight (the head's only when ``head``) cast at once
        (``kernels.fused.cast_all``): the projections then find their weights in the autocast
        dtype and cast nothing."""
        device = self.embed.weight.device
        if not (cast_once_enabled() and torch.is_autocast_enabled(device.type)
                and on_triton(self.cfg.recurrence, device)):
            return fn(input_ids)
        names = [f"{name}.weight" for name, m in self.named_modules()
                 if isinstance(m, nn.Linear) and (head or m is not self.lm_head)]
        params = dict(self.named_parameters())
        cast = cast_all([params[n] for n in names], torch.get_autocast_dtype(device.type))
        with torch.nn.utils.stateless._reparametrize_module(self, dict(zip(names, cast))):
            return fn(input_ids)

    def _hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, T]; got shape {tuple(input_ids.shape)}")
        h = self.embed(input_ids)
        if self.norm._fused(h):
            return self._fused_residual(h)
        for layer in self.layers:
            h = layer(h)
        return self.norm(h)

    def _fused_residual(self, h: torch.Tensor) -> torch.Tensor:
        """The layers' loop of ``Block.forward`` with each residual add fused into the next norm."""
        steps = [s for m in self.layers for s in ((m.mixer_norm, m.mixer), (m.mlp_norm, m.mlp)) if s[1] is not None]
        norms = [norm for norm, _ in steps[1:]] + [self.norm]
        n = steps[0][0](h)
        for (_, f), norm in zip(steps, norms):
            h, n = add_rms_norm(h, f(n), norm.weight, norm.eps, matmul_dtype(h))
        return n

    def head_weight(self) -> torch.Tensor:
        """The LM head's weight [vocab_size, d_model]: the embedding's when tied."""
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def _forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self._hidden(input_ids)
        if self.lm_head is None:
            return h @ self.embed.weight.t().to(h.dtype)
        return self.lm_head(h)

    def num_parameters(self) -> int:
        """Number of distinct parameter elements (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())

    def kernel_implementation(self, device: Optional[torch.device] = None) -> Optional[str]:
        """Which recurrence implementation the recurrent layers run on ``device``
        (default: where the parameters are), as ``dispatch.resolve_backend`` names it;
        None when the model has no recurrent layer."""
        if "recurrent" not in self.cfg.layer_kinds() or not self.cfg.sequence_mixing:
            return None
        device = device if device is not None else self.embed.weight.device
        return resolve_backend(self.cfg.backend, device, self.cfg.erase_axis, self.cfg.chunk_size)
