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

from ..core import log
from ..core.errors import DataError
from ..core.figures import save_figure
from .build import make_trainer, prepare
from ..models.inference import pick_device
from .loop.optim import set_lr
from .plan import plan_run


@dataclass
class LRFind:
    lrs: list[float]
    losses: list[float]
    suggestion: float
    plot: Path


def lr_find(data: str | Path, out: str | Path = "lr_find.png", start_lr: float = 1e-6, end_lr: float = 10.0,
            steps: int = 100, config: str | Path | None = None, **options: Any) -> LRFind:
    """The range test on what train would train: the same plan_run, the same `prepare` (decoded splits,
    normalisation, the model with its starting weights, the optimizer) and the same Trainer, whose
    `train_step` takes each step (augmentation, mixup/cutmix, class weights, label smoothing, bf16), for
    `steps` steps from start_lr to end_lr."""
    plan = plan_run(data, config, **options)
    cfg, name = plan.cfg, plan.cfg.model
    device = pick_device(cfg.device)
    prep = prepare(plan, device, log.info)
    train = prep.data["train"]
    if len(train) < 2:
        raise DataError("too few training images for lr-find")
    trainer = make_trainer(plan, prep, device, callbacks=[])
    prep.model.train()
    gen = torch.Generator().manual_seed(cfg.seed)
    lrs, losses, smooth, best = [], [], 0.0, math.inf
    order = torch.randperm(len(train), generator=gen)
    flips = torch.randint(0, 2, (len(train),), generator=torch.Generator().manual_seed(cfg.seed))
    batch = min(cfg.batch_size, len(train))
    for step in range(steps):
        lr = start_lr * (end_lr / start_lr) ** (step / max(1, steps - 1))
        set_lr(prep.optimizer, lr)
        s = (step * batch) % max(1, len(order) - batch + 1)
        idx = order[s:s + batch]
        images = train.images  # in memory or memory-mapped; streamed ones (--stream) decode in worker processes
        x = next(iter(images.batches([idx]))) if hasattr(images, "batches") else images[idx]
        value, _ = trainer.train_step(x, train.labels[idx], gen, flips[idx])
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
    save_figure(fig, out)
    return LRFind(lrs, losses, suggestion, out)
