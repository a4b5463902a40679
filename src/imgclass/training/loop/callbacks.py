"""Callbacks hooked on the loop's events: best-model tracking, early stopping,
checkpoints, metrics.csv, TensorBoard and the progress display.

Order matters: the best model and the stop decision are settled before the "last"
checkpoint is written, and logs are written after it, so a kill between any two
leaves files that --resume reconciles (metrics.csv is rewritten from the history).
"""
from __future__ import annotations

import csv
import io
import math
import sys
import types
import time
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ...core import log
from .checkpoint import save_checkpoint
from .fit import Callback, Trainer
from ...core.files import write_text_atomic
from ...models.modelfile import save_model
from ...models.header import ModelHeader

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]


class BestModel(Callback):
    """Keeps checkpoints/best.safetensors (a loadable model file) at the best validation accuracy."""
    order = 0

    def __init__(self, path: Path, header: Callable[[Trainer], ModelHeader], write: bool = True):
        self.path, self.header, self.write = path, header, write  # write=False: track only (DDP ranks > 0)

    def after_epoch(self, t: Trainer) -> None:
        row = t.history[-1]
        score = row["val_acc"] if not math.isnan(row["val_acc"]) else row["train_acc"]
        no_val = math.isnan(row["val_acc"])
        if no_val or score > t.best_val_acc:
            t.best_val_acc, t.best_epoch = score, row["epoch"]
            if self.write:
                save_model(self.path, t.model, self.header(t))


class ReduceOnPlateau(Callback):
    """--schedule plateau: cut the rate by `factor` once validation loss has not improved (by 1e-4 relative)
    for `patience` epochs in a row, then count again (Keras's ReduceLROnPlateau). Written here rather than
    torch's scheduler because the rate is replayed from the saved history: a resumed run gets the same rate
    with nothing extra in its checkpoint."""
    order = 3

    def __init__(self, patience: int, factor: float):
        self.patience, self.factor = patience, factor

    def replay(self, history: list[dict[str, Any]]) -> float:
        best, wait, lr_factor = math.inf, 0, 1.0
        for row in history:
            loss = row.get("val_loss", math.nan)
            if math.isnan(loss):
                continue
            if loss < best * (1 - 1e-4):
                best, wait = loss, 0
            else:
                wait += 1
                if wait >= self.patience:
                    lr_factor, wait = lr_factor * self.factor, 0
        return lr_factor

    def before_fit(self, t: Trainer) -> None:
        t.lr_factor = self.replay(t.history)

    def after_epoch(self, t: Trainer) -> None:
        t.lr_factor = self.replay(t.history)


class EarlyStopping(Callback):
    order = 1

    def __init__(self, patience: int):
        self.patience = patience

    def after_epoch(self, t: Trainer) -> None:
        if t.epoch - t.best_epoch >= self.patience and t.epoch < t.epochs:
            t.stop = True
            t.stop_reason = (f"early stopping: no validation-accuracy gain for {self.patience} epochs "
                             f"(best {t.best_val_acc:.4f} at epoch {t.best_epoch})")


class Checkpoint(Callback):
    """checkpoints/last.safetensors after every epoch: everything --resume needs."""
    order = 2

    def __init__(self, path: Path, header: Callable[[Trainer], ModelHeader]):
        self.path, self.header = path, header  # header(t): the model file's header at the trainer's preprocessing

    def after_epoch(self, t: Trainer) -> None:
        save_checkpoint(self.path, t.model, t.optimizer, t.loop_state(), self.header(t), t.extra_state)


class Lookahead(Callback):
    """airbench's lookahead: every `every` steps the running average of the weights (batch-norm
    statistics included) moves towards the live weights by 1 - decay, and the live weights are reset
    to it; decay = 0.95**5 * progress**3, so the average barely moves early on and drags hard at the
    end, and the last epoch ends on the average itself. airbench94 measured it as part of its 94%.

    Written here rather than with torch.optim.swa_utils.AveragedModel: that keeps a separate averaged
    copy, while lookahead writes the average back into the live weights every few steps. The average is
    kept in the loop's extra_state, so --resume continues it exactly.
    """
    order = -1  # before BestModel and Checkpoint see the epoch

    def __init__(self, every: int = 5):
        self.every = every

    def before_fit(self, t: Trainer) -> None:
        live = t.model.state_dict()
        for key, value in live.items():
            if value.is_floating_point() and f"lookahead.{key}" not in t.extra_state:
                t.extra_state[f"lookahead.{key}"] = value.detach().clone()

    @torch.no_grad()
    def pull(self, t: Trainer, decay: float) -> None:
        for key, value in t.model.state_dict().items():
            average = t.extra_state.get(f"lookahead.{key}")
            if average is not None:
                average.lerp_(value, 1.0 - decay)
                value.copy_(average)

    def after_step(self, t: Trainer) -> None:
        if t.step % self.every == 0:
            self.pull(t, 0.95 ** 5 * t.done ** 3)

    def before_validate(self, t: Trainer) -> None:
        if t.last_epoch:
            self.pull(t, 1.0)


