"""Optimizers (--optimizer adamw, sgd, adam, rmsprop; parameter groups without weight decay on biases and
norms) and the learning-rate schedules (--schedule cosine: linear warm-up then cosine decay to zero;
onecycle: airbench's shape; plateau: warm-up then the peak, cut by ReduceOnPlateau).

The schedule is a pure function of training progress, so resuming needs only the step (and the history,
for plateau's cuts), not a pickled scheduler object.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float):
    if hasattr(model, "optimizer_groups"):  # a model with its own recipe (e.g. fast: 64x lr on BN biases)
        groups = model.optimizer_groups(weight_decay)
    else:
        # No weight decay on biases and normalisation parameters (standard practice; timm does the same).
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return optimizer_for(name, [g for g in groups if g["params"]], lr, momentum)


def optimizer_for(name: str, groups: list[dict], lr: float, momentum: float) -> torch.optim.Optimizer:
    """The --optimizer over parameter groups (each with its own weight_decay, and lr_scale for set_lr)."""
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if name == "adam":  # weight decay as L2 added to the gradient (coupled), unlike AdamW
        return torch.optim.Adam(groups, lr=lr)
    if name == "rmsprop":  # alpha 0.9: Keras's rho, the setting the course notebooks were tuned with
        return torch.optim.RMSprop(groups, lr=lr, alpha=0.9)
    return torch.optim.AdamW(groups, lr=lr)


def lr_at(progress: float, warmup: float, peak: float, schedule: str = "cosine") -> float:
    """Learning rate at a point of training, progress in [0, 1] (steps done / steps planned, or
    time used / time budget when training against a clock).

    cosine: linear warm-up over the first `warmup` fraction, then cosine decay to zero.
    onecycle: linear from 0.2x to 1x over the first 25%, then linear down to 0.07x (airbench's shape).
    plateau: linear warm-up, then the peak; the cuts on a stalled validation loss are the Trainer's lr_factor
    (callbacks.ReduceOnPlateau).
    """
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "onecycle":
        if progress < 0.25:
            return peak * (0.2 + 0.8 * progress / 0.25)
        return peak * (1.0 - 0.93 * (progress - 0.25) / 0.75)
    if warmup > 0 and progress < warmup:
        return peak * progress / warmup
    if schedule == "plateau":
        return peak
    rest = (progress - warmup) / max(1e-12, 1.0 - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * rest))


def set_lr(optimizer: torch.optim.Optimizer, lr: float, progress: float = 0.0) -> None:
    """Set every group's rate: lr times the group's lr_scale, or zero once training progress has passed
    the group's active_until (a part that trains only early on, e.g. the fast model's whitening bias)."""
    for group in optimizer.param_groups:
        active = progress < group.get("active_until", float("inf"))
        group["lr"] = lr * group.get("lr_scale", 1.0) if active else 0.0
