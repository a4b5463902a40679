"""--time-budget: how many epochs, and (for a model with a recipe) how wide a network, fit in the time
left, from a step measured on this machine. The planner returns a new plan; it never edits one."""
from __future__ import annotations

import inspect
import math
import time

import torch

from ..config import TrainConfig
from ...data.images import ImageTensors
from ...data.preprocess import Preprocessing
from ...models.header import Architecture
from ...models.tasks import SINGLE_LABEL, Task
from ...models.inference import scoring_batch
from ...models.tta import TTA_PASSES
from ..loop.device import use_bf16
from ..loop.optim import make_optimizer


TRAIN_SCORE_SAMPLE = 5000  # train accuracy is measured on at most this many images


def train_score_n(n_train: int, n_val: int) -> int:
    """How many training images the final scoring sees: it only shows over- or under-fitting, so about
    as many as validation has (at least 1,000, at most TRAIN_SCORE_SAMPLE); all of them when fewer."""
    return min(n_train, TRAIN_SCORE_SAMPLE, max(1000, n_val))


WIDER = (2.0, 1.5)  # widths tried under --time-budget, as multiples of the model's default width (fast: 64, 48)


# How much cheaper than its FLOP count a wider network may turn out: the screen lets a width through when its FLOPs
# would fit the recipe's epochs at this many times the speed they predict, and a measured step decides. Kept at 1:
# at 2 (2026-12-08, machine A) a 15-minute CIFAR-10 run took width 64 (airbench94's own recipe there: 10 epochs of
# ~75 s, 0.9412 in 13.5 minutes), planned 10 epochs of ~76 s, ran 6 of ~88 s (imgclass's loop costs ~1.3x
# airbench's per image at this width) and scored 0.9236 test in 13.1 minutes, against 0.9264 with width 32's 18
# epochs. Width 64 costs 1.76x width 32 in bf16 here where FLOPs say 3.6x (3.7x measured in float32).
FLOP_SCREEN_SLACK = 1.0


def wider_models(spec, cfg: TrainConfig, arch: Architecture, classes, task: Task, epochs: int, img_size: int,
                 phases: int):
    """[(width, model)], widest first, of the wider networks (WIDER) that might still fit the recipe's epochs in the
    budget: their FLOP count, at FLOP_SCREEN_SLACK times the speed it predicts, screens them, and the caller measures
    a step of each in turn. Empty unless the model has a recipe and a `width` argument the user left alone.

    Evidence: airbench94's full width (64) reaches 94% on CIFAR-10 in ~10 epochs (0.9412 in 13.5 minutes on machine
    A: bench/RESULTS.md), where imgclass's default half width reaches 0.926 in 15 minutes; the 30-minute budget takes
    width 64 (0.9414)."""
    width_param = inspect.signature(spec.build).parameters.get("width")
    target = spec.recipe.get("epochs")
    if width_param is None or not target or "width" in cfg.model_args or phases > 1 or cfg.pretrained \
            or cfg.weights is not None or epochs < target / FLOP_SCREEN_SLACK:
        return []
    from torch.utils.flop_counter import FlopCounterMode

    def build(width: int):
        return task.build(arch.with_args(width=width), classes)

    def flops(model) -> int:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.eval()(torch.zeros(1, 3, img_size, img_size))
        return counter.get_total_flops()

    base = flops(build(width_param.default))
    found = []
    for factor in WIDER:
        width = int(width_param.default * factor)
        torch.manual_seed(cfg.seed)  # the same initial weights as a run given this width explicitly
        model = build(width)
        if FLOP_SCREEN_SLACK * epochs * base / flops(model) >= target:
            found.append((width, model.train()))
    return found


# Under gradual unfreezing the early epochs train only the top of the backbone: measured on
# hymenoptera (EfficientNet-Lite2, 6 epochs) the epochs took 0.75x the time planned from a full step.
GRADUAL_STEP_SHARE = 0.75


SCORING_MARGIN = 1.25  # the final scoring's reserve over its estimated seconds


def scoring_share(eval_n: int, val_n: int, tta: str, val_tta: str) -> float:
    """Seconds the final scoring is reserved (SCORING_MARGIN included) per second of a per-epoch validation pass:
    the same model in eval mode on eval_n images with the run's TTA against val_n with the validation's. The loop
    re-measures the reserve from each validation it times (Trainer.scoring)."""
    return SCORING_MARGIN * eval_n * TTA_PASSES[tta] / max(1, val_n * TTA_PASSES[val_tta])


def report_seconds(reports: int, n_classes: int) -> float:
    """The budget's reserve for the figures and a report per evaluated split (measured: 2.5-4 s each for 2-10
    classes on 2 cores)."""
    return reports * (3.0 + 0.1 * n_classes)


