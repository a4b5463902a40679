"""`imgclass train`: resolve the config, find and split the data, decode it once,
build the model, run the loop, then score the best weights on every split.

Run folder (RUN/):
  config.yaml      resolved configuration (defaults < --config file < options)
  splits.csv       path,label,split for every image (byte-identical for the same data and seed)
  bad_files.csv    files that could not be decoded, with the reason (only when there are some)
  metrics.csv      one row per epoch; tensorboard/ holds the same as event files
  checkpoints/     last.safetensors (everything --resume needs), best.safetensors (best val accuracy)
  model.safetensors  the self-describing model file (best weights, classes, preprocessing, metrics)
  results.json     final accuracy per split and run facts
"""
from __future__ import annotations

import csv
import inspect
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .. import config as config_mod
from ..config import TrainConfig
from ..data.augment import BatchAugment
from ..data.find import find_images
from ..data.images import ImageTensors, channel_stats, load_split
from ..data.preprocess import Preprocessing
from ..data.split import SPLITS, Split, make_split, read_splits, write_splits
from ..errors import DataError, UserError
from ..modelfile import load_model, model_header, read_header, save_model
from ..models import get_spec
from ..models.hierarchy import build as build_model
from ..models.pretrained import find_origin, pretrained_state
from .callbacks import BestModel, Checkpoint, EarlyStopping, Lookahead, MetricsCSV, ProgressDisplay, TensorBoard
from . import distributed
from .checkpoint import load_checkpoint
from .loop import Trainer, predict_logits
from .optim import make_optimizer
from .auto import resolve_new_run
from .transfer import (GradualUnfreeze, apply_weights_file, backbone_preprocessing, classifiers, compute_features,
                       layerwise_optimizer, load_pretrained, model_groups, set_backbones_trainable, train_head)


@dataclass
class Run:
    """What `train` returns: where the run is and how it went."""
    dir: Path
    config: TrainConfig
    classes: list[str]
    history: list[dict[str, Any]]
    metrics: dict[str, Any] = field(default_factory=dict)  # {"train": {"accuracy", "loss", "n"}, "val": ..., "test": ...}
    evaluations: dict[str, Any] = field(default_factory=dict)  # split -> Evaluation (metrics, report, figures)

    @property
    def model_path(self) -> Path:
        return self.dir / "model.safetensors"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but CUDA is not available here")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)") from None


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether training runs under bf16 autocast. auto: on CUDA, and on CPUs that compute bf16 natively
    (AVX512-BF16 or AMX): on machine A (AMD EPYC with avx512_bf16) the fast model trains 1.73x (width 32)
    and 1.85x (width 64) faster than in float32 (batch 512, channels-last). CPUs without it would emulate
    bf16, so auto keeps float32 there."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text() if device.type == "cpu" else ""
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def new_run_dir(base: Path = Path("runs"), prefix: str = "train") -> Path:
    """Claim the next free base/prefix-N: mkdir without exist_ok is atomic, so two runs started
    together never share a folder."""
    base.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        try:
            (base / f"{prefix}-{n}").mkdir()
            return base / f"{prefix}-{n}"
        except FileExistsError:
            n += 1


