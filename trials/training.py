"""Optimiser, learning-rate schedule, the optimiser step (its loss: ``lm_loss``) and evaluation
of one trial."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from carvelab.search_space.trial_config import TrainConfig
from carvelab.trials.lm_loss import compute_loss
from carvelab.trials.tasks.base import IGNORE_INDEX as IGNORE


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, fused: Optional[bool] = None,
                   capturable: bool = False) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norms, biases, gate constants).

    ``fused`` (default: when every parameter is on a GPU): torch's fused AdamW, one kernel
    per parameter group and step instead of a handful per parameter tensor; the same update.
    ``capturable``: the step may be captured in a CUDA graph (step counts and the learning
    rate live on the device; ``set_lr`` writes the rate in place)."""
    if fused is None:
        fused = all(p.is_cuda for p in model.parameters())
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if capturable:
        device = next(model.parameters()).device
        for group in groups:
            group["lr"] = torch.tensor(float(cfg.lr), device=device)
        return torch.optim.AdamW(groups, lr=torch.tensor(float(cfg.lr), device=device), betas=(0.9, 0.95),
                                 fused=True, capturable=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=fused or None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate; in place where it is a device tensor (capturable)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
                   targets: torch.Tensor, grad_clip: float, autocast, ce_chunk: int = 0) -> torch.Tensor:
    """Loss (``lm_loss.compute_loss``; ``ce_chunk`` tokens at a time through the head when
    positive), backward, clipping at ``grad_clip``, one optimiser step; returns the loss
    (a 0-d device tensor). Waits for nothing, so it can also be captured in a CUDA graph."""
    with autocast:
        loss = compute_loss(model, inputs, targets, ce_chunk)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip, foreach=True)
    optimizer.step()
    return loss.detach()


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model, batches, device: torch.device, split: str = "val") -> dict[str, float]:
    """Loss (token-weighted), accuracy and perplexity over the scored positions, named
    ``<split>_loss``, ``<split>_accuracy``, ``<split>_ppl``."""
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for inputs, targets in batches:
        inputs, targets = inputs.to(device), targets.to(device)
        logits = model(inputs).float()
        mask = targets != IGNORE
        n = int(mask.sum())
        if n == 0:
            continue
        loss_sum += F.cross_entropy(logits[mask], targets[mask], reduction="sum").item()
        correct += int((logits[mask].argmax(-1) == targets[mask]).sum())
        count += n
    model.train(was_training)
    if count == 0:
        raise ValueError(f"the {split} set has no scored positions (every target is -100)")
    loss = loss_sum / count
    return {f"{split}_loss": loss, f"{split}_accuracy": correct / count, f"{split}_ppl": math.exp(min(loss, 50.0))}