def plan_budget(model, data: ImageTensors, val_n: int, eval_n: int, pre: Preprocessing, cfg: TrainConfig,
                 device: torch.device, seconds_left: float, step_share: float = 1.0,
                 reports: int = 2, task: Task = SINGLE_LABEL, n_classes: int | None = None) -> tuple[int, float, float]:
    """Epochs that fit in the time left, from a measured step time (the task's loss) on a copy of the model
    (step_share: the share of a full step an average epoch's step costs; n_classes: the classes or tags, which
    the report's time grows with); returns (epochs, seconds reserved for the final evaluation, estimated seconds
    an epoch)."""
    # per-image training time is flat in the batch size for large inputs (EfficientNet-Lite0 at 224 px:
    # 18-19 images/s from 8 to 64): a small probe batch measures the same in a fraction of the time
    batch = min(cfg.batch_size, len(data), scoring_batch(cfg.batch_size, pre.img_size, device))
    x = pre.normalize(data.images[:batch].to(device)).contiguous(memory_format=torch.channels_last)
    y = data.labels[:batch].to(device)
    per_image, one_off = step_seconds(model, x, y, cfg, device, task, compiled=cfg.compile)
    per_image *= step_share
    # Scoring passes, timed as they run: float32, eval mode, no autograd (per-epoch validation without TTA,
    # the final scoring with it). Estimating them as a share of the training step undercounted them under bf16.
    eval_image = eval_seconds(model, x, device)
    passes = TTA_PASSES[cfg.tta]
    # Augmentation and batch assembly are left out on purpose: an optimistic epoch time plans a few too many
    # epochs, which the deadline trims while the schedule follows the clock. (With a 1.1 margin for them
    # the 60-minute CIFAR run planned 111 s an epoch, ran 97 s, and left 6 minutes unused.)
    epoch_seconds = per_image * len(data) + eval_image * val_n
    # final scoring with a 25% margin, then figures and a report per evaluated split
    n_classes = n_classes if n_classes is not None else int(data.labels.max() + 1)
    reserve = SCORING_MARGIN * eval_image * eval_n * passes + report_seconds(reports, n_classes)
    if cfg.compile:  # the run compiles its model in its first epoch and again for scoring in eval mode: each counted
        reserve += 2 * one_off  # at the probe's compilation (an upper bound: inductor's cache serves part of it)
    # Rounded up: the deadline cuts the last epoch short and the schedule anneals against the clock, so
    # the run uses the whole budget (rounding down left up to an epoch unused: 1.5 of 15 minutes measured).
    epochs = math.ceil(max(0.0, seconds_left - reserve) / epoch_seconds)
    return max(1, epochs), reserve, epoch_seconds


def step_seconds(forward, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, device: torch.device,
                 task: Task = SINGLE_LABEL, compiled: bool = False) -> tuple[float, float]:
    """(seconds per image of a training step, one-off seconds): the step (the task's loss, backward, the optimizer)
    of a copy of `forward` on the batch x, the best of three after a first step that pays one-off costs; compiled:
    the copy goes through torch.compile as the run's model will, so the step timed is the compiled one and the
    one-off is its compilation (timed on an uncompiled copy, a compiled run was planned at eager speed and left
    much of its budget unused)."""
    import copy
    probe = copy.deepcopy(forward).train()
    step = torch.compile(probe) if compiled else probe
    opt = make_optimizer(probe, cfg.optimizer, 1e-6, 0.0, cfg.momentum)
    times = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(cfg.precision, device))
    for _ in range(4):
        started = time.perf_counter()
        with autocast:
            loss, _ = task.loss(probe, step, x, y, y, 0.0, None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    best = min(times[1:])  # the first step pays one-off costs
    return best / len(x), max(0.0, times[0] - best)


def eval_seconds(forward, x: torch.Tensor, device: torch.device) -> float:
    """Seconds per image of a scoring pass (float32, eval mode, no autograd) on the batch x."""
    was_training = forward.training
    forward.eval()
    times = []
    with torch.no_grad():
        for i in range(3):
            started = time.perf_counter()
            forward(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - started)
    forward.train(was_training)
    return min(times) / len(x)


# Full fine-tuning is kept while this many epochs fit: gradual unfreezing reaches every group of the backbone in
# a few epochs (hymenoptera, Lite2 at 260 px, 6 epochs in 3 minutes: 96.1-96.7% val). With fewer, the top stage
# trains ~5x more epochs of the top blocks instead (fashion_hier, Lite0 at 224 px, 5 minutes: ~1.5 full epochs
# matched the head alone, 95.96% test; five top-stage epochs reached 97.2% in bench/transfer_stages.py).
FULL_MIN_EPOCHS = 4
TOP_MIN_EPOCHS = 2      # fewer top-stage epochs than this: the head stage's model is the run's
TOP_MAX_EPOCHS = 10     # the top stage's epochs under a long budget (it over-fits small sets beyond)


def choose_finetune(full_epochs: float, top_epochs: float | None, top_unavailable: str = "") -> tuple[str, str]:
    """(full, top or head; why) for --finetune auto under --time-budget, from the fine-tuning epochs each would fit
    (top_epochs None: no top stage for this model, for top_unavailable's reason)."""
    if full_epochs >= FULL_MIN_EPOCHS:
        return "full", f"{full_epochs:.0f} epochs of full fine-tuning fit"
    if top_epochs is None:
        if full_epochs >= 1:
            return "full", f"{full_epochs:.1f} epochs of full fine-tuning fit (no top stage: {top_unavailable})"
        return "head", f"not one epoch of full fine-tuning fits (no top stage: {top_unavailable})"
    if top_epochs >= TOP_MIN_EPOCHS:
        return "top", (f"only {full_epochs:.1f} epochs of full fine-tuning fit, {min(top_epochs, TOP_MAX_EPOCHS):.0f} "
                       f"of the top blocks on cached activations")
    return "head", f"neither full fine-tuning ({full_epochs:.1f} epochs) nor the top stage ({top_epochs:.1f}) fits"


def long_recipe(spec, epochs: int, explicit: frozenset[str]) -> dict:
    """The model's long-recipe settings (spec.long_recipe) when the budget fits its min_epochs or more, less those the
    user set (any augmentation option keeps the user's augmentation whole); {} when it does not apply."""
    long = dict(spec.long_recipe)
    if not long or epochs < long.pop("min_epochs") or explicit & {"augment", "translate", "cutout"}:
        return {}
    return long
