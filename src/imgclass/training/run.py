"""`imgclass train`: a run as a list of named stages, top to bottom (see `train`):

plan (plan.py) -> run folder -> decode -> build the model -> head stage (fine-tuning) -> time budget
(budget.py) -> fit each phase -> finalize (score, model file, evaluation). The files of the run folder
are described in imgclass/rundir.py.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .. import config as config_mod
from .. import log
from ..config import TrainConfig
from ..data.augment import batch_mix, from_config as augment_from_config
from ..data import cache
from ..data.images import ImageTensors, channel_stats, load_split
from ..data.preprocess import Preprocessing
from ..data.split import SPLITS, Split, write_splits
from ..data.stream import stream_split
from ..errors import DataError, UserError
from ..modelfile import load_model, model_header, read_header, save_model
from ..models.hierarchy import build as build_model
from ..models.inference import predict_logits, probabilities
from ..prediction.predictor import Predictor
from ..rundir import RunDir
from . import budget, distributed
from .budget import GRADUAL_STEP_SHARE, train_score_n
from .callbacks import (EMA, BestModel, Checkpoint, EarlyStopping, Lookahead, MetricsCSV, ProgressDisplay, ReduceOnPlateau,
                        TensorBoard)
from .checkpoint import load_checkpoint
from .device import pick_device, use_bf16
from .loop import Trainer
from .optim import make_optimizer
from .build import init_from_data, load_starting_weights
from .plan import RunPlan, plan_run
from .transfer import (GradualUnfreeze, backbone_preprocessing, classifiers, compute_features, layerwise_optimizer,
                       model_groups, set_backbones_trainable, train_head)


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

    def _repr_html_(self) -> str:  # a notebook cell showing a Run
        from ..notebook import table
        rows = [(name, m.get("accuracy"), m.get("loss"), m.get("n")) for name, m in self.metrics.items()]
        return table(["split", "accuracy", "loss", "images"], rows,
                     f"run {self.dir}: {self.config.model}, {len(self.classes)} classes, "
                     f"{len(self.history)} epoch(s); model file {self.model_path}")


@dataclass
class Session:
    """What the stages of one train() call hand on to each other. The plan is frozen: a stage that
    changes it (the time budget) puts a new one here."""
    plan: RunPlan
    run: RunDir
    dd: Any                                   # distributed.Dist: this process's rank
    console: Console                          # where progress bars draw (messages go to the "imgclass" logger)
    device: torch.device
    started: float                            # when the time budget started counting
    data: dict[str, ImageTensors] = field(default_factory=dict)
    pre: Preprocessing | None = None          # the preprocessing of the phase being trained
    model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    groups: list = field(default_factory=list)  # backbone groups for staged fine-tuning (empty: none)
    fresh: bool = True                        # a new run (False: resumed from its checkpoint)
    weights_origin: dict | None = None        # where the starting weights came from
    head_val_acc: float = float("nan")        # the head stage's validation accuracy ("epoch 0")
    deadline: float | None = None             # --time-budget: when training must end
    facts: dict[str, Any] = field(default_factory=dict)  # seconds per stage, cache hits, bad files
    calibration: dict[str, Any] | None = None  # the softmax temperature fitted on validation, once fitted

    def say(self, message: str, warning: bool = False) -> None:
        """A message for the user, from rank 0 only (each rank of a torchrun launch would repeat it)."""
        if self.dd.main:
            (log.warning if warning else log.info)(message)

    def header(self, metrics: dict | None = None) -> dict:
        cfg = self.plan.cfg
        return model_header(self.plan.arch, self.plan.classes, self.pre, metrics, tta=cfg.tta,
                            hierarchy=self.plan.hierarchy, weights=self.weights_origin, calibration=self.calibration)


def train(data: str | Path | None = None, *, config: str | Path | None = None, resume: str | Path | None = None,
          console: Console | None = None, callbacks: list | None = None, started: float | None = None,
          split: Split | None = None, **options: Any) -> Run:
    """Train a classifier on a folder of images. Options are TrainConfig fields (see `imgclass train --help`);
    callbacks are extra loop callbacks (e.g. Optuna pruning); started: the perf_counter time the time
    budget counts from (the command line passes its own start, so Python's start-up counts too); split:
    the files of each split instead of the seeded one (tune --cv's folds). Messages go to the "imgclass" logger (see imgclass.log); console: where progress bars draw."""
    started = min(started, time.perf_counter()) if started is not None else time.perf_counter()
    console = console or log.console()
    plan = plan_run(data, config, resume, started, log.info, split, **options)
    dd = distributed.setup(plan.cfg.device)  # one process, or this rank of a torchrun launch
    s = Session(plan, RunDir(Path(".")), dd, console if dd.main else Console(stderr=True, quiet=True),
                _device(plan, dd), started)
    s.run = _run_folder(s)
    s.plan = plan = dataclasses.replace(plan, cfg=dataclasses.replace(plan.cfg, out=str(s.run.path)))
    if plan.cfg.devices > 1 and not dd.active:  # --devices N: torchrun N processes on the prepared folder
        if distributed.launch(s.run.path, plan.cfg.devices) != 0:
            raise UserError(f"distributed training failed; the run folder is {s.run.path} (--resume continues it)")
        return load_run(s.run.path)
    _decode_stage(s, plan.phases[0][0])
    _build_stage(s)
    if s.groups and s.fresh and plan.cfg.head_epochs > 0:
        s.facts["head_seconds"], s.head_val_acc = _train_head_stage(
            s.model, s.data, s.pre, plan.cfg, plan.lr, plan.weight_decay, s.device, s.say, s.run)
    _optimizer_stage(s)
    if plan.cfg.time_budget is not None and s.fresh:
        _budget_stage(s)
    trainer = _trainer_stage(s, list(callbacks or []))
    _fit_stage(s, trainer)
    if not dd.main:  # rank 0 alone scores, evaluates and writes the model file; the others wait for it
        dd.barrier()  # leaving early made a rank abort in gloo's teardown while rank 0 still held the store
        distributed.teardown()
        return Run(dir=s.run.path, config=s.plan.cfg, classes=plan.classes, history=trainer.history)
    return _finalize_stage(s, trainer)


def _device(plan: RunPlan, dd) -> torch.device:
    device = pick_device(plan.cfg.device)
    return torch.device("cuda", dd.local_rank) if dd.active and device.type == "cuda" else device


def _run_folder(s: Session) -> RunDir:
    """Notes for the user, then the run folder: a resumed one, or a new one that rank 0 claims and writes
    config.yaml and splits.csv into (once); the other ranks learn its path from rank 0."""
    for note in s.plan.found.notes:
        s.say(note, warning=True)
    if s.plan.resume is not None:
        return s.plan.resume
    path = None
    if s.dd.main:
        for warning in s.plan.notes:
            s.say(warning, warning=True)
        run = RunDir.claim(s.plan.cfg.out)
        config_mod.save(dataclasses.replace(s.plan.cfg, out=str(run.path)), run.config)
        write_splits(s.plan.split, run.splits)
        path = str(run.path)
    return RunDir(Path(s.dd.broadcast(path)))


def _decode_stage(s: Session, img_size: int) -> None:
    """Every split decoded once at the first phase's size (or mapped from the cache); unusable files listed
    in bad_files.csv; the normalisation: the training images' channel statistics, the pretrained weights'
    own, or (resumed) exactly what the run trained with."""
    cfg, started = s.plan.cfg, time.perf_counter()
    s.pre = Preprocessing(img_size=img_size, resize=cfg.resize, max_pixels=cfg.max_image_pixels)
    s.data, s.facts["cache_hits"] = _decode_with_ranks(s, s.pre)
    bad = [(path, split, reason) for split, t in s.data.items() for path, reason in t.bad]
    s.facts["bad_files"] = len(bad)
    if bad and s.dd.main:
        s.run.write_rows(s.run.bad_files, bad, header=["path", "split", "reason"])
        s.say(f"{len(bad)} file(s) could not be decoded and are skipped; see {s.run.bad_files}", warning=True)
    counts = [int((s.data["train"].labels == i).sum()) for i in range(len(s.plan.classes))]
    empty = [c for c, n in zip(s.plan.classes, counts) if n == 0]
    if empty:
        raise DataError(f"class(es) {', '.join(empty)} have no usable training image")
    s.pre.mean, s.pre.std = channel_stats(s.data["train"].images)
    if s.plan.transfer and (bp := backbone_preprocessing(cfg.model)) is not None:
        s.pre.mean, s.pre.std = bp["mean"], bp["std"]  # the statistics the weights were trained with
    if s.plan.normalisation is not None:  # resumed: exactly what the run trained with
        s.pre.mean, s.pre.std = s.plan.normalisation
    s.facts["decode_seconds"] = time.perf_counter() - started


def _decode_with_ranks(s: Session, pre: Preprocessing) -> tuple[dict[str, ImageTensors], int]:
    if not s.dd.main:
        s.dd.barrier()  # rank 0 decodes and fills the cache first; the others then map it
    data, hits = _decode_all(s.plan.split, pre, s.plan.cfg, s.console, s.plan.cfg.verbose and s.dd.main, s.say)
    if s.dd.main:
        s.dd.barrier()
    return data, hits


def _build_stage(s: Session) -> None:
    """The model, seeded so the same config gives the same initial weights, initialised from the data,
    with its starting weights (a new run) and on its device."""
    plan, cfg = s.plan, s.plan.cfg
    torch.manual_seed(cfg.seed)
    if plan.hierarchy:
        s.say(f"two-level labels: {len(plan.hierarchy['coarse_classes'])} coarse, {len(plan.classes)} fine classes; "
              f"strategy {cfg.hierarchy_strategy}")
    model = build_model(plan.arch, plan.classes, plan.hierarchy)
    init_from_data(model, s.data["train"], s.pre, cfg.seed)
    if plan.transfer and not classifiers(model):
        raise UserError("--pretrained/--weights need a model with a backbone (a zoo model, or mlp/cnn/resnet)")
    s.fresh = distributed.fresh_start(plan.resume is not None, s.run.last)
    if not s.fresh and not s.run.last.is_file():  # never a silent restart under the old run's name
        raise UserError(f"cannot resume {s.run.path}: it has no checkpoints/last.safetensors (it stopped before its "
                        f"first epoch ended); start it again: imgclass train --config {s.run.config} "
                        f"--out NEW_FOLDER")
    s.weights_origin = load_starting_weights(model, cfg, s.fresh, plan.hierarchy is not None, plan.classes, s.pre,
                                              s.say)
    s.model = model.to(s.device).to(memory_format=torch.channels_last)
    s.groups = model_groups(s.model) if plan.transfer else []


def _optimizer_stage(s: Session) -> None:
    plan, cfg = s.plan, s.plan.cfg
    if s.groups:
        s.optimizer = layerwise_optimizer(s.model, s.groups, cfg.optimizer, plan.lr, plan.weight_decay, cfg.momentum,
                                          cfg.layer_lr_decay)
        if cfg.unfreeze == "none":
            set_backbones_trainable(s.model, False)
    else:
        s.optimizer = make_optimizer(s.model, cfg.optimizer, plan.lr, plan.weight_decay, cfg.momentum)


def _budget_stage(s: Session) -> None:
    """--time-budget: the epochs that fit, from a step measured here, and for a model with a recipe the
    widest network that still fits the recipe's epochs; a new plan, and the deadline."""
    plan, cfg, data = s.plan, s.plan.cfg, s.data
    seconds = config_mod.parse_duration(cfg.time_budget)
    eval_n = len(data["val"]) + len(data["test"]) + train_score_n(len(data["train"]), len(data["val"]))
    probe = (data["train"], len(data["val"]), eval_n, s.pre, cfg, s.device)
    share = GRADUAL_STEP_SHARE if s.groups and cfg.unfreeze == "gradual" else 1.0
    reports = sum(1 for name in ("val", "test") if len(data[name])) if cfg.evaluate else 0
    epochs, reserve, per_epoch = budget.plan_budget(s.model, *probe, seconds - (time.perf_counter() - s.started),
                                                    share, reports)
    plan = plan.with_epochs(epochs)
    wider = budget.wider_model(plan.spec, cfg, plan.arch["args"], plan.classes, plan.hierarchy, epochs,
                               s.pre.img_size, len(plan.phases))
    if wider is not None:  # room for the recipe's epochs at a wider network: measure it, keep it if it fits
        width, wide = wider
        init_from_data(wide, data["train"], s.pre, cfg.seed)
        wide = wide.to(s.device).to(memory_format=torch.channels_last)
        wide_plan = budget.plan_budget(wide, *probe, seconds - (time.perf_counter() - s.started))
        if wide_plan[0] >= plan.spec.recipe["epochs"]:
            (epochs, reserve, per_epoch), s.model = wide_plan, wide
            plan = plan.with_epochs(epochs, width)
            s.optimizer = make_optimizer(wide, cfg.optimizer, plan.lr, plan.weight_decay, cfg.momentum)
            s.say(f"time budget {cfg.time_budget}: room for a wider network (width {width})")
    s.plan = plan
    # 2% of the budget and 2 s more for what the estimate misses: Python starting before imgclass is
    # imported, and the report's variance (a 15-minute CIFAR run ended 6 s over its budget without the
    # 2%; a 5-minute fine-tuning run 0.6 s over without the 2 s)
    s.deadline = s.started + seconds - reserve - 0.02 * seconds - 2.0
    _check_room(s, cfg.time_budget, per_epoch, reserve)
    s.say(f"time budget {cfg.time_budget}: {epochs} epoch(s) of ~{per_epoch:.0f}s planned from a measured "
          f"step time; {reserve:.0f}s kept for the final scoring and report")


def _check_room(s: Session, budget_text: str, per_epoch: float, reserve: float) -> None:
    """Stop with the reason when not one epoch fits in what the budget has left: training would stop at once
    and leave a model at chance (seen on a GPU: CIFAR-10 with --time-budget 60s, its JPEGs decoded cold in
    33 s of it, wrote a 10% model)."""
    now = time.perf_counter()
    if s.deadline - now >= max(per_epoch, 0.1):
        return
    raise UserError(f"--time-budget {budget_text}: {now - s.started:.0f} s of it went before training could start "
                    f"(decoding took {s.facts.get('decode_seconds', 0):.0f} s), and one epoch needs ~{per_epoch:.1f} s "
                    f"with {reserve:.0f} s kept for the final scoring: nothing would be trained. Give a longer budget; "
                    "the decoded images are cached now, so the next run starts training sooner.")


def _trainer_stage(s: Session, extra_callbacks: list) -> Trainer:
    """The loop with its callbacks; resumed from the last checkpoint, or seeded with the head stage."""
    plan, cfg, data, main = s.plan, s.plan.cfg, s.data, s.dd.main
    class_weights = None
    if cfg.class_weights == "auto":
        from sklearn.utils.class_weight import compute_class_weight  # deferred: only for this option
        labels = data["train"].labels.numpy()
        class_weights = torch.tensor(compute_class_weight("balanced", classes=np.arange(len(plan.classes)), y=labels),
                                     dtype=torch.float32, device=s.device)
    callbacks = extra_callbacks + [BestModel(s.run.best, s.header, write=main)]
    callbacks += [Checkpoint(s.run.last, s.header), MetricsCSV(s.run.metrics)] if main else []
    callbacks += [Lookahead()] if cfg.lookahead else []
    callbacks += [EMA(cfg.ema)] if cfg.ema is not None else []
    callbacks += [EarlyStopping(cfg.patience)] if cfg.patience else []
    callbacks += [ReduceOnPlateau(cfg.plateau_patience, cfg.plateau_factor)] if cfg.schedule == "plateau" else []
    callbacks += [TensorBoard(s.run.tensorboard)] if cfg.tensorboard and main else []
    callbacks += [ProgressDisplay(s.console, s.say)] if cfg.verbose and main else []
    if s.groups:  # which backbone groups learn each epoch, and which batch norms stay in inference mode
        callbacks.append(GradualUnfreeze(s.groups, cfg.unfreeze, cfg.bn_stats_frozen))
    trainer = Trainer(model=s.model, optimizer=s.optimizer, train_data=data["train"], val_data=data["val"], pre=s.pre,
                      augment=augment_from_config(cfg), mix=batch_mix(cfg.mixup, cfg.cutmix, len(plan.classes)),
                      epochs=cfg.epochs, batch_size=cfg.batch_size,
                      peak_lr=plan.lr, warmup_epochs=cfg.warmup_epochs, label_smoothing=cfg.label_smoothing,
                      seed=cfg.seed, device=s.device, callbacks=callbacks, class_weights=class_weights,
                      balanced_sampler=cfg.balanced_sampler, schedule=cfg.schedule, deadline=s.deadline, dist=s.dd,
                      train_forward=_train_forward(s.model, cfg, s.dd, s.device, bool(s.groups)),
                      bf16=use_bf16(cfg.precision, s.device), plan=plan.record)
    if not math.isnan(s.head_val_acc) and s.fresh:
        # the head stage's model is "epoch 0": fine-tuning must beat it on validation to replace it, so the
        # model file is never worse on val than the head on frozen features (a linear probe, in effect)
        trainer.best_val_acc, trainer.best_epoch = s.head_val_acc, 0
        if main:
            save_model(s.run.best, s.model, s.header())
    if not s.fresh:
        loop_state, trainer.extra_state = load_checkpoint(s.run.last, s.model, s.optimizer)
        trainer.restore(loop_state)
        s.say(f"resuming {s.run.path} after epoch {trainer.epoch}/{cfg.epochs}")
    if cfg.verbose and main:
        hits = s.facts["cache_hits"]
        s.say(f"training {cfg.model} on {len(data['train'])} images ({len(plan.classes)} classes, {s.pre.img_size}px, "
              f"{plan.found.layout}); val {len(data['val'])}, test {len(data['test'])}; device {s.device}"
              f"{' (bf16)' if trainer.bf16 else ''}{f'; {hits} split(s) from the cache' if hits else ''}; "
              f"run folder {s.run.path}")
    return trainer


def _fit_stage(s: Session, trainer: Trainer) -> None:
    """Each progressive-resizing phase in turn (one phase without it): the same files at the phase's size."""
    cfg = s.plan.cfg
    for i, (size, last_epoch) in enumerate(s.plan.phases):
        if trainer.epoch >= last_epoch or trainer.stop:
            continue
        phase_start = s.plan.phases[i - 1][1] if i else 0
        if size != trainer.pre.img_size:
            s.pre = Preprocessing(img_size=size, resize=cfg.resize, max_pixels=cfg.max_image_pixels,
                                  mean=s.pre.mean, std=s.pre.std)
            s.say(f"progressive resizing: epochs {trainer.epoch + 1}-{last_epoch} at {size}px")
            s.data, _ = _decode_with_ranks(s, s.pre)
            trainer.pre, trainer.train_data, trainer.val_data = s.pre, s.data["train"], s.data["val"]
            if trainer.epoch == phase_start:  # not when resuming inside the phase: its best so far stands
                trainer.best_val_acc = -1.0  # the model file is chosen among epochs at the final size
        trainer.stop_at = last_epoch if i < len(s.plan.phases) - 1 else None
        trainer.fit()
        trainer.stop_at = None


def _finalize_stage(s: Session, trainer: Trainer) -> Run:
    """Score the best weights on every split, write the model file and results.json, evaluate val and test."""
    cfg, run = s.plan.cfg, s.run
    best, _ = load_model(run.best, s.device)
    metrics, probs, s.calibration = _score_splits(best, s.data, s.pre, cfg, s.device, s.say)
    facts = {"best_epoch": trainer.best_epoch, "epochs_run": trainer.epoch, "stop_reason": trainer.stop_reason,
             "train_seconds": round(sum(r["seconds"] for r in trainer.history), 2),
             "decode_seconds": round(s.facts["decode_seconds"], 2),
             "head_seconds": round(s.facts.get("head_seconds", 0.0), 2), "weights": s.weights_origin,
             "bad_files": s.facts["bad_files"], "device": str(s.device), "time_budget": cfg.time_budget,
             "processes": s.dd.world, "plan": trainer.plan}
    facts["calibration"] = s.calibration
    save_model(run.model, best, s.header({**metrics, **facts}))
    run.write_results({"metrics": metrics, **facts})
    result = Run(dir=run.path, config=cfg, classes=s.plan.classes, history=trainer.history, metrics=metrics)
    if cfg.evaluate:
        from ..evaluation.evaluate import evaluate  # deferred: evaluation imports matplotlib and the report
        # the model just scored, with the header just written: no second load from the file
        predictor = Predictor(best, read_header(run.model), s.device)
        for name in ("val", "test"):
            if len(s.data[name]):
                result.evaluations[name] = evaluate(run.path, split=name, predictor=predictor,
                                                    precomputed=(s.data[name], probs[name].numpy()))
    facts["total_seconds"] = round(time.perf_counter() - s.started, 2)
    run.write_results({"metrics": metrics, **facts})
    s.dd.barrier()
    distributed.teardown()
    return result


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
            if stream:
                tensors[name] = stream_split(split.root, split.items[name], pre, cfg.workers, report)
            elif cfg.cache and split.items[name]:
                tensors[name], hit = cache.load_cached(split.root, split.items[name], pre, cfg.cache_dir, cfg.workers, report)
                hits += hit
            else:
                tensors[name] = load_split(split.root, split.items[name], pre, cfg.workers, on_progress=report)
            done += len(split.items[name])
    return tensors, hits


# The head stage's learning rate is at least this (the fine-tuning rate, 10x lower, barely moves a fresh head).
# On frozen lite0 features of fashion_hier (25 classes, `python bench/transfer_stages.py RUN`, 2026-11-23): 30
# epochs at 3e-3 gave 95.7% val and 96.3% test, at 1e-3 95.0% val (same test); 10 epochs at 1e-3 (the old
# default) 94.1% val, 94.7% test.
HEAD_MIN_LR = 3e-3


def _train_head_stage(model, data, pre, cfg, lr, wd, device, say, run: RunDir) -> tuple[float, float]:
    """Stage 1 of fine-tuning: backbone frozen, its features computed once, the head trained on them."""
    started = time.perf_counter()
    set_backbones_trainable(model, False)
    batch = max(cfg.batch_size, 256)
    bf16 = use_bf16(cfg.precision, device)
    feats = compute_features(model, data["train"].images, pre, batch, device, bf16)
    val = data["val"]
    val_feats = compute_features(model, val.images, pre, batch, device, bf16) if len(val) else None
    say(f"stage 1: backbone features of {len(feats) + (len(val) if len(val) else 0)} images computed once "
        f"in {time.perf_counter() - started:.1f}s; training the head for {cfg.head_epochs} epoch(s)")

    def log_row(row):
        if cfg.verbose:
            say(f"{row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
                f"val acc {row['val_acc']:.4f}  {row['seconds']:.2f}s")

    rows = train_head(model, feats, data["train"].labels, val_feats, val.labels if len(val) else None,
                      cfg.head_epochs, max(lr, HEAD_MIN_LR), wd, cfg.label_smoothing, cfg.batch_size, cfg.seed, device,
                      log_row)
    run.write_rows(run.head_metrics, rows)
    set_backbones_trainable(model, True)
    return time.perf_counter() - started, rows[-1]["val_acc"]


def _score_splits(model, data: dict[str, ImageTensors], pre: Preprocessing, cfg: TrainConfig,
                  device: torch.device, say: Callable[..., None]
                  ) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any] | None]:
    """(accuracy, loss and n per split; probabilities per split; the calibration) of the final model, without
    augmentation and with its TTA, at the softmax temperature fitted on validation (--calibrate). The train
    split is scored on a sample: it only shows over- or under-fitting."""
    scored: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name in SPLITS:
        part = data[name]
        if name == "train" and len(part) > (sample := train_score_n(len(part), len(data["val"]))):
            keep = torch.randperm(len(part), generator=torch.Generator().manual_seed(cfg.seed))[:sample]
            part = ImageTensors(images=part.images[keep], labels=part.labels[keep],
                                paths=[part.paths[i] for i in keep.tolist()])
        if len(part):
            scored[name] = (predict_logits(model, part.images, pre, max(cfg.batch_size, 256), device, cfg.tta),
                            part.labels)
    calibration = _calibrate(cfg, scored.get("val"), say)
    t = calibration["temperature"] if calibration else 1.0
    metrics = {name: {"accuracy": float((logits.argmax(1) == labels).float().mean()),
                      "loss": float(torch.nn.functional.cross_entropy(logits / t, labels)), "n": len(labels)}
               for name, (logits, labels) in scored.items()}
    return metrics, {name: probabilities(logits, t) for name, (logits, _) in scored.items()}, calibration


