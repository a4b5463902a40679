"""Optimizer and learning-rate schedule (linear warm-up, then cosine decay to zero).

The schedule is a pure function of the global step, so resuming needs only the step
number, not a pickled scheduler object.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float):
    # No weight decay on biases and normalisation parameters (standard practice; timm does the same).
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr)


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
