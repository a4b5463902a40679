"""The one place a run is decided: `plan_run` turns data, a config file and options (or a run folder to
resume) into a frozen RunPlan. train, lr-find and tune all start from it, so they cannot drift apart.

Decided here, in order: the files and their split, the model (`auto`, `--weights RUN`) and input size,
defaults < the model's recipe (or the fine-tuning recipe) < config file < options, progressive-resizing
phases, the architecture arguments, the batch size for a small folder and its learning rate, weight
decay. A resumed run gets back what its checkpoint recorded. `--time-budget` needs a measured step, so
the budget planner (budget.py) later returns a new plan with its epochs; nothing edits a plan.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import config as config_mod
from .config import TrainConfig
from ..data.edits import apply_edits
from ..data.find import Found
from ..data.labels import LabelSource, kind_of_options
from ..data.split import Split, leave_out_untrained, make_split, read_splits
from ..core.errors import UserError
from ..models.modelfile import read_header
from ..models import get_spec
from ..models.header import Architecture
from ..models.tasks import Task, task_for_data
from ..models.spec import ModelSpec
from ..core.rundir import RunDir
from .stages.auto import resolve_new_run
from .loop.distributed import launched_by_torchrun
from .stages.top_stage import settings_reason


# The settings a run decides beyond config.yaml (the budget's epochs and stage, the recipe's width and augmentation),
# saved in checkpoints and results.json (RunPlan.record) and given back to a resumed run.
RECORDED_SETTINGS = ("epochs", "batch_size", "model_args", "finetune", "translate", "cutout", "top_views")


@dataclass(frozen=True)
class RunPlan:
    cfg: TrainConfig                      # every setting, resolved (cfg.lr/batch_size as decided below)
    found: Found                    # the files, classes and layout found
    split: Split                          # train/val/test (saved as splits.csv; read back on resume)
    spec: ModelSpec                       # the model's registry entry
    phases: tuple[tuple[int, int], ...]   # (input size, last epoch of the phase): one phase, or progressive resizing
    arch: Architecture                    # name, args, dropout: builds the model (and is saved with it)
    task: Task                            # the label structure (models/task.py): one class per image, two-level...
    lr: float                             # peak learning rate
    weight_decay: float
    transfer: bool                        # starts from --pretrained or --weights weights
    resume: RunDir | None = None          # the run folder being continued
    normalisation: tuple[tuple, tuple] | None = None  # resumed: the (mean, std) it trained with, exactly
    notes: tuple[str, ...] = ()           # warnings for the user (split, batch size)
    explicit: frozenset[str] = frozenset()  # the settings the user gave (options, config file): planners leave them

    @property
    def classes(self) -> list[str]:
        return self.split.classes

    @property
    def record(self) -> dict[str, Any]:
        """What the run decided beyond config.yaml, saved in checkpoints and results.json for --resume."""
        return {"lr": self.lr, **{k: getattr(self.cfg, k) for k in RECORDED_SETTINGS}}

    def with_settings(self, **settings: Any) -> "RunPlan":
        """The plan with a planner's settings (the fine-tuning stage, the long recipe's augmentation): a new plan."""
        return dataclasses.replace(self, cfg=dataclasses.replace(self.cfg, **settings))

    def with_epochs(self, epochs: int, width: int | None = None) -> "RunPlan":
        """The plan with the budget planner's epochs (and width): a new plan."""
        if width is None:
            return dataclasses.replace(self, cfg=dataclasses.replace(self.cfg, epochs=epochs))
        cfg = dataclasses.replace(self.cfg, epochs=epochs, model_args={**self.cfg.model_args, "width": width})
        return dataclasses.replace(self, cfg=cfg, arch=self.arch.with_args(width=width))


