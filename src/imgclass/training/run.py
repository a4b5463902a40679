"""`imgclass train`: a run as a list of named stages, top to bottom (see `train`):

plan (plan.py) -> run folder -> decode -> build the model -> head stage (fine-tuning) -> time budget
(budget.py) -> fit each phase -> finalize (score, model file, evaluation). The files of the run folder
are described in imgclass/core/rundir.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console

from . import config as config_mod
from ..core import log
from .config import TrainConfig
from ..data.images import ImageTensors
from ..data.preprocess import Preprocessing
from ..data.split import SPLITS, Split, stratified_sample, write_splits
from ..core.errors import UserError
from ..models.modelfile import load_model, model_header, read_header, save_model
from ..models.header import ModelHeader
from ..models.inference import compute_features, pick_device, predict_logits
from ..models.reject import K as REJECT_K, Rejection
from ..models.tasks import SINGLE_LABEL, Finished, Task
from ..inference.predictor import Predictor
from ..core.rundir import RunDir
from .stages import budget, top_stage
from .loop import distributed
from .stages.budget import GRADUAL_STEP_SHARE, train_score_n
from .build import Prepared, decode_splits, init_from_data, make_optimizer_for, make_trainer, prepare
from .loop.callbacks import (EMA, BestModel, Checkpoint, EarlyStopping, Lookahead, MetricsCSV, ProgressDisplay,
                             ReduceOnPlateau, TensorBoard)
from .loop.checkpoint import load_checkpoint, load_checkpoint_model
from ..data.augment import from_config as augment_from_config
from .loop.device import use_bf16
from .loop.fit import Event, Trainer, forward_cached
from .integrations.tracking import trackers
from .integrations.user_callbacks import load_callbacks
from .plan import RunPlan, plan_run
from .stages.transfer import GradualUnfreeze, layerwise_optimizer, set_backbones_trainable, train_head


@dataclass
class Run:
    """What `train` returns: where the run is and how it went."""
    dir: Path
    config: TrainConfig
    classes: list[str]
    history: list[dict[str, Any]]
    metrics: dict[str, Any] = field(default_factory=dict)  # per split, the task's final scores: {"accuracy", "loss", "n"}, ...
    evaluations: dict[str, Any] = field(default_factory=dict)  # split -> Evaluation (metrics, report, figures)
    task: Task = SINGLE_LABEL                              # the label structure (models/tasks), as the model file has it

    @property
    def model_path(self) -> Path:
        return self.dir / "model.safetensors"

    def _repr_html_(self) -> str:  # a notebook cell showing a Run
        from ..core.notebook import table
        rows = [(name, self.task.split_line(name, m)) for name, m in self.metrics.items()]
        return table(["split", "final scores"], rows,
                     f"run {self.dir}: {self.config.model}, {self.task.answering(self.classes)}, "
                     f"{len(self.history)} epoch(s); model file {self.model_path}")


def train(data: str | Path | None = None, *, config: str | Path | None = None, resume: str | Path | None = None,
          console: Console | None = None, callbacks: list | None = None, started: float | None = None,
          split: Split | None = None, **options: Any) -> Run:
    """Train a classifier on a folder of images. Options are TrainConfig fields (see `imgclass train --help`);
    callbacks: your Callback objects (training/integrations/user_callbacks.py; Optuna's pruning is one); started: the perf_counter time the time
    budget counts from (the command line passes its own start, so Python's start-up counts too); split:
    the files of each split instead of the seeded one (tune --cv's folds). Messages go to the "imgclass" logger
    (see imgclass.core.log); console: where progress bars draw."""
    started = min(started, time.perf_counter()) if started is not None else time.perf_counter()
    plan = plan_run(data, config, resume, started, log.info, split, **options)
    dd = distributed.setup(plan.cfg.device)  # one process, or this rank of a torchrun launch
    say = _say_on_main(dd)
    console = (console or log.console()) if dd.main else Console(stderr=True, quiet=True)
    run = _run_folder(plan, dd, say)
    plan = dataclasses.replace(plan, cfg=dataclasses.replace(plan.cfg, out=str(run.path)))
    if plan.cfg.devices > 1 and not dd.active:  # --devices N: torchrun N processes on the prepared folder
        if launch_workers(run.path, plan.cfg.devices) != 0:
            raise UserError(f"distributed training failed; the run folder is {run.path} (--resume continues it)")
        return load_run(run.path)
    # rank 0's own: the callbacks named in the config (--callback) and the tracker (--track); built before any work
    callbacks = list(callbacks or []) + (load_callbacks(plan.cfg.callback) + trackers(plan, run.path) if dd.main else [])
    try:
        with run.held() if dd.main else contextlib.nullcontext():  # rank 0 holds the folder: one trainer at a time
            device, fresh = _device(plan, dd), _fresh_start(plan, run)
            prep = prepare(plan, device, say, console, fresh, dd)
            _list_bad_files(prep, run, dd, say)
            top, no_top = (_top_stage_inputs(plan, prep, device, say) if fresh and plan.cfg.finetune in ("auto", "top")
                           else (None, ""))
            head = (_train_head_stage(prep, plan, device, say, run, top)
                    if prep.groups and fresh and plan.cfg.head_epochs > 0 else None)
            if prep.groups and plan.cfg.unfreeze == "none":  # a truly frozen base (after the head stage, which unfreezes)
                set_backbones_trainable(prep.model, False)
            deadline, scoring = None, None
            if plan.cfg.time_budget is not None and fresh:
                plan, prep, deadline, scoring = _budget_stage(plan, prep, device, started, say, top, no_top)
            if plan.cfg.finetune == "head":  # the head stage's model is the run's (--finetune head, or the budget's pick)
                plan = plan.with_epochs(0)
            if plan.cfg.finetune == "top" and top is None:  # resumed: the same activations again, from the same bottom
                load_checkpoint_model(run.last, prep.model)
                top, _ = _top_stage_inputs(plan, prep, device, say)
            trainer = _trainer_stage(plan, prep, run, dd, device, console, fresh, head, deadline, callbacks,
                                     say, top if plan.cfg.finetune == "top" else None, scoring)
            pre, data = _fit_stage(plan, prep, trainer, dd, say)
            if not dd.main:  # rank 0 alone scores, evaluates and writes the model file; the others wait for it
                dd.barrier()  # leaving early made a rank abort in gloo's teardown while rank 0 still held the store
                distributed.teardown()
                return Run(dir=run.path, config=plan.cfg, classes=plan.classes, history=trainer.history, task=plan.task)
            final = dataclasses.replace(prep, data=data, pre=pre)
            result = _finalize_stage(plan, run, trainer, final, head[0] if head else 0.0, device, dd, started, say)
    except BaseException as error:  # a crash, a refusal, Ctrl-C: the callbacks hear it (a tracker marks its run failed)
        if dd.main:
            _tell_failed(callbacks, error)
        raise
    trainer.event(Event.AFTER_RUN, result)  # the model file and evaluations are written: trackers send them
    return result


def _tell_failed(callbacks: list, error: BaseException) -> None:
    """Each callback's run_failed, in order. One that fails in turn costs a warning: the run's own error is what
    train() raises."""
    for cb in sorted(callbacks, key=lambda c: getattr(c, "order", 0)):
        try:
            cb.run_failed(error)
        except Exception as exc:  # noqa: BLE001 - never hide the run's own error
            log.warning(f"{type(cb).__name__}.run_failed failed too ({type(exc).__name__}: {exc})")


def header_for(plan: RunPlan, pre: Preprocessing, weights_origin: dict | None, metrics: dict | None = None,
               calibration: dict | None = None) -> ModelHeader:
    """The model file's header for this plan at this preprocessing."""
    return model_header(plan.arch, plan.classes, pre, metrics, tta=plan.cfg.tta, task=plan.task,
                        weights=weights_origin, calibration=calibration)


def _say_on_main(dd) -> Callable[..., None]:
    def say(message: str, warning: bool = False) -> None:
        """A message for the user, from rank 0 only (each rank of a torchrun launch would repeat it)."""
        if dd.main:
            (log.warning if warning else log.info)(message)
    return say


def _device(plan: RunPlan, dd) -> torch.device:
    device = pick_device(plan.cfg.device)
    return torch.device("cuda", dd.local_rank) if dd.active and device.type == "cuda" else device


def _fresh_start(plan: RunPlan, run: RunDir) -> bool:
    """Whether training starts from the beginning; never a silent restart under the old run's name."""
    fresh = distributed.fresh_start(plan.resume is not None, run.last)
    if not fresh and not run.last.is_file():
        raise UserError(f"cannot resume {run.path}: it has no checkpoints/last.safetensors (it stopped before its "
                        f"first epoch ended); start it again: imgclass train --config {run.config} "
                        f"--out NEW_FOLDER")
    return fresh


def _run_folder(plan: RunPlan, dd, say: Callable[..., None]) -> RunDir:
    """Notes for the user, then the run folder: a resumed one, or a new one that rank 0 claims and writes
    config.yaml and splits.csv into (once); the other ranks learn its path from rank 0."""
    for note in plan.found.notes:
        say(note, warning=True)
    if plan.resume is not None:
        return plan.resume
    path = None
    if dd.main:
        for warning in plan.notes:
            say(warning, warning=True)
        run = RunDir.claim(plan.cfg.out)
        config_mod.save(dataclasses.replace(plan.cfg, out=str(run.path)), run.config)
        write_splits(plan.split, run.splits)
        path = str(run.path)
    return RunDir(Path(dd.broadcast(path)))


def _list_bad_files(prep: Prepared, run: RunDir, dd, say: Callable[..., None]) -> None:
    if prep.bad and dd.main:
        run.write_rows(run.bad_files, prep.bad, header=["path", "split", "reason"])
        say(f"{len(prep.bad)} file(s) could not be decoded and are skipped; see {run.bad_files}", warning=True)


def _budget_stage(plan: RunPlan, prep: Prepared, device: torch.device, started: float,
                  say: Callable[..., None], top: top_stage.TopInputs | None = None, no_top: str = ""
                  ) -> tuple[RunPlan, Prepared, float]:
    """--time-budget: the epochs that fit, from a step measured here; for a pretrained backbone under --finetune
    auto which stage fine-tunes it (full, top, head: from the epochs each fits; no_top: why there are no top-stage
    inputs); for a model with a recipe the widest network that still fits the recipe's epochs. Returns (a new plan,
    what to train, the deadline, (the final scoring's reserve, its seconds per second of validation): what the loop
    re-measures it with)."""
    cfg, data, pre = plan.cfg, prep.data, prep.pre
    seconds = config_mod.parse_duration(cfg.time_budget)
    eval_n = len(data["val"]) + len(data["test"]) + train_score_n(len(data["train"]), len(data["val"]))
    probe = (data["train"], len(data["val"]), eval_n, pre, cfg, device)
    share = GRADUAL_STEP_SHARE if prep.groups and cfg.unfreeze == "gradual" else 1.0
    reports = sum(1 for name in ("val", "test") if len(data[name])) if cfg.evaluate else 0
    sized = dict(task=plan.task, n_classes=len(plan.classes))
    epochs, reserve, per_epoch = budget.plan_budget(prep.model, *probe, seconds - (time.perf_counter() - started),
                                                    share, reports, **sized)
    if prep.groups and cfg.finetune in ("auto", "top"):
        plan, epochs, per_epoch = _choose_finetune(plan, prep, top, no_top, device, _deadline(started, seconds, reserve),
                                                   per_epoch, say)
    plan = plan.with_epochs(epochs)
    for width, wide in budget.wider_models(plan.spec, cfg, plan.arch, plan.classes, plan.task, epochs, pre.img_size,
                                           len(plan.phases)):  # widest first: measure each, keep the first that fits
        init_from_data(wide, data["train"], pre, cfg.seed)
        wide = wide.to(device).to(memory_format=torch.channels_last)
        wide_plan = budget.plan_budget(wide, *probe, seconds - (time.perf_counter() - started), **sized)
        if wide_plan[0] >= plan.spec.recipe["epochs"]:
            epochs, reserve, per_epoch = wide_plan
            plan = plan.with_epochs(epochs, width)
            prep = dataclasses.replace(prep, model=wide, optimizer=make_optimizer_for(plan, wide, prep.groups))
            say(f"time budget {cfg.time_budget}: room for a wider network (width {width})")
            break
    if long := budget.long_recipe(plan.spec, epochs, plan.explicit):
        plan = plan.with_settings(**long)
        say(f"time budget {cfg.time_budget}: {epochs} epochs fit, {epochs / plan.spec.recipe['epochs']:.1f}x the "
            f"recipe's: its long recipe against over-fitting ({', '.join(f'{k} {v:g}' for k, v in long.items())}); "
            f"--augment/--translate/--cutout choose")
    deadline = _deadline(started, seconds, reserve)
    scoring = (max(0.0, reserve - budget.report_seconds(reports, len(plan.classes))),
               budget.scoring_share(eval_n, len(data["val"]), cfg.tta, Trainer.val_tta))
    if plan.cfg.finetune == "head":  # the head stage's model is the run's: nothing more to fit
        return plan, prep, deadline, scoring
    _check_room(deadline, started, prep.decode_seconds, cfg.time_budget, per_epoch, reserve)
    say(f"time budget {cfg.time_budget}: {epochs} epoch(s) of ~{per_epoch:.0f}s planned from a measured "
        f"step time; {reserve:.0f}s kept for the final scoring and report")
    return plan, prep, deadline, scoring


def _deadline(started: float, seconds: float, reserve: float) -> float:
    """When training must end: the budget less the final scoring's reserve, less 2% of the budget and 2 s for what
    the estimate misses (Python starting before imgclass is imported, and the report's variance: a 15-minute CIFAR
    run ended 6 s over its budget without the 2%; a 5-minute fine-tuning run 0.6 s over without the 2 s)."""
    return started + seconds - reserve - 0.02 * seconds - 2.0


def _choose_finetune(plan: RunPlan, prep: Prepared, top: top_stage.TopInputs | None, no_top: str,
                     device: torch.device, deadline: float, full_epoch: float, say: Callable[..., None]
                     ) -> tuple[RunPlan, int, float]:
    """--finetune auto (or top) under --time-budget: the top stage's epoch measured on its cached activations
    (no_top: why there are none) against full fine-tuning's (full_epoch), and the stage budget.choose_finetune
    picks, said in one line. Returns (the plan with that stage, its epochs, its estimated seconds an epoch)."""
    cfg = plan.cfg
    left = max(0.0, deadline - time.perf_counter())
    full_epochs = left / full_epoch
    top_epochs, top_epoch = None, 0.0
    if top is not None:
        forward = top_stage.TopForward(prep.model, top.split)
        x, y = top.train.images[:cfg.batch_size].float(), top.train.labels[:cfg.batch_size]
        top_epoch = (budget.step_seconds(forward, x, y, cfg, device, plan.task)[0] * len(top.train)
                     + budget.eval_seconds(forward, x, device) * len(top.val))
        top_epochs = left / top_epoch
    if cfg.finetune == "top":  # (_top_stage_inputs refused a top stage this run cannot have)
        stage, why = "top", "as --finetune top asks"
    else:
        stage, why = budget.choose_finetune(full_epochs, top_epochs, no_top)
        if stage == "head" and cfg.head_epochs < 1:  # no head stage to keep: what fits of full fine-tuning
            stage, why = "full", f"{why}, and --head-epochs 0 leaves no head stage to keep"
    views, views_text = 1, ""
    if stage == "top":  # the time its augmented views take comes out of its epochs
        augment = augment_from_config(cfg)
        view_seconds = (top.seconds * len(top.train) / max(1, len(top.train) + len(top.val))
                        + top_stage.augment_seconds(prep.data["train"].images, augment) * len(top.train))
        views = cfg.top_views or top_stage.views_that_fit(left, view_seconds, top.train.images.nbytes,
                                                          top.train.images.nbytes + top.val.images.nbytes, augment)
        top_epochs = max(0.0, left - (views - 1) * view_seconds) / top_epoch
        views_text = (f"; {views} views of each training image: --augment {cfg.augment} at the input, cached in "
                      f"~{(views - 1) * view_seconds:.0f}s" if views > 1 else "")
    epochs = {"full": math.ceil(full_epochs), "top": min(budget.TOP_MAX_EPOCHS, math.ceil(top_epochs or 0)),
              "head": 0}[stage]
    what = {"full": "full fine-tuning of the backbone", "top": "the top stage (the top blocks on cached activations "
            f"of the frozen bottom{views_text})", "head": "the head on frozen features alone"}[stage]
    say(f"time budget {cfg.time_budget}: {what}, {why}; --finetune full|top|head chooses")
    return plan.with_settings(finetune=stage, top_views=views), max(1, epochs) if stage != "head" else 0, \
        top_epoch if stage == "top" else full_epoch


def _check_room(deadline: float, started: float, decode_seconds: float, budget_text: str, per_epoch: float,
                reserve: float) -> None:
    """Stop with the reason when not one epoch fits in what the budget has left: training would stop at once
    and leave a model at chance (seen on a GPU: CIFAR-10 with --time-budget 60s, its JPEGs decoded cold in
    33 s of it, wrote a 10% model)."""
    now = time.perf_counter()
    if deadline - now >= max(per_epoch, 0.1):
        return
    raise UserError(f"--time-budget {budget_text}: {now - started:.0f} s of it went before training could start "
                    f"(decoding took {decode_seconds:.0f} s), and one epoch needs ~{per_epoch:.1f} s "
                    f"with {reserve:.0f} s kept for the final scoring: nothing would be trained. Give a longer budget; "
                    "the decoded images are cached now, so the next run starts training sooner.")


def _trainer_stage(plan: RunPlan, prep: Prepared, run: RunDir, dd, device: torch.device, console: Console,
                   fresh: bool, head: tuple[float, float] | None, deadline: float | None, extra_callbacks: list,
                   say: Callable[..., None], top: top_stage.TopInputs | None = None,
                   scoring: tuple[float, float] | None = None) -> Trainer:
    """The loop with its callbacks; resumed from the last checkpoint, or seeded with the head stage. top: the top
    stage's inputs, when it is the run's fine-tuning stage (the loop then trains the top blocks on them); scoring:
    the budget's reserve for the final scoring, which the loop re-measures (Trainer.scoring)."""
    cfg, main = plan.cfg, dd.main
    forward = None
    if top is not None:  # only the top's groups learn (layer-wise rates among them); the bottom stays frozen
        if (cfg.top_views or 1) > 1:
            started = time.perf_counter()
            train = top_stage.augmented_views(top.split, prep.data["train"], top.train, prep.pre,
                                              augment_from_config(cfg), cfg.top_views, max(cfg.batch_size, 256),
                                              device, use_bf16(cfg.precision, device), cfg.seed)
            say(f"top stage: {cfg.top_views - 1} augmented view(s) of {len(train)} training images cached in "
                f"{time.perf_counter() - started:.1f}s")
            top = dataclasses.replace(top, train=train)
        set_backbones_trainable(prep.model, False)
        optimizer = layerwise_optimizer(prep.model, top.split.groups, cfg.optimizer, plan.lr, plan.weight_decay,
                                        cfg.momentum, cfg.layer_lr_decay)
        prep = dataclasses.replace(prep, optimizer=optimizer, groups=top.split.groups,
                                   data={"train": top.train, "val": top.val, "test": prep.data["test"]})
        forward = top_stage.TopForward(prep.model, top.split)

    def header(t: Trainer) -> ModelHeader:  # what the best model and checkpoints are saved with
        return header_for(plan, t.pre, prep.weights_origin)
    callbacks = extra_callbacks + [BestModel(run.best, header, write=main)]
    callbacks += [Checkpoint(run.last, header), MetricsCSV(run.metrics)] if main else []
    callbacks += [Lookahead()] if cfg.lookahead else []
    callbacks += [EMA(cfg.ema)] if cfg.ema is not None else []
    callbacks += [EarlyStopping(cfg.patience)] if cfg.patience else []
    callbacks += [ReduceOnPlateau(cfg.plateau_patience, cfg.plateau_factor)] if cfg.schedule == "plateau" else []
    callbacks += [TensorBoard(run.tensorboard)] if cfg.tensorboard and main else []
    callbacks += [ProgressDisplay(console, say)] if cfg.verbose and main else []
    if prep.groups:  # which backbone groups learn each epoch, and which batch norms stay in inference mode
        callbacks.append(GradualUnfreeze(prep.groups, "all" if top else cfg.unfreeze, cfg.bn_stats_frozen))
    trainer = make_trainer(plan, prep, device, callbacks, deadline, dd,
                           forward or _train_forward(prep.model, cfg, dd, device, bool(prep.groups)),
                           cached_inputs=top is not None, scoring=scoring)
    if head is not None and not math.isnan(head[1]) and fresh:
        # the head stage's model is "epoch 0": fine-tuning must beat it on validation to replace it, so the
        # model file is never worse on val than the head on frozen features (a linear probe, in effect)
        trainer.start_from_head(head[1], fine_tuning=plan.cfg.epochs > 0)
        if main:
            save_model(run.best, prep.model, header(trainer))
    if not fresh:
        trainer.resume(*load_checkpoint(run.last, prep.model, prep.optimizer))
        say(f"resuming {run.path} after epoch {trainer.epoch}/{cfg.epochs}")
    if cfg.verbose and main:
        data, hits = prep.data, prep.cache_hits
        say(f"training {cfg.model} on {len(data['train'])} images ({plan.task.answering(plan.classes)}, {prep.pre.img_size}px, "
            f"{plan.found.layout}); val {len(data['val'])}, test {len(data['test'])}; device {device}"
            f"{' (bf16)' if trainer.bf16 else ''}{f'; {hits} split(s) from the cache' if hits else ''}; "
            f"run folder {run.path}")
    return trainer


def _fit_stage(plan: RunPlan, prep: Prepared, trainer: Trainer, dd, say: Callable[..., None]
               ) -> tuple[Preprocessing, dict[str, ImageTensors]]:
    """Each progressive-resizing phase in turn (one phase without it): the same files at the phase's size.
    Returns the last phase's preprocessing and splits."""
    pre, data = prep.pre, prep.data
    for i, (size, last_epoch) in enumerate(plan.phases):
        if trainer.epoch >= last_epoch or trainer.stop or trainer.epoch >= trainer.epochs:
            continue  # (a plan cut to the time budget's left can end before a later phase)
        phase_start = plan.phases[i - 1][1] if i else 0
        if size != trainer.pre.img_size:
            pre = dataclasses.replace(pre, img_size=size)
            say(f"progressive resizing: epochs {trainer.epoch + 1}-{last_epoch} at {size}px")
            data, _ = decode_splits(plan.split, pre, plan.cfg, say, None, dd)
            trainer.switch_phase(pre, data["train"], data["val"], reset_best=trainer.epoch == phase_start)
        trainer.fit(stop_at=last_epoch if i < len(plan.phases) - 1 else None)
    return pre, data


def _finalize_stage(plan: RunPlan, run: RunDir, trainer: Trainer, final: Prepared, head_seconds: float,
                    device: torch.device, dd, started: float, say: Callable[..., None]) -> Run:
    """Score the best weights on every split (final: the last phase's splits and preprocessing), write the model
    file and results.json, evaluate val and test."""
    cfg = plan.cfg
    best, _ = load_model(run.best, device)
    scoring_started = time.perf_counter()
    finished, feats = _score_splits(best, final.data, final.pre, cfg, device, say, plan.task)
    metrics, probs, calibration = finished.metrics, finished.outputs, finished.calibration
    scoring_seconds = round(time.perf_counter() - scoring_started, 2)  # the final scoring and calibration
    plan = dataclasses.replace(plan, task=finished.task)  # with what it decided on validation (tags: thresholds)
    facts = {"best_epoch": trainer.best_epoch, "epochs_run": trainer.epoch, "stop_reason": trainer.stop_reason,
             "train_seconds": round(sum(r["seconds"] for r in trainer.history), 2),
             "decode_seconds": round(final.decode_seconds, 2), "head_seconds": round(head_seconds, 2),
             "weights": final.weights_origin, "bad_files": len(final.bad), "device": str(device),
             "time_budget": cfg.time_budget, "processes": dd.world, "plan": trainer.plan, "calibration": calibration,
             "scoring_seconds": scoring_seconds}
    header = dataclasses.replace(header_for(plan, final.pre, final.weights_origin, {**metrics, **facts}, calibration),
                                 reject=_rejection(plan, feats, say))
    save_model(run.model, best, header)
    facts["data_notes"] = list(plan.notes)  # results.json only: the evaluation reports show them
    run.write_results({"metrics": metrics, **facts})
    result = Run(dir=run.path, config=cfg, classes=plan.classes, history=trainer.history, metrics=metrics,
                 task=plan.task)
    if cfg.evaluate:
        from ..evaluation.evaluate import evaluate  # deferred: evaluation imports matplotlib and the report
        # the model just scored, with the header just written: no second load from the file
        predictor = Predictor(best, header, device)
        report_seconds = {}  # each split's metrics, figures and report (the budget reserves time for them)
        for name in ("val", "test"):
            if len(final.data[name]):
                report_started = time.perf_counter()
                result.evaluations[name] = evaluate(run.path, split=name, predictor=predictor,
                                                    precomputed=(final.data[name], probs[name].numpy()))
                report_seconds[name] = round(time.perf_counter() - report_started, 2)
        facts["report_seconds"] = report_seconds
    facts["total_seconds"] = round(time.perf_counter() - started, 2)
    run.write_results({"metrics": metrics, **facts})
    dd.barrier()
    distributed.teardown()
    return result


# The head stage's learning rate is at least this (the fine-tuning rate, 10x lower, barely moves a fresh head).
# On frozen lite0 features of fashion_hier (25 classes, `python bench/transfer_stages.py RUN`, 2026-11-23): 30
# epochs at 3e-3 gave 95.7% val and 96.3% test, at 1e-3 95.0% val (same test); 10 epochs at 1e-3 (the old
# default) 94.1% val, 94.7% test.
HEAD_MIN_LR = 3e-3


def _train_head_stage(prep: Prepared, plan: RunPlan, device: torch.device, say, run: RunDir,
                      top: top_stage.TopInputs | None = None) -> tuple[float, float]:
    """Stage 1 of fine-tuning: backbone frozen, its features computed once (from the top stage's cached activations
    when there are some), the head trained on them. Returns (seconds, the head's validation accuracy)."""
    model, data, pre, cfg, lr, wd = prep.model, prep.data, prep.pre, plan.cfg, plan.lr, plan.weight_decay
    started = time.perf_counter()
    set_backbones_trainable(model, False)
    batch = max(cfg.batch_size, 256)
    bf16 = use_bf16(cfg.precision, device)
    val = data["val"]
    if top is not None:
        feats = forward_cached(top.split.top, top.train.images, batch, device, bf16)
        val_feats = forward_cached(top.split.top, top.val.images, batch, device, bf16) if len(val) else None
    else:
        feats = compute_features(model, data["train"].images, pre, batch, device, bf16)
        val_feats = compute_features(model, val.images, pre, batch, device, bf16) if len(val) else None
    say(f"stage 1: backbone features of {len(feats) + (len(val) if len(val) else 0)} images computed once "
        f"in {time.perf_counter() - started + (top.seconds if top else 0.0):.1f}s; training the head for "
        f"{cfg.head_epochs} epoch(s)")

    def log_row(row):
        if cfg.verbose:
            say(f"{row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
                f"val acc {row['val_acc']:.4f}  {row['seconds']:.2f}s")

    rows = train_head(plan.task, model, feats, data["train"].labels, val_feats, val.labels if len(val) else None,
                      cfg.head_epochs, max(lr, HEAD_MIN_LR), wd, cfg.label_smoothing, cfg.batch_size, cfg.seed, device,
                      log_row)
    run.write_rows(run.head_metrics, rows)
    set_backbones_trainable(model, True)
    # (with a top stage's cache, computing it was this stage's feature pass: its seconds count here)
    return time.perf_counter() - started + (top.seconds if top else 0.0), rows[-1]["val_acc"]


def _top_stage_inputs(plan: RunPlan, prep: Prepared, device: torch.device, say: Callable[..., None]
                      ) -> tuple[top_stage.TopInputs | None, str]:
    """(the frozen bottom's activations of train and val, ""), for a run that has (or may choose) a top stage; (None,
    why) when it cannot have one (--finetune top then stops with the reason)."""
    cfg, data = plan.cfg, prep.data
    if not prep.groups:
        return None, "no pretrained backbone"
    reason = top_stage.unavailable(prep.model, cfg, len(data["train"]) + len(data["val"]), prep.pre.img_size,
                                   len(plan.phases), processes=cfg.devices > 1 or distributed.launched_by_torchrun(),
                                   task=plan.task)
    if reason:
        if cfg.finetune == "top":
            raise UserError(f"--finetune top: {reason}")
        return None, reason
    started = time.perf_counter()
    split = top_stage.split_backbone(prep.model)
    bf16 = use_bf16(cfg.precision, device)
    train, val = (top_stage.bottom_activations(split, data[name], prep.pre, max(cfg.batch_size, 256), device, bf16)
                  for name in ("train", "val"))
    seconds = time.perf_counter() - started
    say(f"activations of the backbone's frozen bottom cached for {len(train) + len(val)} images "
        f"({tuple(train.images.shape[1:])}, bf16) in {seconds:.1f}s")
    return top_stage.TopInputs(split, train, val, seconds), ""


def _score_splits(model, data: dict[str, ImageTensors], pre: Preprocessing, cfg: TrainConfig,
                  device: torch.device, say: Callable[..., None], task: Task
                  ) -> tuple[Finished, dict[str, Any]]:
    """(the task's final scoring of the model: each split's metrics and outputs, the calibration and the task with
    what it decided on validation; the pooled features of the scored train sample and of val, from the same pass,
    for a task that can reject) of the final model, without augmentation and with its TTA. The train split is
    scored on a sample: it only shows over- or under-fitting."""
    logits: dict[str, torch.Tensor] = {}
    labels: dict[str, torch.Tensor] = {}
    feats: dict[str, Any] = {}
    for name in SPLITS:
        part = _to_score(data, name, cfg.seed, task)
        if len(part):  # (train and val's features: what the rejection's k-NN rule is made of)
            recorded = [] if name in ("train", "val") and task.supports("reject") else None
            logits[name] = predict_logits(model, part.images, pre, max(cfg.batch_size, 256), device, cfg.tta,
                                          features=recorded)
            labels[name] = part.labels
            if recorded:
                feats[name] = torch.cat(recorded).numpy()
                if name == "train":  # the bank keeps the classes' shares when it is cut to BANK_MAX
                    feats["train_strata"] = _strata(task, part.labels)
    return task.finish(logits, labels, cfg.calibrate, cfg.threshold, say), feats


def _strata(task: Task, labels: torch.Tensor):
    """The task's strata (its label kind's) of a split's label tensor (a tag row becomes a tuple)."""
    return task.label_kind.strata([tuple(x) if isinstance(x, list) else x for x in labels.tolist()])


def _to_score(data: dict[str, ImageTensors], name: str, seed: int, task: Task) -> ImageTensors:
    """A split to score at the end: the whole of val and test; of train a seeded sample (train_score_n), which
    shows over- or under-fitting as well as the whole would, at a fraction of the time (and of the budget). The
    sample is stratified as the task's labels are (each class keeps at least REJECT_K images where it has them):
    the rejection's training embeddings come from it, and a class with fewer than REJECT_K of them there would
    always find its k-th neighbour in another class, and be rejected more often."""
    part = data[name]
    if name == "train" and len(part) > (sample := train_score_n(len(part), len(data["val"]))):
        keep = torch.from_numpy(stratified_sample(_strata(task, part.labels), sample, REJECT_K, seed))
        part = ImageTensors(images=part.images[keep], labels=part.labels[keep],
                            paths=[part.paths[i] for i in keep.tolist()])
    return part


def _rejection(plan: RunPlan, feats: dict[str, Any], say: Callable[..., None]) -> Rejection | None:
    """ "None of these": the training embeddings (a sample) and the threshold on an image's similarity to its k-th
    nearest one that accepts --reject-acceptance of the validation images (models/reject.py); None without a
    validation split, or for a task that cannot reject (several tags per image: no tag above its threshold
    already means none)."""
    if "val" not in feats or "train" not in feats:
        return None
    rejection = Rejection.fit(feats["val"], feats["train"], plan.cfg.reject_acceptance, plan.cfg.seed,
                              feats.get("train_strata"))
    say(f"rejection (predict --reject): {rejection.describe()}")
    return rejection


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
    return Run(dir=run.path, config=config_mod.resolve(run.config), classes=list(header.classes),
               history=run.read_history(), metrics=run.read_results()["metrics"], task=header.task)


def launch_workers(run_dir: Path, devices: int) -> int:
    """`--devices N` on one machine: torchrun N processes (training/worker.py) that start the prepared run folder."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}",
           "-m", "imgclass.training.worker", str(run_dir)]
    # the workers start the prepared folder from its config: a fresh start (weights loaded, head stage run),
    # not the continuation of a checkpoint
    return subprocess.run(cmd, env={**os.environ, distributed.FRESH_START_ENV: "1"}).returncode


def summary_lines(run: Run) -> list[str]:
    parts = [run.task.split_line(name, m) for name, m in run.metrics.items()]
    lines = ["; ".join(parts), f"model: {run.model_path}"]
    if "test" in run.evaluations:
        lines.append(f"report: {run.evaluations['test'].dir / 'report.html'}")
    return lines