def _calibrate(cfg: TrainConfig, val: tuple[torch.Tensor, torch.Tensor] | None, say) -> dict[str, Any] | None:
    """Temperature scaling on the validation split (training/calibrate.py), or why not."""
    if not cfg.calibrate:
        return None
    if val is None:
        say("no validation split: the probabilities are left uncalibrated (--val-split > 0 calibrates them)",
            warning=True)
        return None
    from .calibrate import calibration_facts, fit_temperature  # deferred: it imports the metrics (scikit-learn)
    facts = calibration_facts(*val, fit_temperature(*val))
    say(f"calibration: softmax temperature {facts['temperature']:.3f} fitted on {facts['n']} validation images; "
        f"their ECE {facts['val_ece_before']:.3f} -> {facts['val_ece_after']:.3f}")
    return facts


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
    run = RunDir(Path(run_dir))
    header = read_header(run.model)
    return Run(dir=run.path, config=config_mod.resolve(run.config), classes=header["classes"],
               history=run.read_history(), metrics=run.read_results()["metrics"])


def summary_lines(run: Run) -> list[str]:
    parts = [f"{name} accuracy {m['accuracy']:.4f} (n={m['n']})" for name, m in run.metrics.items()]
    lines = ["; ".join(parts), f"model: {run.model_path}"]
    if "test" in run.evaluations:
        lines.append(f"report: {run.evaluations['test'].dir / 'report.html'}")
    return lines