def plan_run(data: str | Path | None = None, config: str | Path | None = None, resume: str | Path | None = None,
             started: float | None = None, say: Callable[[str], None] | None = None, split: Split | None = None,
             **options: Any) -> RunPlan:
    """The plan of a new run (data, config file, options) or of the run folder `resume` continues.
    split: these train/val/test files instead of the seeded split (a fold of cross-validation); it must be
    of the same data (its classes are checked)."""
    if resume is not None:
        run = RunDir(Path(resume).expanduser())
        if not run.is_run():
            raise UserError(f"cannot resume: {run.path} has no config.yaml (is it a run folder?)")
        if options or config or data:
            raise UserError("--resume continues a run with its saved config.yaml; do not pass other options")
        cfg = config_mod.resolve(run.config)
        found = _find(vars(cfg), edits=False)  # splits.csv holds the edited labels and the excluded images
        split, notes, explicit = read_splits(run.splits, found.root, found.classes, found.kind), [], None
    else:
        run = None
        if data is not None:
            options["data"] = str(data)
        explicit = config_mod.explicit_values(config, **options)
        if explicit.get("data") is None:
            raise UserError("no data folder given: imgclass train DATA")
        found = _find(explicit)
        cfg = resolve_new_run(found, explicit, options, config, started, say)
        if split is None:
            split, notes = make_split(found, cfg.val_split, cfg.test_split, cfg.seed)
        elif not set(split.classes) <= set(found.classes):  # a fold of a plan's split: its classes, maybe fewer
            raise UserError("the given split's classes are not those of the data")
        else:
            notes = []
    split, left_out = leave_out_untrained(split, two_level=bool(found.parents))  # the same on --resume
    return _decide(cfg, found, split, explicit, run, list(notes) + left_out)


def _find(values: dict[str, Any], edits: bool = True) -> Found:
    """The images and their labels, of the kind the options ask for (data/labels.py: tags with --multi-label or
    --tag-columns, a number with --regression, else one class or two levels); with edits, less --exclude's images
    and with --relabel's labels."""
    kind = kind_of_options(values.get("multi_label") or False, values.get("tag_columns"),
                           values.get("regression") or False)
    found = kind.find(LabelSource(values["data"], values.get("labels"), values.get("id_column"),
                                  values.get("label_column"), values.get("tag_columns"),
                                  values.get("hierarchy") or False, values.get("label_columns")))
    return apply_edits(found, values.get("exclude"), values.get("relabel")) if edits else found


def _decide(cfg: TrainConfig, found: Found, split: Split, explicit: dict | None, run: RunDir | None,
            notes: list[str]) -> RunPlan:
    """Everything that follows from the resolved config and the split."""
    task = task_for_data(found, split, cfg)
    task.refuse(cfg, processes=cfg.devices > 1 or launched_by_torchrun())
    if run is None:  # the task's own defaults, where the user chose nothing (a resumed run keeps its config)
        chosen = {k: v for k, v in task.default_settings(cfg).items() if k not in explicit and getattr(cfg, k) != v}
        if chosen:
            cfg = dataclasses.replace(cfg, **chosen)
            notes.append(task.defaults_note(chosen))
    if cfg.ema is not None and cfg.lookahead:  # both average the weights; the user's explicit choice wins
        if explicit is not None and "lookahead" in explicit:
            raise UserError("--ema and --lookahead both average the weights: use one of them")
        cfg = dataclasses.replace(cfg, lookahead=False)
        notes.append(f"--ema replaces the {cfg.model} recipe's lookahead")
    if cfg.schedule == "plateau" and not split.items["val"]:
        raise UserError("--schedule plateau cuts the rate when validation loss stalls: it needs a validation split")
    spec = get_spec(cfg.model)
    sizes = config_mod.img_sizes(cfg.img_size) or [spec.default_img_size]
    transfer = cfg.pretrained or cfg.weights is not None
    cfg = _finetune_stage(cfg, transfer, len(sizes), processes=cfg.devices > 1 or launched_by_torchrun(), task=task)
    phases, end = [], 0
    for size, n in zip(sizes, config_mod.phase_epochs(cfg.epochs, len(sizes))):
        end += n
        phases.append((size, end))
    if min(sizes) < spec.min_img_size:
        raise UserError(f"model '{cfg.model}' needs inputs of at least {spec.min_img_size} px, not {min(sizes)} "
                        f"(--img-size)")
    lr = cfg.lr if cfg.lr is not None else spec.lr_for(cfg.optimizer) * (
        config_mod.TRANSFER_LR_FACTOR if transfer else 1.0)
    recorded = _recorded(run) if run is not None else None
    if recorded is not None:  # a resumed run: what its checkpoint says it decided
        fields = {k: recorded[k] for k in RECORDED_SETTINGS if k in recorded}
        cfg, lr = dataclasses.replace(cfg, **fields), recorded.get("lr", lr)
    elif run is None and "batch_size" not in explicit and spec.recipe.get("batch_size"):
        cfg, lr = _small_folder_batch(cfg, lr, len(split.items["train"]), notes)
    args = _arch_args(cfg, spec, sizes[0], len(phases))
    wd = cfg.weight_decay if cfg.weight_decay is not None else config_mod.DEFAULT_WEIGHT_DECAY[cfg.optimizer]
    return RunPlan(cfg=cfg, found=found, split=split, spec=spec, phases=tuple(phases),
                   arch=Architecture(cfg.model, args, cfg.dropout), task=task, lr=lr,
                   weight_decay=wd, transfer=transfer, resume=run, notes=tuple(notes), explicit=frozenset(explicit or ()),
                   normalisation=(recorded["mean"], recorded["std"]) if recorded and "mean" in recorded else None)


