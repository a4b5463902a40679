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
import shutil
import time
import warnings
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
from ..data.split import SPLITS, Split, make_split, read_splits, splits_csv_text, write_splits
from ..errors import DataError, UserError
from ..modelfile import load_model, model_header, save_model
from ..models import create_model, get_spec
from .callbacks import BestModel, Checkpoint, EarlyStopping, MetricsCSV, ProgressDisplay, TensorBoard
from .checkpoint import load_checkpoint
from .loop import Trainer, evaluate_loss_acc
from .optim import make_optimizer


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


def new_run_dir(base: Path = Path("runs"), prefix: str = "train") -> Path:
    base.mkdir(parents=True, exist_ok=True)
    n = 1
    while (base / f"{prefix}-{n}").exists():
        n += 1
    return base / f"{prefix}-{n}"


def _prepare_out(cfg: TrainConfig) -> Path:
    out = Path(cfg.out).expanduser() if cfg.out else new_run_dir()
    if out.exists() and out.is_file():
        raise UserError(f"--out {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"run folder {out} is not empty; continue it with `imgclass train --resume {out}` "
                        f"or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _decode_all(split: Split, pre: Preprocessing, workers: int, console: Console,
                verbose: bool) -> dict[str, ImageTensors]:
    total = sum(len(v) for v in split.items.values())
    tensors = {}
    progress = Progress(TextColumn("decoding {task.fields[split]}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=console, transient=True,
                        disable=not (verbose and console.is_terminal))
    with progress:
        task = progress.add_task("decode", total=total, split="")
        done = 0
        for name in SPLITS:
            progress.update(task, split=name)
            tensors[name] = load_split(split.root, split.items[name], pre, workers,
                                       on_progress=lambda n, d=done: progress.update(task, completed=d + n))
            done += len(split.items[name])
    return tensors


def _write_bad_files(run_dir: Path, data: dict[str, ImageTensors]) -> list[tuple[str, str, str]]:
    bad = [(path, split, reason) for split, t in data.items() for path, reason in t.bad]
    if bad:
        with (run_dir / "bad_files.csv").open("w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["path", "split", "reason"])
            writer.writerows(bad)
    return bad


def train(data: str | Path | None = None, *, config: str | Path | None = None, resume: str | Path | None = None,
          console: Console | None = None, **options: Any) -> Run:
    """Train a classifier on a folder of images. Options are TrainConfig fields (see `imgclass train --help`)."""
    console = console or Console(stderr=True)
    if resume is not None:
        run_dir = Path(resume).expanduser()
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"cannot resume: {run_dir} has no config.yaml (is it a run folder?)")
        if options or config or data:
            raise UserError("--resume continues a run with its saved config.yaml; do not pass other options")
        cfg = config_mod.resolve(run_dir / "config.yaml")
    else:
        if data is not None:
            options["data"] = str(data)
        cfg = config_mod.resolve(config, **options)
        if cfg.data is None:
            raise UserError("no data folder given: imgclass train DATA")
        run_dir = None

    found = find_images(cfg.data, cfg.labels, cfg.id_column, cfg.label_column)
    for note in found.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    spec = get_spec(cfg.model)  # validates the name before any slow work
    if resume is None:
        split, split_warnings = make_split(found, cfg.val_split, cfg.test_split, cfg.seed)
        for w in split_warnings:
            console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
        run_dir = _prepare_out(cfg)
        cfg.out = str(run_dir)
        config_mod.save(cfg, run_dir / "config.yaml")
        write_splits(split, run_dir / "splits.csv")
    else:
        split = read_splits(run_dir / "splits.csv", found.root, found.classes)
    classes = split.classes
    device = pick_device(cfg.device)
    verbose = cfg.verbose

    # Decode every split once at the training resolution.
    img_size = cfg.img_size or spec.default_img_size
    pre = Preprocessing(img_size=img_size, resize=cfg.resize, max_pixels=cfg.max_image_pixels)
    started = time.perf_counter()
    data = _decode_all(split, pre, cfg.workers, console, verbose)
    bad = _write_bad_files(run_dir, data)
    if bad:
        console.print(f"[yellow]warning:[/] {len(bad)} file(s) could not be decoded and are skipped; "
                      f"see {run_dir / 'bad_files.csv'}", highlight=False, soft_wrap=True)
    counts = [int((data["train"].labels == i).sum()) for i in range(len(classes))]
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise DataError(f"class(es) {', '.join(empty)} have no usable training image")
    pre.mean, pre.std = channel_stats(data["train"].images)
    decode_seconds = time.perf_counter() - started

    # Model and optimizer. Seeded so the same config gives the same initial weights.
    torch.manual_seed(cfg.seed)
    args = dict(cfg.model_args)
    if "img_size" in inspect.signature(spec.build).parameters:
        args.setdefault("img_size", img_size)
    model = create_model(cfg.model, num_classes=len(classes), dropout=cfg.dropout, **args).to(device)
    lr = cfg.lr if cfg.lr is not None else spec.default_lr[cfg.optimizer]
    wd = cfg.weight_decay if cfg.weight_decay is not None else (0.05 if cfg.optimizer == "adamw" else 5e-4)
    optimizer = make_optimizer(model, cfg.optimizer, lr, wd, cfg.momentum)
    arch = {"name": cfg.model, "args": args, "dropout": cfg.dropout}

    def header(metrics: dict | None = None) -> dict:
        return model_header(arch, classes, pre, metrics)

    ckpt_dir = run_dir / "checkpoints"
    callbacks = [BestModel(ckpt_dir / "best.safetensors", header), Checkpoint(ckpt_dir / "last.safetensors", header),
                 MetricsCSV(run_dir / "metrics.csv")]
    if cfg.patience:
        callbacks.append(EarlyStopping(cfg.patience))
    if cfg.tensorboard:
        callbacks.append(TensorBoard(run_dir / "tensorboard"))
    if verbose:
        callbacks.append(ProgressDisplay(console))
    class_weights = None
    if cfg.class_weights == "auto":
        from sklearn.utils.class_weight import compute_class_weight
        labels = data["train"].labels.numpy()
        class_weights = torch.tensor(compute_class_weight("balanced", classes=np.arange(len(classes)), y=labels),
                                     dtype=torch.float32, device=device)
    trainer = Trainer(model=model, optimizer=optimizer, train_data=data["train"], val_data=data["val"], pre=pre,
                      augment=BatchAugment(cfg.augment, cfg.hflip), epochs=cfg.epochs, batch_size=cfg.batch_size,
                      peak_lr=lr, warmup_epochs=cfg.warmup_epochs, label_smoothing=cfg.label_smoothing,
                      seed=cfg.seed, device=device, callbacks=callbacks, class_weights=class_weights,
                      balanced_sampler=cfg.balanced_sampler)
    last = ckpt_dir / "last.safetensors"
    if resume is not None and last.is_file():
        trainer.restore(load_checkpoint(last, model, optimizer))
        console.print(f"resuming {run_dir} after epoch {trainer.epoch}/{cfg.epochs}", highlight=False, soft_wrap=True)
    if verbose:
        console.print(f"training {cfg.model} on {len(data['train'])} images ({len(classes)} classes, "
                      f"{img_size}px, {found.layout}); val {len(data['val'])}, test {len(data['test'])}; "
                      f"device {device}; run folder {run_dir}", highlight=False, soft_wrap=True)
    if trainer.epoch < cfg.epochs and not trainer.stop:
        trainer.fit()
    train_seconds = sum(r["seconds"] for r in trainer.history)

    # Score the best weights on every split (without augmentation).
    best, _ = load_model(ckpt_dir / "best.safetensors", device)
    metrics: dict[str, Any] = {}
    for name in SPLITS:
        if len(data[name]):
            loss, acc = evaluate_loss_acc(best, data[name], pre, max(cfg.batch_size, 256), device)
            metrics[name] = {"accuracy": acc, "loss": loss, "n": len(data[name])}
    facts = {"best_epoch": trainer.best_epoch, "epochs_run": trainer.epoch, "stop_reason": trainer.stop_reason,
             "train_seconds": round(train_seconds, 2), "decode_seconds": round(decode_seconds, 2),
             "bad_files": len(bad), "device": str(device)}
    save_model(run_dir / "model.safetensors", best, header({**metrics, **facts}))
    (run_dir / "results.json").write_text(json.dumps({"metrics": metrics, **facts}, indent=2) + "\n")
    run = Run(dir=run_dir, config=cfg, classes=classes, history=trainer.history, metrics=metrics)
    if cfg.evaluate:
        from ..evaluation.evaluate import evaluate
        for name in ("val", "test"):
            if len(data[name]):
                run.evaluations[name] = evaluate(run_dir, split=name, console=console)
    return run


def summary_lines(run: Run) -> list[str]:
    parts = [f"{name} accuracy {m['accuracy']:.4f} (n={m['n']})" for name, m in run.metrics.items()]
    lines = ["; ".join(parts), f"model: {run.model_path}"]
    if "test" in run.evaluations:
        lines.append(f"report: {run.evaluations['test'].dir / 'report.html'}")
    return lines
