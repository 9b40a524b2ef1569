"""Optimiser, learning-rate schedule, loss and evaluation of one trial."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


from carvelab.search_space.trial_config import TrainConfig

from carvelab.trials.tasks.base import IGNORE_INDEX as IGNORE


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norms, biases, gate constants)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def compute_loss(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the scored positions (targets != -100)."""
    logits = model(inputs)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


@torch.no_grad()
def evaluate(model, batches, device: torch.device) -> dict[str, float]:
    """Loss (token-weighted), accuracy and perplexity over the scored positions."""
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
        raise ValueError("the validation set has no scored positions (every target is -100)")
    loss = loss_sum / count
    return {"val_loss": loss, "val_accuracy": correct / count, "val_ppl": math.exp(min(loss, 50.0))}