def _prepare_out(cfg: TrainConfig) -> Path:
    out = Path(cfg.out).expanduser() if cfg.out else new_run_dir()
    if out.exists() and out.is_file():
        raise UserError(f"--out {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"run folder {out} is not empty; continue it with `imgclass train --resume {out}` "
                        f"or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


TRAIN_SCORE_SAMPLE = 5000  # train accuracy is measured on at most this many images


def train_score_n(n_train: int, n_val: int) -> int:
    """How many training images the final scoring sees: it only shows over- or under-fitting, so about
    as many as validation has (at least 1,000, at most TRAIN_SCORE_SAMPLE); all of them when fewer."""
    return min(n_train, TRAIN_SCORE_SAMPLE, max(1000, n_val))


def _decode_all(split: Split, pre: Preprocessing, cfg: TrainConfig, console: Console,
                verbose: bool) -> tuple[dict[str, ImageTensors], int]:
    from ..data.cache import cache_bytes, fits_on_disk, is_cached, load_cached
    from ..data.stream import stream_split
    total = sum(len(v) for v in split.items.values())
    tensors, hits = {}, 0
    stream = cfg.stream
    missing = 0 if stream or not cfg.cache else sum(
        len(rows) for rows in split.items.values() if rows and not is_cached(split.root, rows, pre, cfg.cache_dir))
    if missing and not fits_on_disk(cfg.cache_dir, missing, pre.img_size):
        stream = True
        console.print(f"[yellow]note:[/] the decoded cache ({cache_bytes(missing, pre.img_size) / 2**30:.1f} GiB at "
                      f"{pre.img_size}px) would not fit on the disk of the cache folder; decoding every epoch in "
                      f"worker processes instead (--cache-dir elsewhere, or a smaller --img-size, avoids it)",
                      highlight=False, soft_wrap=True)
    progress = Progress(TextColumn("decoding {task.fields[split]}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=console, transient=True,
                        disable=not (verbose and console.is_terminal))
    with progress:
        task = progress.add_task("decode", total=total, split="")
        done = 0
        for name in SPLITS:
            progress.update(task, split=name)
            report = (lambda n, d=done: progress.update(task, completed=d + n))
            if stream:
                tensors[name] = stream_split(split.root, split.items[name], pre, cfg.workers, report)
            elif cfg.cache and split.items[name]:
                tensors[name], hit = load_cached(split.root, split.items[name], pre, cfg.cache_dir, cfg.workers, report)
                hits += hit
            else:
                tensors[name] = load_split(split.root, split.items[name], pre, cfg.workers, on_progress=report)
            done += len(split.items[name])
    return tensors, hits


def _write_bad_files(run_dir: Path, data: dict[str, ImageTensors]) -> list[tuple[str, str, str]]:
    bad = [(path, split, reason) for split, t in data.items() for path, reason in t.bad]
    if bad:
        with (run_dir / "bad_files.csv").open("w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["path", "split", "reason"])
            writer.writerows(bad)
    return bad


# The head stage's learning rate is at least this (the fine-tuning rate, 10x lower, barely moves a fresh head).
# On frozen lite0 features of fashion_hier (25 classes, `python bench/transfer_stages.py RUN`, 2026-11-23): 30
# epochs at 3e-3 gave 95.7% val and 96.3% test, at 1e-3 95.0% val (same test); 10 epochs at 1e-3 (the old
# default) 94.1% val, 94.7% test.
HEAD_MIN_LR = 3e-3


def _train_head_stage(model, data, pre, cfg, lr, wd, device, console, run_dir) -> tuple[float, float]:
    """Stage 1 of fine-tuning: backbone frozen, its features computed once, the head trained on them."""
    started = time.perf_counter()
    set_backbones_trainable(model, False)
    batch = max(cfg.batch_size, 256)
    bf16 = use_bf16(cfg.precision, device)
    feats = compute_features(model, data["train"].images, pre, batch, device, bf16)
    val = data["val"]
    val_feats = compute_features(model, val.images, pre, batch, device, bf16) if len(val) else None
    console.print(f"stage 1: backbone features of {len(feats) + (len(val) if len(val) else 0)} images computed once "
                  f"in {time.perf_counter() - started:.1f}s; training the head for {cfg.head_epochs} epoch(s)",
                  highlight=False, soft_wrap=True)

    def log(row):
        if cfg.verbose:
            console.print(f"{row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
                          f"val acc {row['val_acc']:.4f}  {row['seconds']:.2f}s", highlight=False)

    rows = train_head(model, feats, data["train"].labels, val_feats, val.labels if len(val) else None,
                      cfg.head_epochs, max(lr, HEAD_MIN_LR), wd, cfg.label_smoothing, cfg.batch_size, cfg.seed, device,
                      log)
    with (run_dir / "head_metrics.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    set_backbones_trainable(model, True)
    return time.perf_counter() - started, rows[-1]["val_acc"]


def _init_from_data(model, train: ImageTensors, pre: Preprocessing, seed: int) -> None:
    """Data-dependent initialisation, e.g. the fast model's whitening layer, from up to 5,000 images."""
    if hasattr(model, "init_from_data"):
        sample = train.images[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:5000]]
        model.init_from_data(pre.normalize(sample))


WIDER = (2.0, 1.5)  # widths tried under --time-budget, as multiples of the model's default width (fast: 64, 48)


def _wider_model(spec, cfg: TrainConfig, args: dict, classes, hierarchy, epochs: int, img_size: int, phases: int):
    """(width, model) for the widest network that the FLOP count says still fits the recipe's epochs in the
    budget, or None. Only for a model with a recipe and a `width` argument the user left alone.

    Evidence: airbench94's full width (64) reaches 94% on CIFAR-10 in ~10 epochs, where the half width
    imgclass uses by default trains 3.7x faster on this 2-core CPU (660 vs 177 images/s); FLOPs predict
    3.6x (torch's FlopCounterMode), so the count screens candidates and a measured step decides."""
    width_param = inspect.signature(spec.build).parameters.get("width")
    target = spec.recipe.get("epochs")
    if width_param is None or not target or "width" in cfg.model_args or phases > 1 or cfg.pretrained \
            or cfg.weights is not None or epochs < target:
        return None
    from torch.utils.flop_counter import FlopCounterMode

    def build(width: int):
        return build_model({"name": cfg.model, "args": {**args, "width": width}, "dropout": cfg.dropout},
                           classes, hierarchy)

    def flops(model) -> int:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.eval()(torch.zeros(1, 3, img_size, img_size))
        return counter.get_total_flops()

    base = flops(build(width_param.default))
    for factor in WIDER:
        width = int(width_param.default * factor)
        torch.manual_seed(cfg.seed)  # the same initial weights as a run given this width explicitly
        model = build(width)
        if epochs * base / flops(model) >= target:
            return width, model.train()
    return None


# Under gradual unfreezing the early epochs train only the top of the backbone: measured on
# hymenoptera (EfficientNet-Lite2, 6 epochs) the epochs took 0.75x the time planned from a full step.
GRADUAL_STEP_SHARE = 0.75


def _plan_budget(model, data: ImageTensors, val_n: int, eval_n: int, pre: Preprocessing, cfg: TrainConfig,
                 device: torch.device, seconds_left: float, step_share: float = 1.0,
                 reports: int = 2) -> tuple[int, float, float]:
    """Epochs that fit in the time left, from a measured step time on a copy of the model (step_share:
    the share of a full step an average epoch's step costs); returns (epochs, seconds reserved for the
    final evaluation, estimated seconds an epoch)."""
    import copy
    from .loop import scoring_batch
    from .optim import make_optimizer as make_opt
    probe = copy.deepcopy(model).train()
    opt = make_opt(probe, cfg.optimizer, 1e-6, 0.0, cfg.momentum)
    # per-image training time is flat in the batch size for large inputs (EfficientNet-Lite0 at 224 px:
    # 18-19 images/s from 8 to 64): a small probe batch measures the same in a fraction of the time
    batch = min(cfg.batch_size, len(data), scoring_batch(cfg.batch_size, pre.img_size, device))
    x = pre.normalize(data.images[:batch].to(device)).contiguous(memory_format=torch.channels_last)
    y = data.labels[:batch].to(device)
    times = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(cfg.precision, device))
    for i in range(4):
        started = time.perf_counter()
        with autocast:
            loss = torch.nn.functional.cross_entropy(probe(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step pays one-off costs
            times.append(time.perf_counter() - started)
    per_image = step_share * min(times) / batch
    # Scoring passes, timed as they run: float32, eval mode, no autograd (per-epoch validation without TTA,
    # the final scoring with it). Estimating them as a share of the training step undercounted them under bf16.
    probe.eval()
    times = []
    with torch.no_grad():
        for i in range(3):
            started = time.perf_counter()
            probe(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - started)
    eval_image = min(times) / batch
    passes = {"none": 1, "flip": 2, "flip_translate": 6}[cfg.tta]
    # Augmentation and batch assembly are left out on purpose: an optimistic epoch time plans a few too many
    # epochs, which the deadline trims while the schedule follows the clock. (With a 1.1 margin for them
    # the 60-minute CIFAR run planned 111 s an epoch, ran 97 s, and left 6 minutes unused.)
    epoch_seconds = per_image * len(data) + eval_image * val_n
    # final scoring with a 25% margin, then figures and a report per evaluated split (measured: 2.5-4 s
    # each for 2-10 classes on 2 cores)
    reserve = 1.25 * eval_image * eval_n * passes + reports * (3.0 + 0.1 * int(data.labels.max() + 1))
    # Rounded up: the deadline cuts the last epoch short and the schedule anneals against the clock, so
    # the run uses the whole budget (rounding down left up to an epoch unused: 1.5 of 15 minutes measured).
    epochs = math.ceil(max(0.0, seconds_left - reserve) / epoch_seconds)
    return max(1, epochs), reserve, epoch_seconds


def train(data: str | Path | None = None, *, config: str | Path | None = None, resume: str | Path | None = None,
          console: Console | None = None, callbacks: list | None = None, started: float | None = None,
          **options: Any) -> Run:
    """Train a classifier on a folder of images. Options are TrainConfig fields (see `imgclass train --help`);
    callbacks are extra loop callbacks (e.g. Optuna pruning); started: the perf_counter time the time
    budget counts from (the command line passes its own start, so Python's start-up counts too)."""
    extra_callbacks = list(callbacks or [])
    started_all = min(started, time.perf_counter()) if started is not None else time.perf_counter()
    console = console or Console(stderr=True)
    if resume is not None:
        run_dir = Path(resume).expanduser()
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"cannot resume: {run_dir} has no config.yaml (is it a run folder?)")
        if options or config or data:
            raise UserError("--resume continues a run with its saved config.yaml; do not pass other options")
        cfg = config_mod.resolve(run_dir / "config.yaml")
        resumed = _resumed_state(run_dir, cfg)
        found = find_images(cfg.data, cfg.labels, cfg.id_column, cfg.label_column, cfg.hierarchy, cfg.label_columns)
    else:
        if data is not None:
            options["data"] = str(data)
        explicit = config_mod.explicit_values(config, **options)
        if explicit.get("data") is None:
            raise UserError("no data folder given: imgclass train DATA")
        found = find_images(explicit["data"], explicit.get("labels"), explicit.get("id_column"),
                            explicit.get("label_column"), explicit.get("hierarchy", False),
                            explicit.get("label_columns"))
        cfg = resolve_new_run(found, explicit, options, config, started_all,
                              say=lambda m: console.print(m, highlight=False, soft_wrap=True))
        run_dir, resumed = None, None
    dd = distributed.setup(cfg.device)  # one process, or this rank of a torchrun launch
    if not dd.main:
        console = Console(stderr=True, quiet=True)  # only rank 0 talks
    for note in found.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    spec = get_spec(cfg.model)
    if dd.active and found.parents is not None:
        raise UserError("two-level labels are not supported with several processes yet")
    if resume is None:
        split, split_warnings = make_split(found, cfg.val_split, cfg.test_split, cfg.seed)
        if dd.main:  # only rank 0 writes the run folder; the others learn its path from it
            for w in split_warnings:
                console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
            run_dir = _prepare_out(cfg)
            cfg.out = str(run_dir)
            config_mod.save(cfg, run_dir / "config.yaml")
            write_splits(split, run_dir / "splits.csv")
        run_dir = Path(dd.broadcast(str(run_dir) if dd.main else None))
        cfg.out = str(run_dir)
        if cfg.devices > 1 and not dd.active:  # --devices N: torchrun N processes on the prepared folder
            if distributed.launch(run_dir, cfg.devices) != 0:
                raise UserError(f"distributed training failed; the run folder is {run_dir} (--resume continues it)")
            return load_run(run_dir)
    else:
        split = read_splits(run_dir / "splits.csv", found.root, found.classes)
    classes = split.classes
    device = pick_device(cfg.device)
    if dd.active and device.type == "cuda":
        device = torch.device("cuda", dd.local_rank)
    verbose = cfg.verbose and dd.main

    # Decode every split once at the training resolution (or map it from the cache).
    sizes = config_mod.img_sizes(cfg.img_size) or [spec.default_img_size]
    phases, end = [], 0  # progressive resizing: (size, last epoch of the phase)
    for size, n in zip(sizes, config_mod.phase_epochs(cfg.epochs, len(sizes))):
        end += n
        phases.append((size, end))
    if min(sizes) < spec.min_img_size:
        raise UserError(f"model '{cfg.model}' needs inputs of at least {spec.min_img_size} px, not {min(sizes)} "
                        f"(--img-size)")
    img_size = sizes[0]
    pre = Preprocessing(img_size=img_size, resize=cfg.resize, max_pixels=cfg.max_image_pixels)
    started = time.perf_counter()
    if not dd.main:
        dd.barrier()  # rank 0 decodes and fills the cache first; the others then map it
    data, cache_hits = _decode_all(split, pre, cfg, console, verbose)
    if dd.main:
        dd.barrier()
    bad = _write_bad_files(run_dir, data) if dd.main else []
    if bad:
        console.print(f"[yellow]warning:[/] {len(bad)} file(s) could not be decoded and are skipped; "
                      f"see {run_dir / 'bad_files.csv'}", highlight=False, soft_wrap=True)
    counts = [int((data["train"].labels == i).sum()) for i in range(len(classes))]
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise DataError(f"class(es) {', '.join(empty)} have no usable training image")
    pre.mean, pre.std = channel_stats(data["train"].images)
    transfer = cfg.pretrained or cfg.weights is not None
    if transfer and (bp := backbone_preprocessing(cfg.model)) is not None:
        pre.mean, pre.std = bp["mean"], bp["std"]  # the statistics the weights were trained with
    if resumed is not None:  # what the run normalised with (e.g. a --weights file's mean/std), exactly
        pre.mean, pre.std = resumed["mean"], resumed["std"]
    decode_seconds = time.perf_counter() - started

    # Model and optimizer. Seeded so the same config gives the same initial weights.
    torch.manual_seed(cfg.seed)
    args = dict(cfg.model_args)
    if cfg.head:
        try:
            args["head"] = [int(v) for v in str(cfg.head).split(",") if v.strip()]
        except ValueError:
            raise UserError(f"--head takes layer widths like 256,128, not '{cfg.head}'") from None
    if "img_size" in inspect.signature(spec.build).parameters:
        if len(phases) > 1:
            raise UserError(f"model '{cfg.model}' is built for one input size: no progressive resizing")
        args.setdefault("img_size", img_size)
    hierarchy = None
    if found.parents is not None:
        hierarchy = {"strategy": cfg.hierarchy_strategy, "coarse_classes": found.coarse_classes,
                     "parents": found.parents}
        console.print(f"two-level labels: {len(found.coarse_classes)} coarse, {len(classes)} fine classes; "
                      f"strategy {cfg.hierarchy_strategy}", highlight=False)
    model = build_model({"name": cfg.model, "args": args, "dropout": cfg.dropout}, classes, hierarchy)
    _init_from_data(model, data["train"], pre, cfg.seed)
    if transfer and not classifiers(model):
        raise UserError("--pretrained/--weights need a model with a backbone (a zoo model, or mlp/cnn/resnet)")
    last = run_dir / "checkpoints" / "last.safetensors"
    fresh = distributed.fresh_start(resume is not None, last)
    if not fresh and not last.is_file():  # never a silent restart under the old run's name
        raise UserError(f"cannot resume {run_dir}: it has no checkpoints/last.safetensors (it stopped before its "
                        f"first epoch ended); start it again: imgclass train --config {run_dir / 'config.yaml'} "
                        f"--out NEW_FOLDER")
    weights_origin = _load_starting_weights(model, cfg, fresh, hierarchy is not None, classes, pre, console)
    model = model.to(device).to(memory_format=torch.channels_last)
    lr = cfg.lr if cfg.lr is not None else spec.default_lr[cfg.optimizer] * (0.1 if transfer else 1.0)
    if resume is None and "batch_size" not in explicit and spec.recipe.get("batch_size"):
        # A recipe batch (fast: 1024, for CIFAR's 45,000 images) would leave a small folder a few steps an
        # epoch: keep at least ~8 steps, and scale a recipe lr linearly with the batch (the usual SGD rule).
        cap = max(16, 2 ** int(math.log2(max(1, len(data["train"]) // 8))))
        if cfg.batch_size > cap:
            if cfg.lr is None:
                lr *= cap / cfg.batch_size
                cfg.lr = lr
            console.print(f"batch size {cfg.batch_size} -> {cap} for {len(data['train'])} training images "
                          f"(lr {lr:.3g})", highlight=False)
            cfg.batch_size = cap
    wd = cfg.weight_decay if cfg.weight_decay is not None else (0.05 if cfg.optimizer == "adamw" else 5e-4)
    groups = model_groups(model) if transfer else []
    head_seconds, head_val_acc = 0.0, float("nan")
    if groups:
        if cfg.head_epochs > 0 and fresh:
            head_seconds, head_val_acc = _train_head_stage(model, data, pre, cfg, lr, wd, device, console, run_dir)
        optimizer = layerwise_optimizer(model, groups, cfg.optimizer, lr, wd, cfg.momentum, cfg.layer_lr_decay)
        if cfg.unfreeze == "none":
            set_backbones_trainable(model, False)
    else:
        optimizer = make_optimizer(model, cfg.optimizer, lr, wd, cfg.momentum)
    arch = {"name": cfg.model, "args": args, "dropout": cfg.dropout}

    current = {"pre": pre}  # the preprocessing of the phase being trained (progressive resizing changes it)

    def header(metrics: dict | None = None) -> dict:
        return model_header(arch, classes, current["pre"], metrics, tta=cfg.tta, hierarchy=hierarchy,
                            weights=weights_origin)

    epochs, deadline = cfg.epochs, None
    budget = config_mod.parse_duration(cfg.time_budget)
    if budget is not None and resume is None:
        eval_n = len(data["val"]) + len(data["test"]) + train_score_n(len(data["train"]), len(data["val"]))
        plan = (data["train"], len(data["val"]), eval_n, pre, cfg, device)
        share = GRADUAL_STEP_SHARE if groups and cfg.unfreeze == "gradual" else 1.0
        reports = sum(1 for s in ("val", "test") if len(data[s])) if cfg.evaluate else 0
        epochs, reserve, per_epoch = _plan_budget(model, *plan, budget - (time.perf_counter() - started_all),
                                                  share, reports)
        wider = _wider_model(spec, cfg, args, classes, hierarchy, epochs, img_size, len(phases))
        if wider is not None:  # room for the recipe's epochs at a wider network: measure it, keep it if it fits
            width, wide = wider
            _init_from_data(wide, data["train"], pre, cfg.seed)
            wide = wide.to(device).to(memory_format=torch.channels_last)
            wide_plan = _plan_budget(wide, *plan, budget - (time.perf_counter() - started_all))
            if wide_plan[0] >= spec.recipe["epochs"]:
                model, (epochs, reserve, per_epoch) = wide, wide_plan
                args["width"] = width
                cfg.model_args = {**cfg.model_args, "width": width}
                optimizer = make_optimizer(model, cfg.optimizer, lr, wd, cfg.momentum)
                console.print(f"time budget {cfg.time_budget}: room for a wider network (width {width})",
                              highlight=False)
        # 2% of the budget and 2 s more for what the estimate misses: Python starting before imgclass is
        # imported, and the report's variance (a 15-minute CIFAR run ended 6 s over its budget without the
        # 2%; a 5-minute fine-tuning run 0.6 s over without the 2 s)
        deadline = started_all + budget - reserve - 0.02 * budget - 2.0
        cfg.epochs = epochs
        console.print(f"time budget {cfg.time_budget}: {epochs} epoch(s) of ~{per_epoch:.0f}s planned from a measured "
                      f"step time; {reserve:.0f}s kept for the final scoring and report", highlight=False,
                      soft_wrap=True)
    class_weights = None
    if cfg.class_weights == "auto":
        from sklearn.utils.class_weight import compute_class_weight
        labels = data["train"].labels.numpy()
        class_weights = torch.tensor(compute_class_weight("balanced", classes=np.arange(len(classes)), y=labels),
                                     dtype=torch.float32, device=device)

    ckpt_dir = run_dir / "checkpoints"
    callbacks = extra_callbacks + [BestModel(ckpt_dir / "best.safetensors", header, write=dd.main)]
    if dd.main:
        callbacks += [Checkpoint(ckpt_dir / "last.safetensors", header), MetricsCSV(run_dir / "metrics.csv")]
    if cfg.lookahead:
        callbacks.append(Lookahead())
    if cfg.patience:
        callbacks.append(EarlyStopping(cfg.patience))
    if cfg.tensorboard and dd.main:
        callbacks.append(TensorBoard(run_dir / "tensorboard"))
    if verbose:
        callbacks.append(ProgressDisplay(console))
    if groups:  # which backbone groups learn each epoch, and which batch norms stay in inference mode
        callbacks.append(GradualUnfreeze(groups, cfg.unfreeze, cfg.bn_stats_frozen))
    trainer = Trainer(model=model, optimizer=optimizer, train_data=data["train"], val_data=data["val"], pre=pre,
                      augment=BatchAugment(cfg.augment, cfg.hflip, cfg.hflip_mode, cfg.translate), epochs=epochs,
                      batch_size=cfg.batch_size, peak_lr=lr, warmup_epochs=cfg.warmup_epochs,
                      label_smoothing=cfg.label_smoothing, seed=cfg.seed, device=device, callbacks=callbacks,
                      class_weights=class_weights, balanced_sampler=cfg.balanced_sampler, schedule=cfg.schedule,
                      deadline=deadline, dist=dd, train_forward=_train_forward(model, cfg, dd, device, bool(groups)),
                      bf16=use_bf16(cfg.precision, device),
                      plan={"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": lr, "model_args": cfg.model_args})
    if not math.isnan(head_val_acc) and fresh:
        # the head stage's model is "epoch 0": fine-tuning must beat it on validation to replace it, so the
        # model file is never worse on val than the head on frozen features (a linear probe, in effect)
        trainer.best_val_acc, trainer.best_epoch = head_val_acc, 0
        if dd.main:
            save_model(ckpt_dir / "best.safetensors", model, header())
    if not fresh:
        loop_state, trainer.extra_state = load_checkpoint(last, model, optimizer)
        trainer.restore(loop_state)
        console.print(f"resuming {run_dir} after epoch {trainer.epoch}/{cfg.epochs}", highlight=False)
    if verbose:
        cached = f"; {cache_hits} split(s) from the cache" if cache_hits else ""
        console.print(f"training {cfg.model} on {len(data['train'])} images ({len(classes)} classes, "
                      f"{img_size}px, {found.layout}); val {len(data['val'])}, test {len(data['test'])}; "
                      f"device {device}{' (bf16)' if trainer.bf16 else ''}{cached}; run folder {run_dir}",
                      highlight=False, soft_wrap=True)
    for i, (size, last_epoch) in enumerate(phases):
        if trainer.epoch >= last_epoch or trainer.stop:
            continue
        phase_start = phases[i - 1][1] if i else 0
        if size != trainer.pre.img_size:  # the next progressive-resizing phase: same files at a new size
            next_pre = Preprocessing(img_size=size, resize=cfg.resize, max_pixels=cfg.max_image_pixels,
                                     mean=pre.mean, std=pre.std)
            console.print(f"progressive resizing: epochs {trainer.epoch + 1}-{last_epoch} at {size}px", highlight=False)
            if not dd.main:
                dd.barrier()
            data, _ = _decode_all(split, next_pre, cfg, console, verbose)
            if dd.main:
                dd.barrier()
            trainer.pre, trainer.train_data, trainer.val_data = next_pre, data["train"], data["val"]
            pre = current["pre"] = next_pre
            if trainer.epoch == phase_start:  # not when resuming inside the phase: its best so far stands
                trainer.best_val_acc = -1.0  # the model file is chosen among epochs at the final size
        trainer.stop_at = last_epoch if i < len(phases) - 1 else None
        trainer.fit()
        trainer.stop_at = None
    train_seconds = sum(r["seconds"] for r in trainer.history)
    if not dd.main:  # rank 0 alone scores, evaluates and writes the model file; the others wait for it
        dd.barrier()  # leaving early made a rank abort in gloo's teardown while rank 0 still held the store
        distributed.teardown()
        return Run(dir=run_dir, config=cfg, classes=classes, history=trainer.history)

    # Score the best weights on every split, write the model file, evaluate val and test.
    best, _ = load_model(ckpt_dir / "best.safetensors", device)
    metrics, probs = _score_splits(best, data, pre, cfg, device)
    facts = {"best_epoch": trainer.best_epoch, "epochs_run": trainer.epoch, "stop_reason": trainer.stop_reason,
             "train_seconds": round(train_seconds, 2), "decode_seconds": round(decode_seconds, 2),
             "head_seconds": round(head_seconds, 2), "weights": weights_origin,
             "bad_files": len(bad), "device": str(device), "time_budget": cfg.time_budget, "processes": dd.world,
             "plan": trainer.plan}
    save_model(run_dir / "model.safetensors", best, header({**metrics, **facts}))
    (run_dir / "results.json").write_text(json.dumps({"metrics": metrics, **facts}, indent=2) + "\n")
    run = Run(dir=run_dir, config=cfg, classes=classes, history=trainer.history, metrics=metrics)
    if cfg.evaluate:
        from ..evaluation.evaluate import evaluate
        from ..prediction.predictor import Predictor
        # the model just scored, with the header just written: no second load from the file
        predictor = Predictor(best, read_header(run_dir / "model.safetensors"), device)
        for name in ("val", "test"):
            if len(data[name]):
                run.evaluations[name] = evaluate(run_dir, split=name, console=console, predictor=predictor,
                                                 precomputed=(data[name], probs[name].numpy()))
    facts["total_seconds"] = round(time.perf_counter() - started_all, 2)
    (run_dir / "results.json").write_text(json.dumps({"metrics": metrics, **facts}, indent=2) + "\n")
    dd.barrier()
    distributed.teardown()
    return run


def _score_splits(model, data: dict[str, ImageTensors], pre: Preprocessing, cfg: TrainConfig,
                  device: torch.device) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(accuracy, loss and n per split; probabilities per split) of the final model, without augmentation
    and with its TTA. The train split is scored on a sample: it only shows over- or under-fitting."""
    metrics: dict[str, Any] = {}
    probs: dict[str, torch.Tensor] = {}
    for name in SPLITS:
        part = data[name]
        if name == "train" and len(part) > (sample := train_score_n(len(part), len(data["val"]))):
            keep = torch.randperm(len(part), generator=torch.Generator().manual_seed(cfg.seed))[:sample]
            part = ImageTensors(images=part.images[keep], labels=part.labels[keep],
                                paths=[part.paths[i] for i in keep.tolist()])
        if len(part):
            logits = predict_logits(model, part.images, pre, max(cfg.batch_size, 256), device, cfg.tta)
            probs[name] = torch.softmax(logits, 1)
            metrics[name] = {"accuracy": float((logits.argmax(1) == part.labels).float().mean()),
                             "loss": float(torch.nn.functional.cross_entropy(logits, part.labels)), "n": len(part)}
    return metrics, probs


def _resumed_state(run_dir: Path, cfg: TrainConfig) -> dict | None:
    """What a run decided after its config.yaml was written, read back from its last checkpoint: the plan
    (epochs under a budget, a capped batch size and its lr, a budget's width) goes into cfg, and the
    normalisation it trained with is returned. None without a checkpoint (a prepared --devices folder)."""
    last = run_dir / "checkpoints" / "last.safetensors"
    if not last.is_file():
        return None
    header = read_header(last)
    plan = header.get("loop", {}).get("plan") or {}
    for key in ("epochs", "batch_size", "lr", "model_args"):
        if key in plan:
            setattr(cfg, key, plan[key])
    pre = header.get("preprocessing") or {}
    return {"mean": tuple(pre["mean"]), "std": tuple(pre["std"])} if "mean" in pre else None


def _load_starting_weights(model, cfg: TrainConfig, fresh: bool, two_level: bool, classes: list[str],
                           pre: Preprocessing, console: Console) -> dict | None:
    """--pretrained / --weights into the model on a fresh start (a resumed run has them in its checkpoint);
    returns where the starting weights came from, for the model file and the report."""
    weights_origin = None
    if cfg.pretrained:
        origin = find_origin(cfg.model)
        if fresh:
            state, origin = pretrained_state(cfg.model)
            n = load_pretrained(model, state, f"{cfg.model} published weights")
            console.print(f"loaded {n} pretrained backbone tensors for {cfg.model}"
                          + (f": {origin.describe()}" if origin is not None else ""), highlight=False, soft_wrap=True)
        weights_origin = origin.to_dict() if origin is not None else None
    if cfg.weights is not None:
        weights_origin = {"model": cfg.model, "source": "file", "location": str(cfg.weights),
                          "licence": "that of the file", "dataset": "that of the file"}
    if cfg.weights is not None and fresh:
        if two_level:
            raise UserError("--weights FILE with two-level labels is not supported yet; use --pretrained")
        message, file_pre = apply_weights_file(model, cfg.weights, classes)
        if file_pre:
            pre.mean, pre.std = tuple(file_pre["mean"]), tuple(file_pre["std"])
        console.print(message, highlight=False, soft_wrap=True)
    return weights_origin


def _train_forward(model, cfg: TrainConfig, dd, device: torch.device, partly_frozen: bool = False):
    """What the loop calls in training: DDP around the model under torchrun, else (optionally) compiled.
    partly_frozen: staged fine-tuning freezes backbone groups epoch by epoch, so DDP must expect
    parameters that receive no gradient in a step (find_unused_parameters)."""
    if dd.active:
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=partly_frozen)
    return torch.compile(model) if cfg.compile else None


def load_run(run_dir: Path) -> Run:
    """A finished run folder as a Run (used after a --devices launch)."""
    cfg = config_mod.resolve(run_dir / "config.yaml")
    results = json.loads((run_dir / "results.json").read_text())
    with (run_dir / "metrics.csv").open(newline="") as fh:
        history = list(csv.DictReader(fh))
    header = read_header(run_dir / "model.safetensors")
    return Run(dir=run_dir, config=cfg, classes=header["classes"], history=history, metrics=results["metrics"])


def summary_lines(run: Run) -> list[str]:
    parts = [f"{name} accuracy {m['accuracy']:.4f} (n={m['n']})" for name, m in run.metrics.items()]
    lines = ["; ".join(parts), f"model: {run.model_path}"]
    if "test" in run.evaluations:
        lines.append(f"report: {run.evaluations['test'].dir / 'report.html'}")
    return lines
