"""The training loop: short, top to bottom, with named events for callbacks.

Events (in order): before_fit, before_epoch, after_step, before_validate, after_epoch, after_fit; after_run once
at the end of train(), or run_failed when it ends by an exception (training/integrations/user_callbacks.py tells users how to
write one).
Callbacks read and write the Trainer's progress (epoch, step, done, history, stop...); tensors a callback
must carry across --resume go in `extra_state` (saved in checkpoints). Code outside the loop changes a
Trainer through its methods (resume, start_from_head, switch_phase), never by writing its fields.

One optimisation step is `train_step` (augment, mix, standardise, forward, loss, backward, step): train's
loop and lr-find both take their steps through it, so every training option acts the same in both.

Randomness is reseeded from (seed, epoch) at the start of every epoch, so an epoch
run after --resume draws exactly the shuffles, augmentations and dropout masks it
would have drawn in an uninterrupted run: the random state is a function of the
checkpoint's epoch and needs no pickled generator state.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ...data.augment import BatchAugment
from ...data.images import ImageTensors
from ...data.preprocess import Preprocessing
from ...models.inference import predict_logits
from ...models.tasks import SINGLE_LABEL, Task
from .optim import lr_at, set_lr


# How far (a share of the time budget) the clock may run ahead of the step count before it drives the
# schedule. At 0 the first step was already "late" (by_clock > 0 = by_steps) and every budget run's
# learning rates depended on timing; 2% of a 15-minute budget is 18 s.
CLOCK_SLACK = 0.02
# Under a budget the plan grows when epochs run faster than planned, up to this many times the planned epochs (the
# planner's epochs come from a measured step: more than half again means its estimate was far off, and a longer
# schedule than that is no longer the one chosen), and only once this share of its steps more fit.
GROWTH_LIMIT = 1.5
GROW_SHARE = 0.02


class Event(str, Enum):
    """The loop's events, in the order they happen."""
    BEFORE_FIT = "before_fit"
    BEFORE_EPOCH = "before_epoch"        # after model.train(): a callback may put frozen parts back in eval mode
    AFTER_STEP = "after_step"
    BEFORE_VALIDATE = "before_validate"  # the epoch's weights are final after this (e.g. lookahead's last pull)
    AFTER_EPOCH = "after_epoch"          # history has the epoch's row; checkpoints are written here
    AFTER_FIT = "after_fit"
    AFTER_RUN = "after_run"              # once, from train(), after the model file and evaluations are written: the
    #                                      callback receives the Run (training/run.py), not the Trainer
    RUN_FAILED = "run_failed"            # instead of after_run when train() ends by an exception (Ctrl-C included):
    #                                      the callback receives the exception, which train() then raises


class Callback:
    """Every callback subclasses this and overrides the events it needs; callbacks run in `order`.
    What a callback may change is the Trainer's progress (epoch, step, history, best_val_acc, stop,
    stop_reason, extra_state) and the model's weights; the settings above them are the run's."""
    order = 0

    def before_fit(self, t: "Trainer") -> None: ...
    def before_epoch(self, t: "Trainer") -> None: ...
    def after_step(self, t: "Trainer") -> None: ...
    def before_validate(self, t: "Trainer") -> None: ...
    def after_epoch(self, t: "Trainer") -> None: ...
    def after_fit(self, t: "Trainer") -> None: ...
    def after_run(self, run) -> None: ...  # the finished training.run.Run (rank 0 only)
    def run_failed(self, error: BaseException) -> None: ...  # what ended the run (rank 0 only)


