"""What train and lr-find start from, made the same way for both: `prepare` decodes the splits, fixes the
normalisation (one pure function of the plan and the training images), builds the model the plan describes
(seeded, initialised from the data, with its starting weights: --pretrained, --weights) and its optimizer;
`make_trainer` puts them in the Trainer, whose `train_step` both take their steps through.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..core import log
from .config import TrainConfig
from ..data import cache
from ..data.augment import BatchAugment, batch_mix, from_config as augment_from_config
from ..data.images import ImageTensors, channel_stats, load_split
from ..data.preprocess import Preprocessing
from ..data.split import SPLITS, Split
from ..data.stream import stream_split
from ..core.errors import DataError, UserError
from ..models.pretrained import find_origin, pretrained_state
from .loop.device import use_bf16
from .loop.fit import Callback, Trainer
from .loop.optim import make_optimizer
from .plan import RunPlan
from .stages import budget
from .stages.transfer import (apply_weights_file, backbone_preprocessing, classifiers, layerwise_optimizer, load_pretrained,
                       model_groups, weights_file_header)


@dataclass(frozen=True)
class Prepared:
    """The decoded splits, their preprocessing, the model and its optimizer: what training starts from."""
    data: dict[str, ImageTensors]          # train/val/test at the first phase's size
    pre: Preprocessing                     # that size, the resize policy, the normalisation
    model: nn.Module                       # on its device, channels-last, with its starting weights
    optimizer: torch.optim.Optimizer
    groups: list = field(default_factory=list)  # backbone groups for staged fine-tuning (empty: none)
    weights_origin: dict | None = None     # where the starting weights came from (None: from scratch)
    bad: list[tuple[str, str, str]] = field(default_factory=list)  # (path, split, reason) of undecodable files
    decode_seconds: float = 0.0
    cache_hits: int = 0                    # splits mapped from the decoded-image cache


def prepare(plan: RunPlan, device: torch.device, say: Callable[..., None], console: Console | None = None,
            fresh: bool = True, dist=None) -> Prepared:
    """Decode, normalise, build: the same for a new run, a resumed one (fresh=False: no starting weights, its
    checkpoint has them) and lr-find. dist: this process's rank under torchrun (rank 0 fills the cache first)."""
    cfg, started = plan.cfg, time.perf_counter()
    pre = Preprocessing(img_size=plan.phases[0][0], resize=cfg.resize, max_pixels=cfg.max_image_pixels)
    data, hits = decode_splits(plan.split, pre, cfg, say, console, dist)
    counts = plan.task.label_counts(data["train"].labels, len(plan.classes))
    empty = [c for c, n in zip(plan.classes, counts) if n == 0]
    if empty:
        raise DataError(f"class(es) {', '.join(empty)} have no usable training image")
    pre = pre.with_stats(*normalisation(plan, data["train"], fresh))
    decode_seconds = time.perf_counter() - started
    torch.manual_seed(cfg.seed)  # the same config gives the same initial weights
    model = plan.task.build(plan.arch, plan.classes)
    if (line := plan.task.describe(plan.classes)) is not None:
        say(line)
    init_from_data(model, data["train"], pre, cfg.seed)
    if plan.transfer and not classifiers(model):
        raise UserError("--pretrained/--weights need a model with a backbone (a zoo model, or mlp/cnn/resnet)")
    origin = load_starting_weights(model, cfg, fresh, plan.classes, say)
    model = model.to(device).to(memory_format=torch.channels_last)
    groups = model_groups(model) if plan.transfer else []
    bad = [(path, split, reason) for split, t in data.items() for path, reason in t.bad]
    return Prepared(data, pre, model, make_optimizer_for(plan, model, groups), groups, origin, bad, decode_seconds,
                    hits)