def _finetune_stage(cfg: TrainConfig, transfer: bool, phases: int, processes: bool, task: Task | None = None
                    ) -> TrainConfig:
    """--finetune checked against the other options and the task; `auto` without --time-budget is full fine-tuning
    (with a budget the planner decides once it has measured a step: budget.choose_finetune)."""
    if cfg.finetune == "top" and (why := settings_reason(cfg, transfer, phases, processes, task)):
        raise UserError(f"--finetune top: {why}")
    if cfg.finetune == "head" and (not transfer or cfg.head_epochs < 1):
        raise UserError("--finetune head keeps the head stage's model: it needs --pretrained or --weights, and "
                        "--head-epochs of at least 1")
    if cfg.finetune == "auto" and (cfg.time_budget is None or not transfer):
        return dataclasses.replace(cfg, finetune="full")
    return cfg


def _small_folder_batch(cfg: TrainConfig, lr: float, n_train: int, notes: list[str]) -> tuple[TrainConfig, float]:
    """A recipe batch (fast: 1024, for CIFAR's 45,000 images) would leave a small folder a few steps an
    epoch: keep at least MIN_STEPS_PER_EPOCH, and scale a recipe lr linearly with the batch (the usual
    SGD rule). A batch size the user chose is kept."""
    cap = max(16, 2 ** int(math.log2(max(1, n_train // config_mod.MIN_STEPS_PER_EPOCH))))
    if cfg.batch_size <= cap:
        return cfg, lr
    if cfg.lr is None:
        lr *= cap / cfg.batch_size
    notes.append(f"batch size {cfg.batch_size} -> {cap} for {n_train} training images (lr {lr:.3g})")
    return dataclasses.replace(cfg, batch_size=cap, lr=lr if cfg.lr is None else cfg.lr), lr


def _arch_args(cfg: TrainConfig, spec: ModelSpec, img_size: int, n_phases: int) -> dict[str, Any]:
    args = dict(cfg.model_args)
    if cfg.head:
        try:
            args["head"] = [int(v) for v in str(cfg.head).split(",") if v.strip()]
        except ValueError:
            raise UserError(f"--head takes layer widths like 256,128, not '{cfg.head}'") from None
    if cfg.activation is not None:
        if "activation" not in inspect.signature(spec.build).parameters:
            raise UserError(f"--activation is for imgclass's own networks (mlp, cnn, resnet, fast), not '{cfg.model}'")
        args["activation"] = cfg.activation
    if "img_size" in inspect.signature(spec.build).parameters:
        if n_phases > 1:
            raise UserError(f"model '{cfg.model}' is built for one input size: no progressive resizing")
        args.setdefault("img_size", img_size)
    return args


def _recorded(run: RunDir) -> dict[str, Any] | None:
    """The plan a run's last checkpoint recorded (with the normalisation it trained with), or None when
    there is no checkpoint yet (a folder prepared for --devices workers)."""
    if not run.last.is_file():
        return None
    header = read_header(run.last)
    recorded = dict((header.loop or {}).get("plan") or {})
    recorded["mean"], recorded["std"] = header.preprocessing.mean, header.preprocessing.std
    return recorded