@dataclass
class Trainer:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_data: ImageTensors
    val_data: ImageTensors | None
    pre: Preprocessing
    augment: BatchAugment
    epochs: int
    batch_size: int
    peak_lr: float
    warmup_epochs: float
    label_smoothing: float
    seed: int
    device: torch.device
    callbacks: list[Callback] = field(default_factory=list)
    class_weights: torch.Tensor | None = None   # per-class loss weights (--class-weights auto)
    balanced_sampler: bool = False
    schedule: str = "cosine"
    val_tta: str = "none"                # per-epoch validation: without TTA by default (6x cheaper); the final scores use it
    deadline: float | None = None        # time.perf_counter() by which this process's training must end (--time-budget)
    scoring: tuple[float, float] | None = None  # under a budget: (seconds reserved for the final scoring, its seconds
    #                                     per second of a validation pass: budget.scoring_share); the first timed
    #                                     validation moves the deadline to what it measures, later ones only earlier
    train_forward: nn.Module | None = None  # e.g. the torch.compile'd or DDP-wrapped model; defaults to model
    dist: Any = None                     # training.distributed.Dist: this process's rank among world
    bf16: bool = False                   # training forward passes under bf16 autocast (weights stay float32)
    mix: Any = None                      # data.augment.batch_mix: (images, labels) -> (images, soft targets)
    task: Task = SINGLE_LABEL            # the label structure: its loss (models/task.py)
    run_dir: Path | None = None          # the run folder (callbacks may write beside its files); None in lr-find
    cached_inputs: bool = False          # the top stage (top_stage.py): train/val data hold a frozen bottom's cached
                                         # activations, which train_forward turns into scores (no standardisation;
                                         # of the augmentation only flips apply)
    # progress, read and written by callbacks and saved in checkpoints
    epoch: int = 0                      # epochs completed
    step: int = 0                       # optimizer steps completed
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_acc: float = -math.inf     # the best validation score so far (the task's: higher is better; a number
    #                                     per image scores minus its MAE, so no score is below every other)
    best_epoch: int = 0
    stop: bool = False
    stop_reason: str = ""
    batch_loss: float = 0.0
    lr_factor: float = 1.0              # multiplies the schedule's rate (--schedule plateau's cuts)
    done: float = 0.0                   # share of training done at the last step (steps, or the clock under a budget)
    time_allowed: float | None = None   # seconds of training the budget allows (fixed at the first fit)
    clock: float = 0.0                  # seconds of training used so far, across phases and resumes
    plan: dict[str, Any] = field(default_factory=dict)  # choices made from the data and the clock, for --resume
    last_tick: float | None = None      # when this process's previous fit() ended (not saved)
    epoch_cost: tuple[float, int, float] | None = None  # the last epoch this process trained: (seconds of its steps,
    #                                                     its steps, seconds after them: validation, checkpoint)
    extra_state: dict[str, torch.Tensor] = field(default_factory=dict)  # callbacks' tensors, saved in checkpoints

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.train_data) // self.batch_size)

    def event(self, event: Event, subject: Any = None) -> None:
        """Every callback's handler of `event`, in order; it receives the Trainer (after_run: `subject`, the Run)."""
        for cb in sorted(self.callbacks, key=lambda c: c.order):
            getattr(cb, event.value)(self if subject is None else subject)

    def __post_init__(self) -> None:
        odd = [type(cb).__name__ for cb in self.callbacks if not isinstance(cb, Callback)]
        if odd:
            raise TypeError(f"callbacks must subclass imgclass.training.loop.fit.Callback: {', '.join(odd)}")

    def loop_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "history": self.history, "best_val_acc": self.best_val_acc,
                "best_epoch": self.best_epoch, "stop": self.stop, "stop_reason": self.stop_reason,
                "time_allowed": self.time_allowed, "clock": self.clock, "plan": self.plan}

    @property
    def last_epoch(self) -> bool:
        """Whether the epoch being trained is the run's last (planned, or cut by the clock)."""
        return self.stop or self.epoch + 1 >= self.epochs

    def resume(self, state: dict[str, Any], extra_state: dict[str, torch.Tensor]) -> None:
        """Continue from a checkpoint's loop state (loop_state) and the callbacks' tensors saved with it."""
        for key, value in state.items():
            setattr(self, key, value)
        self.extra_state = extra_state

    def start_from_head(self, val_acc: float, fine_tuning: bool = True) -> None:
        """The head stage's model is "epoch 0": fine-tuning must beat its validation accuracy to replace it.
        fine_tuning False: no fine-tuning stage follows (--finetune head), and the run says so."""
        self.best_val_acc, self.best_epoch = val_acc, 0
        if not fine_tuning:
            self.stop, self.stop_reason = True, "no fine-tuning stage: the model is the head on frozen features"

    def switch_phase(self, pre: Preprocessing, train_data: ImageTensors, val_data: ImageTensors | None,
                     reset_best: bool) -> None:
        """A progressive-resizing phase: the same files decoded at another size. reset_best: the model file is
        chosen among this phase's epochs (not when resuming inside the phase: its best so far stands)."""
        self.pre, self.train_data, self.val_data = pre, train_data, val_data
        if reset_best:
            self.best_val_acc = -math.inf

    def epoch_order(self, gen: torch.Generator) -> torch.Tensor:
        """Indices of one epoch: a permutation, or class-balanced draws with replacement."""
        n = len(self.train_data)
        if not self.balanced_sampler:
            return torch.randperm(n, generator=gen)
        counts = torch.bincount(self.train_data.labels).float()
        weights = 1.0 / counts[self.train_data.labels]
        return torch.multinomial(weights, n, replacement=True, generator=gen)

    def progress(self, total_steps: int) -> float:
        """Share of training done: by steps, until the clock says the run is late. The clock's share counts
        only past CLOCK_SLACK of the budget (rescaled to reach 1 at the deadline), so a run that keeps to its
        plan follows steps alone and is reproducible: resumed, it gives the same weights as uninterrupted.
        The clock used so far is saved in checkpoints, so a resumed run keeps its budget."""
        by_steps = self.step / max(1, total_steps)
        if self.time_allowed is None:
            return by_steps
        if time.perf_counter() >= self.deadline:
            return 1.0
        by_clock = (self.clock / self.time_allowed - CLOCK_SLACK) / (1.0 - CLOCK_SLACK)
        return max(by_steps, by_clock)

    @property
    def total_steps(self) -> int:
        """The optimizer steps the run plans (its schedule's length): its epochs', or what the clock replanned,
        which can end inside an epoch."""
        return int(self.plan.get("steps", self.epochs * self.steps_per_epoch))

    def _fit_plan_to_clock(self) -> bool:
        """Under a time budget, at an epoch's start: the steps that fit in the time left, at the speed of the last
        epoch this process trained (its steps, then its validation and checkpoint; after a resume, the run's average
        epoch so far), become the plan, so the schedule, which follows the steps, anneals at the last of them and
        the run ends within a step of its deadline. The plan adapts both ways: cut when epochs run slower than
        planned, grown again when they run faster (up to GROWTH_LIMIT times the planned epochs, or the plan's
        epochs_max: the top stage's TOP_MAX_EPOCHS), so a few slow epochs (another process on the
        machine) no longer shorten the run for good. A partial last epoch still validates. Growth waits until
        GROW_SHARE more steps fit, so small changes of speed leave the schedule alone. (Cut by the deadline
        instead, a run on a machine faster or slower than planned stopped with the learning rate still at 8% of
        its peak: the clock's share lags by the time between an epoch's last step and the next epoch's start.)
        The new plan is kept in `plan`, so --resume continues it exactly. True if it changed."""
        if self.time_allowed is None or self.epoch == 0 or self.clock <= 0 or (self.dist is not None
                                                                                and self.dist.active):
            return False  # (with several processes the ranks' clocks differ: they keep the plan and the deadline)
        spe = self.steps_per_epoch
        if self.epoch_cost is not None:
            steps_seconds, steps, between = self.epoch_cost
            per_step = steps_seconds / max(1, steps)
        else:
            per_step, between = self.clock / max(1, self.step), 0.0
        per_epoch = spe * per_step + between
        left = self.time_allowed - self.clock
        whole = int(max(0.0, left) // per_epoch)
        rest = left - whole * per_epoch - between          # a partial last epoch validates too
        partial = min(spe - 1, int(rest // per_step)) if rest > per_step else 0
        cap = self.plan.get("epochs_max") or math.floor(GROWTH_LIMIT * self.plan.get("epochs_planned", self.epochs))
        fit = min(max(self.step + 1, self.step + whole * spe + partial), max(self.total_steps, cap * spe))
        total = self.total_steps
        if fit == total or total < fit < total + max(1, GROW_SHARE * total):
            return False
        planned = self.plan.get("epochs_planned", self.epochs)
        epochs = -(-fit // spe)
        shown = f"{fit / spe:.1f}".removesuffix(".0")
        self.stop_reason = f"time budget: {shown} of {planned} planned epochs fit"
        self.plan = {**self.plan, "epochs": epochs, "steps": fit, "epochs_planned": planned}
        self.epochs = epochs
        return True

    def _reserve_from_validation(self, seconds: float, first: bool) -> None:
        """The final scoring's reserve re-measured from a validation pass of `seconds` (the same model, eval mode, on
        images; not the first in a process, which pays one-off costs). The first timed pass (`first`) replaces the
        plan's estimate either way; later passes only raise it (the slowest pass seen stands). The deadline and
        the time allowed move by the difference (kept in time_allowed, so a resumed run keeps it). Evidence, machine
        A: two 5-minute runs (2026-12-07; a number per image, tags) ended 8-11 s past their budget with the reserve
        measured once before training (47 s reserved, 57 s used); after only-earlier moves, the mall run kept 53-62 s
        and ended 42 s before its budget (2026-12-08): the estimate from three forward passes of one batch before
        training is too rough to keep either way."""
        if (self.scoring is None or self.deadline is None or self.cached_inputs
                or (self.dist is not None and self.dist.active)):
            return  # (the top stage validates on cached activations: not what the final scoring runs)
        reserved, share = self.scoring
        needed = share * seconds
        if needed > reserved or first:
            self.deadline -= needed - reserved
            if self.time_allowed is not None:
                self.time_allowed = max(1e-3, self.time_allowed - (needed - reserved))
            self.scoring = (needed, share)

    def _tick(self, since: float) -> float:
        """Add the training time since `since` to the clock; returns now."""
        now = time.perf_counter()
        self.clock += now - since
        return now

    def validate(self) -> tuple[float, float]:
        """Validation loss and score (the task's: accuracy, or mAP with several tags per image); with DDP each
        rank predicts its shard and the logits are gathered, so every rank scores the whole split as one
        process would."""
        data = self.val_data
        if self.cached_inputs:  # float32 and no TTA, as the per-epoch validation of images
            return self.task.score(forward_cached(self.train_forward, data.images, max(self.batch_size, 256), self.device),
                                   data.labels)
        if self.dist is None or not self.dist.active or len(data) < self.dist.world:  # (no empty shard to gather)
            return evaluate_loss_acc(self.model, data, self.pre, self.batch_size, self.device, self.val_tta, self.task)
        shard = torch.arange(self.dist.rank, len(data), self.dist.world)
        logits = predict_logits(self.model, data.images[shard], self.pre, self.batch_size, self.device, self.val_tta)
        return self.task.score(self.dist.gather_strided(logits, len(data)), data.labels)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, flips: torch.Tensor
                   ) -> tuple[float, torch.Tensor]:
        """One optimisation step on a uint8 NCHW batch and its labels: augmentation (drawn from gen; flips: the
        images' flip parities), mixup/cutmix, standardisation, the forward pass (bf16 autocast if set), the task's
        loss (label smoothing, class weights), backward and the optimizer's step. Returns (the batch's loss, its
        scores)."""
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        target = y
        if self.cached_inputs:  # a frozen bottom's maps: flipped like the images they came from, nothing else
            if x.ndim == 5:  # several cached views of each image (augmented at the input): one drawn per image
                x = x[torch.arange(len(x)), torch.randint(0, x.shape[1], (len(x),), generator=gen).to(x.device)]
            x = self.augment.flip_only(x.float(), gen, flips, self.epoch)
        else:
            x = self.augment(x.float().div_(255.0), gen, flips, self.epoch)
            if self.mix is not None:  # mixed images, soft targets; train accuracy still counts the first label
                x, target = self.mix(x, y)
            x = self.pre.standardize(x)
        if self.device.type in ("cpu", "cuda") and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with autocast:
            loss, logits = self.task.loss(self.model, self.train_forward or self.model, x, y, target,
                                          self.label_smoothing, self.class_weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach()), logits

    def fit(self, stop_at: int | None = None) -> None:
        """Train until the planned epochs are done, the run is stopped, or (a progressive-resizing phase)
        after epoch stop_at."""
        warmup = self.warmup_epochs / self.epochs if self.schedule in ("cosine", "plateau") else 0.0
        flip_parity = torch.randint(0, 2, (len(self.train_data),), generator=torch.Generator().manual_seed(self.seed))
        ticked = time.perf_counter()
        if self.time_allowed is None and self.deadline is not None:  # a budget's first fit
            self.time_allowed = max(1e-3, self.deadline - ticked)
        if self.time_allowed is not None and self.deadline is None:  # a resumed run gets what its budget has left
            self.deadline = ticked + max(0.0, self.time_allowed - self.clock)
        if self.last_tick is not None:  # a later phase: decoding at the next size counted against the budget too
            ticked = self._tick(self.last_tick)
        self.event(Event.BEFORE_FIT)
        total = self.total_steps  # the whole run, across progressive-resizing phases
        self.epoch_cost = None  # a new phase (another image size) or a resumed run: no epoch measured here yet
        steps_ended = None  # the clock when this process's last epoch's steps ended
        validations_here = 0  # validation passes this fit() has timed
        while self.epoch < min(self.epochs, stop_at or self.epochs) and not self.stop:
            ticked = self._tick(ticked)  # the last epoch's checkpoint and callbacks count too
            if steps_ended is not None and self.epoch_cost is not None:
                self.epoch_cost = (self.epoch_cost[0], self.epoch_cost[1], self.clock - steps_ended)
            if self._fit_plan_to_clock():
                total = self.total_steps  # the schedule now ends with the last step that fits
            epoch_clock, epoch_step = self.clock, self.step
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            torch.manual_seed(self.seed * 100_003 + self.epoch)  # dropout and model-internal randomness
            self.model.train()
            self.event(Event.BEFORE_EPOCH)  # after train(): callbacks may put frozen parts back in eval mode
            started, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
            order = self.epoch_order(gen)
            rank, world = (self.dist.rank, self.dist.world) if self.dist is not None else (0, 1)
            chunks = [order[start:start + self.batch_size][rank::world]  # this rank's shard of each global batch
                      for start in range(0, len(order), self.batch_size)
                      # batch norm cannot train on one image; every DDP rank needs a share
                      if min(self.batch_size, len(order) - start) >= max(2, world) or len(order) <= 1]
            images = self.train_data.images
            # in-memory (or memory-mapped) images are sliced; streamed ones are decoded ahead in worker processes
            fetched = images.batches(chunks) if hasattr(images, "batches") else (images[idx] for idx in chunks)
            for idx, x in zip(chunks, fetched):
                ticked = self._tick(ticked)
                if self.step >= total:  # the plan's last step came inside this epoch (the clock replanned it)
                    break
                done = self.progress(total)
                if done >= 1.0 and self.time_allowed is not None:
                    self.stop, self.stop_reason = True, "time budget reached"
                    break
                self.done = done
                set_lr(self.optimizer, lr_at(done, warmup, self.peak_lr, self.schedule) * self.lr_factor, done)
                y = self.train_data.labels[idx]
                self.batch_loss, logits = self.train_step(x, y, gen, flip_parity[idx])
                self.step += 1
                seen += len(y)
                loss_sum += self.batch_loss * len(y)
                correct += self.task.correct(logits, y)
                self.event(Event.AFTER_STEP)
            ticked = self._tick(ticked)
            steps_ended = self.clock
            self.epoch_cost = (self.clock - epoch_clock, self.step - epoch_step, 0.0)
            if self.dist is not None:
                loss_sum, correct, seen = self.dist.sum(loss_sum, correct, seen)
            if seen == 0 and self.stop:  # the deadline came before the epoch's first step: no epoch to record
                break
            self.event(Event.BEFORE_VALIDATE)  # the epoch's weights are final after this (e.g. lookahead's last pull)
            row = {"epoch": self.epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}
            if self.val_data is not None and len(self.val_data):
                validated = time.perf_counter()
                row["val_loss"], row["val_acc"] = self.validate()
                if validations_here:  # (the first pays one-off costs: allocation, an eval-mode compilation)
                    self._reserve_from_validation(time.perf_counter() - validated, first=validations_here == 1)
                validations_here += 1
            else:
                row["val_loss"], row["val_acc"] = float("nan"), float("nan")
            row["lr"] = self.optimizer.param_groups[0]["lr"]
            row["seconds"] = time.perf_counter() - started
            ticked = self._tick(ticked)  # validation counts against the budget too
            self.history.append(row)
            self.epoch += 1
            self.event(Event.AFTER_EPOCH)
        self.last_tick = ticked
        self.event(Event.AFTER_FIT)


@torch.no_grad()
def forward_cached(module: nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device,
                   bf16: bool = False) -> torch.Tensor:
    """A module's float32 outputs for cached inputs (the top stage's activations: its scores, or the pooled
    features the head stage trains on), in eval mode, batch by batch, under bf16 autocast if asked."""
    module.eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    out = []
    for s in range(0, len(inputs), batch_size):
        with autocast:
            out.append(module(inputs[s:s + batch_size].to(device).float()).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def evaluate_loss_acc(model: nn.Module, data: ImageTensors, pre: Preprocessing, batch_size: int,
                      device: torch.device, tta: str = "none", task: Task = SINGLE_LABEL) -> tuple[float, float]:
    """(loss, the task's score) of a split."""
    return task.score(predict_logits(model, data.images, pre, batch_size, device, tta), data.labels)