class EMA(Callback):
    """--ema DECAY: an exponential moving average of the weights (batch-norm statistics included), updated
    after every step with decay min(DECAY, (1 + step) / (10 + step)) (TensorFlow's ExponentialMovingAverage
    with num_updates: early averages do not drag in the random initial weights). Validation, the best model
    and the checkpoints use the average; training continues on the live weights.

    Written here rather than with torch.optim.swa_utils.AveragedModel for the same reason as Lookahead: the
    average (and, while it is swapped in, the live weights) live in the loop's extra_state, so --resume
    continues exactly."""
    order = -1  # swapped in before BestModel and Checkpoint see the epoch

    def __init__(self, decay: float):
        self.decay = decay

    def before_fit(self, t: Trainer) -> None:
        for key, value in t.model.state_dict().items():
            if value.is_floating_point() and f"ema.{key}" not in t.extra_state:
                t.extra_state[f"ema.{key}"] = value.detach().clone()
        self._swap_back(t)  # a checkpoint holds the average; training resumes from the live weights

    @torch.no_grad()
    def after_step(self, t: Trainer) -> None:
        decay = min(self.decay, (1 + t.step) / (10 + t.step))
        for key, value in t.model.state_dict().items():
            average = t.extra_state.get(f"ema.{key}")
            if average is not None:
                average.lerp_(value, 1.0 - decay)

    @torch.no_grad()
    def before_validate(self, t: Trainer) -> None:
        for key, value in t.model.state_dict().items():
            if f"ema.{key}" in t.extra_state:
                t.extra_state[f"ema_live.{key}"] = value.detach().clone()
                value.copy_(t.extra_state[f"ema.{key}"])

    def before_epoch(self, t: Trainer) -> None:
        self._swap_back(t)

    @torch.no_grad()
    def _swap_back(self, t: Trainer) -> None:
        for key, value in t.model.state_dict().items():
            live = t.extra_state.pop(f"ema_live.{key}", None)
            if live is not None:
                value.copy_(live)


class MetricsCSV(Callback):
    order = 3

    def __init__(self, path: Path):
        self.path = path

    def write(self, t: Trainer) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in t.history:
            writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in METRIC_COLUMNS})
        write_text_atomic(self.path, buf.getvalue())

    before_fit = after_epoch = write


class TensorBoard(Callback):
    order = 4

    def __init__(self, log_dir: Path):
        self.log_dir, self.writer = log_dir, None

    def before_fit(self, t: Trainer) -> None:
        # TensorBoard's event writer imports TensorFlow whenever it is installed (the tflite extra brings it):
        # seconds and a gigabyte per training process, and a process that loads TensorFlow before PyTorch's
        # Triton crashes. The module tensorboard.compat.notf is TensorBoard's own switch to its TensorFlow-free
        # writer (its no_tensorflow build), the one used when TensorFlow is absent.
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def after_epoch(self, t: Trainer) -> None:
        row = t.history[-1]
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"):
            if not math.isnan(row[key]):
                self.writer.add_scalar(key.replace("_", "/", 1) if "_" in key else key, row[key], row["epoch"])
        self.writer.flush()

    def after_fit(self, t: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()


class ProgressDisplay(Callback):
    """A progress bar per epoch (loss, accuracy so far, time left) on the console, and one message per
    finished epoch (through say: the "imgclass" logger by default)."""
    order = 5

    def __init__(self, console: Console | None = None, say: Callable[[str], None] | None = None):
        self.console = console or log.console()
        self.say = say or log.info
        self.progress: Progress | None = None
        self.task = None
        self.fit_started = 0.0
        self.start_epoch = 0

    def before_fit(self, t: Trainer) -> None:
        self.fit_started, self.start_epoch = time.perf_counter(), t.epoch
        if log.bars_visible(self.console):
            self.progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                                     MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                                     TimeRemainingColumn(), console=self.console, transient=True)
            self.progress.start()

    def before_epoch(self, t: Trainer) -> None:
        if self.progress is not None:
            self.task = self.progress.add_task("train", total=t.steps_per_epoch,
                                               epoch=f"{t.epoch + 1}/{t.epochs}", loss=float("nan"))

    def after_step(self, t: Trainer) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, loss=t.batch_loss)

    def after_epoch(self, t: Trainer) -> None:
        if self.progress is not None:
            self.progress.remove_task(self.task)
        r = t.history[-1]
        done = t.epoch - self.start_epoch
        per_epoch = (time.perf_counter() - self.fit_started) / max(done, 1)
        left = per_epoch * (t.epochs - t.epoch)
        self.say(f"epoch {r['epoch']:>3}/{t.epochs}  train loss {r['train_loss']:.4f} acc {r['train_acc']:.4f}"
                 f"  val loss {r['val_loss']:.4f} acc {r['val_acc']:.4f}  lr {r['lr']:.2e}"
                 f"  {r['seconds']:.1f}s  (about {left / 60:.1f} min left)")

    def after_fit(self, t: Trainer) -> None:
        if self.progress is not None:
            self.progress.stop()
        if t.stop_reason:
            self.say(t.stop_reason)
