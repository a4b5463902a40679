"""`imgclass lr-find DATA`: the learning-rate range test (Leslie Smith; fastai's lr_find).
The learning rate grows exponentially over a short run while the loss is recorded; the plot
shows where the loss falls fastest, and the suggestion is the rate at the minimum of the
smoothed loss divided by 10 (fastai's "minimum/10" rule)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


from ..data.augment import from_config as augment_from_config
from ..data.cache import load_cached
from ..data.images import channel_stats
from ..data.preprocess import Preprocessing
from .. import log
from ..errors import DataError
from ..models.hierarchy import build as build_model
from .build import init_from_data, load_starting_weights
from .device import pick_device
from .optim import make_optimizer, set_lr
from .plan import plan_run
from .transfer import backbone_preprocessing


@dataclass
class LRFind:
    lrs: list[float]
    losses: list[float]
    suggestion: float
    plot: Path


def lr_find(data: str | Path, out: str | Path = "lr_find.png", start_lr: float = 1e-6, end_lr: float = 10.0,
            steps: int = 100, config: str | Path | None = None, **options: Any) -> LRFind:
    """The range test on the model, data options and normalisation train would use (the same plan_run and
    model building), for `steps` steps from start_lr to end_lr."""
    plan = plan_run(data, config, **options)
    cfg, name = plan.cfg, plan.cfg.model
    pre = Preprocessing(img_size=plan.phases[0][0], resize=cfg.resize, max_pixels=cfg.max_image_pixels)
    train, _ = load_cached(plan.split.root, plan.split.items["train"], pre, cfg.cache_dir, cfg.workers)
    if len(train) < 2:
        raise DataError("too few training images for lr-find")
    pre.mean, pre.std = channel_stats(train.images)
    if plan.transfer and (bp := backbone_preprocessing(name)) is not None:
        pre.mean, pre.std = bp["mean"], bp["std"]
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(plan.arch, plan.classes, plan.hierarchy)
    init_from_data(model, train, pre, cfg.seed)
    load_starting_weights(model, cfg, True, plan.hierarchy is not None, plan.classes, pre, log.info)
    model.to(device).train()
    opt = make_optimizer(model, cfg.optimizer, start_lr, plan.weight_decay, cfg.momentum)
    aug = augment_from_config(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    lrs, losses, smooth, best = [], [], 0.0, math.inf
    order = torch.randperm(len(train), generator=gen)
    batch = min(cfg.batch_size, len(train))
    for step in range(steps):
        lr = start_lr * (end_lr / start_lr) ** (step / max(1, steps - 1))
        set_lr(opt, lr)
        s = (step * batch) % max(1, len(order) - batch + 1)
        idx = order[s:s + batch]
        x = pre.standardize(aug(train.images[idx].to(device).float().div_(255), gen))
        y = train.labels[idx].to(device)
        if hasattr(model, "training_loss"):  # two-level labels: the loss of both levels, as in training
            loss, _ = model.training_loss(x, y, cfg.label_smoothing)
        else:
            loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
        value = float(loss.detach())
        smooth = 0.9 * smooth + 0.1 * value if step else value
        debiased = smooth / (1 - 0.9 ** (step + 1))
        lrs.append(lr)
        losses.append(debiased)
        best = min(best, debiased)
        if not math.isfinite(debiased) or debiased > 4 * best:
            break  # diverged: the rest of the range says nothing
    suggestion = lrs[min(range(len(losses)), key=losses.__getitem__)] / 10
    from matplotlib.figure import Figure  # deferred: only for the plot; a Figure outside pyplot's state
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(lrs, losses)
    ax.axvline(suggestion, color="tab:red", ls="--", label=f"suggested lr {suggestion:.2e}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)",
           title=f"Learning-rate range test: {name}, {cfg.optimizer}")
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return LRFind(lrs, losses, suggestion, out)