def normalisation(plan: RunPlan, train: ImageTensors, fresh: bool = True) -> tuple[tuple, tuple]:
    """(mean, std) the model standardises with: exactly what a resumed run trained with; else an imgclass
    model file's given with --weights; else the statistics the pretrained weights were trained with; else the
    training images' own."""
    if plan.normalisation is not None:
        return plan.normalisation
    if fresh and plan.cfg.weights is not None and (header := weights_file_header(plan.cfg.weights)) is not None:
        return header.preprocessing.mean, header.preprocessing.std
    if plan.transfer and (bp := backbone_preprocessing(plan.cfg.model)) is not None:
        return bp["mean"], bp["std"]
    return channel_stats(train.images)


def make_optimizer_for(plan: RunPlan, model: nn.Module, groups: list) -> torch.optim.Optimizer:
    """The plan's optimizer; with backbone groups, layer-wise learning rates (which groups learn in each
    epoch is the GradualUnfreeze callback's)."""
    cfg = plan.cfg
    if not groups:
        return make_optimizer(model, cfg.optimizer, plan.lr, plan.weight_decay, cfg.momentum)
    return layerwise_optimizer(model, groups, cfg.optimizer, plan.lr, plan.weight_decay, cfg.momentum,
                               cfg.layer_lr_decay)


def make_trainer(plan: RunPlan, prep: Prepared, device: torch.device, callbacks: list[Callback],
                 deadline: float | None = None, dist=None, train_forward: nn.Module | None = None,
                 cached_inputs: bool = False, scoring: tuple[float, float] | None = None) -> Trainer:
    """The loop over a prepared model with every training setting of the plan (augmentation, mixup/cutmix,
    class weights, label smoothing, schedule, bf16). cached_inputs: prep's train and val hold a frozen bottom's
    activations (the top stage), which train_forward scores; of the augmentation only the flips apply to them
    (BatchAugment.flip_only). scoring: the budget's reserve for the final scoring (Trainer.scoring)."""
    cfg = plan.cfg
    augment = augment_from_config(cfg)
    if cached_inputs:
        augment = BatchAugment("none" if cfg.augment == "none" else "light", cfg.hflip, cfg.hflip_mode)
    class_weights = None
    if cfg.class_weights == "auto":
        class_weights = plan.task.class_weights(prep.data["train"].labels, len(plan.classes)).to(device)
    return Trainer(model=prep.model, optimizer=prep.optimizer, train_data=prep.data["train"],
                   val_data=prep.data["val"], pre=prep.pre, augment=augment, cached_inputs=cached_inputs,
                   mix=batch_mix(cfg.mixup, cfg.cutmix, len(plan.classes), targets=plan.task.mix_targets),
                   epochs=cfg.epochs,
                   batch_size=cfg.batch_size, peak_lr=plan.lr, warmup_epochs=cfg.warmup_epochs,
                   label_smoothing=cfg.label_smoothing, seed=cfg.seed, device=device, callbacks=callbacks,
                   class_weights=class_weights, balanced_sampler=cfg.balanced_sampler, schedule=cfg.schedule,
                   deadline=deadline, scoring=scoring, dist=dist, train_forward=train_forward,
                   bf16=use_bf16(cfg.precision, device),
                   plan={**plan.record, **({"epochs_max": budget.TOP_MAX_EPOCHS} if cached_inputs else {})},
                   task=plan.task, run_dir=Path(cfg.out) if cfg.out else None)


def init_from_data(model, train: ImageTensors, pre: Preprocessing, seed: int) -> None:
    """Data-dependent initialisation, e.g. the fast model's whitening layer, from up to 5,000 images."""
    if hasattr(model, "init_from_data"):
        sample = train.images[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:5000]]
        model.init_from_data(pre.normalize(sample))


def load_starting_weights(model, cfg: TrainConfig, fresh: bool, classes: list[str],
                          say: Callable[[str], None]) -> dict | None:
    """--pretrained / --weights into the model on a fresh start (a resumed run has them in its checkpoint);
    returns where the starting weights came from, for the model file and the report. (An imgclass model file's
    normalisation comes with it: see normalisation.)"""
    weights_origin = None
    if cfg.pretrained:
        origin = find_origin(cfg.model)
        if fresh:
            state, origin = pretrained_state(cfg.model)
            n = load_pretrained(model, state, f"{cfg.model} published weights")
            say(f"loaded {n} pretrained backbone tensors for {cfg.model}"
                + (f": {origin.describe()}" if origin is not None else ""))
        weights_origin = origin.to_dict() if origin is not None else None
    if cfg.weights is not None:
        weights_origin = {"model": cfg.model, "source": "file", "location": str(cfg.weights),
                          "licence": "that of the file", "dataset": "that of the file"}
    if cfg.weights is not None and fresh:  # (a task that cannot take them refused them in the plan)
        message, _ = apply_weights_file(model, cfg.weights, classes)
        say(message)
    return weights_origin


def decode_splits(split: Split, pre: Preprocessing, cfg: TrainConfig, say: Callable[..., None],
                  console: Console | None = None, dist=None) -> tuple[dict[str, ImageTensors], int]:
    """Every split at pre's size: mapped from the decoded-image cache (filled on a miss), streamed by worker
    processes when the cache would not fit on its disk (or --stream), or decoded in memory (--no-cache).
    Returns (the splits, how many came from the cache). Under torchrun rank 0 decodes and fills the cache
    first; the other ranks then map it."""
    main = dist is None or dist.main
    if not main:
        dist.barrier()
    data, hits = _decode_all(split, pre, cfg, console or log.console(), cfg.verbose and main, say)
    if dist is not None and main:
        dist.barrier()
    return data, hits


def _decode_all(split: Split, pre: Preprocessing, cfg: TrainConfig, console: Console,
                verbose: bool, say: Callable[..., None]) -> tuple[dict[str, ImageTensors], int]:
    total = sum(len(v) for v in split.items.values())
    tensors, hits = {}, 0
    stream = cfg.stream
    missing = 0 if stream or not cfg.cache else sum(
        len(rows) for rows in split.items.values() if rows and not cache.is_cached(split.root, rows, pre, cfg.cache_dir))
    if missing and not cache.fits_on_disk(cfg.cache_dir, missing, pre.img_size):
        stream = True
        say(f"the decoded cache ({cache.cache_bytes(missing, pre.img_size) / 2**30:.1f} GiB at {pre.img_size}px) "
            f"would not fit on the disk of the cache folder; decoding every epoch in worker processes instead "
            f"(--cache-dir elsewhere, or a smaller --img-size, avoids it)", warning=True)
    progress = Progress(TextColumn("decoding {task.fields[split]}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=console, transient=True,
                        disable=not (verbose and log.bars_visible(console)))
    with progress:
        task = progress.add_task("decode", total=total, split="")
        done = 0
        for name in SPLITS:
            progress.update(task, split=name)
            report = (lambda n, d=done: progress.update(task, completed=d + n))
            if cfg.cache and split.items[name] and not stream:
                try:
                    tensors[name], hit = cache.load_cached(split.root, split.items[name], pre, cfg.cache_dir,
                                                           cfg.workers, report)
                    hits += hit
                except cache.CacheNoRoom as exc:  # the disk filled since the check: no SIGBUS, a slower run
                    say(f"{exc}; decoding every epoch in worker processes instead", warning=True)
                    stream = True
            if stream:
                tensors[name] = stream_split(split.root, split.items[name], pre, cfg.workers, report)
            elif name not in tensors:
                tensors[name] = load_split(split.root, split.items[name], pre, cfg.workers, on_progress=report)
            done += len(split.items[name])
    return tensors, hits


def run_facts(prep: Prepared) -> dict[str, Any]:
    """What the preparation cost and found, for results.json."""
    return {"decode_seconds": round(prep.decode_seconds, 2), "bad_files": len(prep.bad)}
