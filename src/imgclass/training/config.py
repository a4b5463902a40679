"""Every training default in one typed place, and the single merge of
defaults < config file < command line (or Python keyword arguments).

Unknown keys are rejected with a suggestion; the resolved configuration is saved
as ``RUN/config.yaml`` so a run can be repeated or resumed from its folder alone.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints, Union
import types

import yaml

from ..core.errors import UserError
from ..data.defaults import SPLIT_SEED, TEST_SPLIT, VAL_SPLIT
from ..core.files import write_text_atomic


@dataclass
class TrainConfig:
    # --- data -----------------------------------------------------------------
    data: str | None = None          # image folder: DATA/<class>/*, DATA/{train,val,test}/<class>/*, or images for --labels
    labels: str | None = None        # Kaggle-style CSV (id/file column + label column); ids resolve to files in DATA by stem
    id_column: str | None = None     # CSV column naming the image (default: auto-detect id/file/filename/image/path)
    label_column: str | None = None  # CSV column holding the class (default: auto-detect label/class/target/category)
    hierarchy: bool = False          # two-level labels from nested folders DATA/<coarse>/<fine>/*
    label_columns: str | None = None  # two-level labels from the CSV: "coarse,fine" columns, e.g. phylum,family
    hierarchy_strategy: Literal["flat", "two-stage", "multi-head"] = "flat"  # how two-level labels are learnt (see docs/tasks.md)
    multi_label: bool = False        # several tags per image: a CSV column of tag lists (--label-column), or DATA/<tag>/* copies
    tag_columns: str | None = None   # several tags per image from 0/1 (or attribute) CSV columns: "A,B,C" or a range "A:D"
    threshold: float | None = None   # several tags per image: one decision threshold for every tag (default: chosen per tag on validation)
    regression: bool = False         # a number per image (age, price, a count): --labels CSV whose --label-column holds numbers
    exclude: str | None = None       # a file of images to leave out (a CSV with a path column, e.g. check's label_issues.csv, or one path per line)
    relabel: str | None = None       # a CSV path,label of corrected labels (paths relative to DATA); the files stay where they are
    val_split: float = VAL_SPLIT     # share of each class held out for validation when no val folder is given
    test_split: float = TEST_SPLIT   # share of each class held out for the final test when no test folder is given
    seed: int = SPLIT_SEED           # seeds the split, initialisation, shuffling, augmentation and dropout
    # --- images ---------------------------------------------------------------
    img_size: int | str | None = None  # square input side in pixels (default: from the model/data); "150,299": progressive resizing
    resize: Literal["crop", "pad", "stretch"] = "crop"  # crop: short side then centre crop; pad: long side then pad; stretch: ignore aspect
    augment: Literal["none", "light", "strong", "rand"] = "light"  # light: flip + translate; strong: + zoom, rotation, brightness/contrast; rand: light + RandAugment (2 ops, magnitude 9)
    hflip: bool = True               # allow horizontal flips in augmentation (turn off for digits/text)
    hflip_mode: Literal["random", "alternate"] = "random"  # alternate: each image flipped every other epoch (airbench)
    translate: float | None = None   # largest random shift as a share of the side (default: the --augment preset's, 0.125); also --shift
    rotate: float | None = None      # random rotation up to +/- this many degrees, on top of any preset (strong: 10)
    zoom: float | None = None        # random zoom up to +/- this fraction (0.2: 0.8x to 1.2x; strong: 0.15)
    shear: float | None = None       # random shear up to +/- this many degrees
    brightness: float | None = None  # random brightness factor within 1 +/- this (strong: 0.2)
    contrast: float | None = None    # random contrast factor within 1 +/- this (strong: 0.2)
    mixup: float | None = None       # mix each training image with another (lambda ~ Beta(A, A)) and their labels alike; e.g. 0.2
    cutmix: float | None = None      # paste a patch of another image, labels mixed by area (Beta(A, A)); e.g. 1.0; with mixup: one of the two per batch
    vflip: bool = False              # also flip upside down at random (aerial or microscope images, not photos)
    cutout: float | None = None      # blank a random square per image, its side this share of the image's (airbench96: 12/32 = 0.375); the fast model's long recipe sets it
    calibrate: bool = True           # fit a softmax temperature on the validation split after training, so probabilities mean what they say
    reject_acceptance: float = 0.95  # "none of these": the share of validation images the stored rejection threshold accepts (predict --reject)
    tta: Literal["none", "flip", "flip_translate"] = "none"  # test-time augmentation, stored with the model and used by every command
    # --- model ----------------------------------------------------------------
    model: str = "auto"              # auto (= fast, sized from the data), a name from `imgclass models`, or torchvision:NAME / timm:NAME
    model_args: dict = field(default_factory=dict)  # architecture arguments, e.g. {width: 64, depth: 3} for resnet
    activation: Literal["relu", "leaky_relu", "gelu"] | None = None  # built-in networks' activation (default: theirs: relu; fast: gelu)
    dropout: float = 0.0             # dropout, once each: on the features before the classifier, or with --head after each hidden layer
    head: str | None = None          # dense layers before the classifier, e.g. "256,128"
    # --- transfer learning ------------------------------------------------------
    pretrained: bool = False         # start from the published weights (timm / torchvision; hub cache, no download offline)
    weights: str | None = None       # start from a local file: .safetensors/.pth state dict, or an imgclass model file
    head_epochs: int = 30            # with weights: stage 1, the head alone on cached backbone features (no augmentation; ms an epoch)
    finetune: Literal["auto", "full", "top", "head"] = "auto"  # stage 2: full (the whole backbone, see unfreeze), top (its top blocks on cached activations of the frozen bottom: ~5x faster epochs), head (none: the head stage's model); auto: --time-budget picks by the epochs that fit, else full
    top_views: int | None = None     # stage 2 top: augmented views of each training image (the --augment preset at the input; each view's bottom activations cached once, one drawn per image and epoch); default: --time-budget chooses, else 1
    unfreeze: Literal["gradual", "all", "none"] = "gradual"  # stage 2: unfreeze from the top one group at a time, all at once, or never
    layer_lr_decay: float = 0.7      # stage 2: each backbone group below the head learns this much slower
    bn_stats_frozen: bool = True     # stage 2: backbone batch norms keep their pretrained statistics (scale/shift still learn)
    # --- optimisation ---------------------------------------------------------
    epochs: int = 20                 # passes over the training split
    batch_size: int = 128            # images per step
    optimizer: Literal["adamw", "sgd", "adam", "rmsprop"] = "adamw"  # sgd: Nesterov momentum; adam: L2 in the gradient; rmsprop: Keras's rho 0.9
    lr: float | None = None          # peak learning rate (default: the model's default for the optimizer)
    weight_decay: float | None = None  # default: DEFAULT_WEIGHT_DECAY (0.05 for AdamW, 5e-4 for SGD)
    momentum: float = 0.9            # SGD momentum (Nesterov)
    schedule: Literal["cosine", "onecycle", "plateau"] = "cosine"  # after warm-up: cosine to zero, or onecycle (linear up 25%, linear down), or plateau (constant, cut when validation loss stalls)
    plateau_patience: int = 2        # plateau: epochs without a lower validation loss before the rate is cut (Keras's meaning)
    plateau_factor: float = 0.5      # plateau: what each cut multiplies the rate by
    warmup_epochs: float = 1.0       # linear warm-up length (cosine schedule)
    label_smoothing: float = 0.1     # cross-entropy label smoothing
    ema: float | None = None         # keep an exponential moving average of the weights with this decay (e.g. 0.999) and use it for validation and the model file
    lookahead: bool = False          # every 5 steps reset the weights to their running average, pulled harder near the end (airbench)
    class_weights: Literal["none", "auto"] = "none"  # auto: weight the loss by n / (classes * count) (scikit-learn's "balanced")
    balanced_sampler: bool = False   # draw training images with probability 1/count of their class (with replacement)
    patience: int | None = None      # early stopping: epochs without val-accuracy gain before stopping (None = off)
    time_budget: str | None = None   # e.g. 10m, 90s, 1h: epochs chosen from a measured step time; ends (with evaluation) in time
    # --- speed ----------------------------------------------------------------
    cache: bool = True               # keep decoded images in a memory-mapped cache (second run and epoch: no decoding)
    cache_dir: str | None = None     # default: $IMGCLASS_CACHE_DIR or ~/.cache/imgclass
    stream: bool = False             # decode every epoch in worker processes, no cache (automatic when the cache would not fit on disk)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # training arithmetic; auto: bf16 on a GPU or a CPU with native bf16 (AVX512-BF16/AMX)
    compile: bool = False            # torch.compile the model for training (slow to start, faster steps on long runs)
    # --- run ------------------------------------------------------------------
    out: str | None = None           # run folder (default: a new runs/train-N)
    device: str = "auto"             # auto (CUDA when present, else CPU), cpu, cuda, cuda:1
    devices: int = 1                 # processes for data-parallel training on this machine (torchrun; gloo on CPU, NCCL on GPUs)
    workers: int = 0                 # threads decoding images (0 = one per CPU core)
    max_image_pixels: int = 89_478_485  # images claiming more pixels are refused from the header (Pillow's bomb limit)
    tensorboard: bool = True         # write TensorBoard event files to RUN/tensorboard
    track: Literal["none", "mlflow", "wandb"] = "none"  # also send the config, every epoch's metrics, the final metrics, report, figures and model file to MLflow ($MLFLOW_TRACKING_URI, else a local store in ./mlruns) or W&B (offline without an API key); extras mlflow, wandb
    callback: str | None = None      # your callbacks: module:Class or file.py:Class (comma-separated), imgclass.Callback subclasses built with no arguments; they receive every event
    evaluate: bool = True            # after training, write the full evaluation of val and test to RUN/eval/<split>/
    verbose: bool = True             # progress bar and per-epoch lines


FIELD_NAMES = [f.name for f in fields(TrainConfig)]


def _check_type(name: str, value: Any, hint: Any) -> Any:
    """Coerce a YAML/CLI value to the field's type, or raise a clear UserError."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _check_type(name, value, opt)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if errors else f"{name}: invalid value {value!r}")
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise UserError(f"{name} must be one of {', '.join(map(str, allowed))}, not {value!r}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UserError(f"{name} must be true or false, not {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise UserError(f"{name} must be an integer, not {value!r}")
        try:
            return int(value)
        except ValueError:
            raise UserError(f"{name} must be an integer, not {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise UserError(f"{name} must be a number, not {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UserError(f"{name} must be a number, not {value!r}") from None
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, os.PathLike):  # a pathlib.Path for out, labels, weights... (the YAML gets a string)
            return os.fspath(value)
        raise UserError(f"{name} must be a string, not {value!r}")
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{name} must be a mapping, not {value!r}")
        return dict(value)
    return value


_HINTS = get_type_hints(TrainConfig)


def unknown_key_message(key: str, source: str) -> str:
    close = difflib.get_close_matches(key, FIELD_NAMES, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown config key '{key}' in {source}{hint}; valid keys: see `imgclass train --help`"


def validate(overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """Check names and types of a partial configuration; return the coerced values."""
    clean = {}
    for key, value in overrides.items():
        key = key.replace("-", "_")
        if key not in _HINTS:
            raise UserError(unknown_key_message(key, source))
        clean[key] = _check_type(key, value, _HINTS[key])
    return clean


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise UserError(f"config file {path} must hold a mapping of option: value")
    return content


def explicit_values(config_file: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """The values a user set: config file, then overrides (command line or Python keywords) on top."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(validate(load_yaml(config_file), str(config_file)))
    values.update(validate(dict(overrides), "the options"))
    return values


def resolve(config_file: str | Path | None = None, recipe: dict[str, Any] | None = None, **overrides: Any) -> TrainConfig:
    """defaults < the model's recipe < config file < overrides (command line or Python keywords)."""
    values = {**validate(recipe or {}, "the model recipe"), **explicit_values(config_file, **overrides)}
    cfg = TrainConfig(**values)
    check_ranges(cfg)
    return cfg


def parse_duration(text: str | None) -> float | None:
    """'90s', '10m', '1h30m', '2.5h', '30d' or plain seconds -> seconds."""
    import re
    if text is None:
        return None
    t = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([dhms])", t)
    if not parts or "".join(n + u for n, u in parts) != t.replace(" ", ""):
        raise UserError(f"cannot read the duration '{text}' (use e.g. 90s, 10m, 1h30m, 30d)")
    return sum(float(n) * {"d": 86400, "h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def check_ranges(cfg: TrainConfig) -> None:
    if cfg.epochs < 1:
        raise UserError("epochs must be at least 1")
    if cfg.batch_size < 1:
        raise UserError("batch_size must be at least 1")
    if cfg.top_views is not None and not 1 <= cfg.top_views <= 16:
        raise UserError("top_views must be between 1 and 16")
    sizes = img_sizes(cfg.img_size)
    if sizes is not None and not all(1 <= s <= 4096 for s in sizes):
        raise UserError("img_size must be between 1 and 4096 pixels")
    if sizes is not None and len(sizes) > cfg.epochs:
        raise UserError(f"progressive resizing over {len(sizes)} sizes needs at least {len(sizes)} epochs")
    for name in ("val_split", "test_split"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise UserError(f"{name} must be in [0, 1)")
    if cfg.val_split + cfg.test_split >= 1.0:
        raise UserError("val_split + test_split must leave images for training (sum < 1)")
    if cfg.lr is not None and cfg.lr <= 0:
        raise UserError("lr must be positive")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError("dropout must be in [0, 1)")
    for name, top in (("rotate", 180.0), ("shear", 45.0), ("zoom", 1.0), ("brightness", 1.0), ("contrast", 1.0),
                      ("translate", 0.5), ("cutout", 1.0)):
        value = getattr(cfg, name)
        if value is not None and not 0.0 <= value < top:
            raise UserError(f"{name} must be in [0, {top:g}), not {value:g}")
    for name in ("mixup", "cutmix"):
        if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
            raise UserError(f"{name} takes a Beta distribution's alpha > 0, e.g. 0.2 (leave it out to turn it off)")
    if cfg.ema is not None and not 0.0 < cfg.ema < 1.0:
        raise UserError("ema must be a decay in (0, 1), e.g. 0.999")
    if cfg.plateau_patience < 1 or not 0.0 < cfg.plateau_factor < 1.0:
        raise UserError("plateau_patience must be at least 1 and plateau_factor in (0, 1)")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise UserError("label_smoothing must be in [0, 1)")
    if not 0.0 < cfg.reject_acceptance <= 1.0:
        raise UserError("reject_acceptance must be in (0, 1], e.g. 0.95")
    if cfg.time_budget is not None and (parse_duration(cfg.time_budget) or 0) <= 0:
        raise UserError("time_budget must be positive")
    if cfg.patience is not None and cfg.patience < 1:
        raise UserError("patience must be at least 1 (leave it unset to turn early stopping off)")


def img_sizes(value: int | str | None) -> list[int] | None:
    """img_size as a list: 32 -> [32]; "150,299" -> [150, 299] (progressive resizing); None -> None."""
    if value is None:
        return None
    try:
        sizes = [int(v) for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"img_size takes a size or sizes like 150,299, not '{value}'") from None
    if not sizes:
        raise UserError("img_size is empty")
    return sizes


def phase_epochs(epochs: int, n: int) -> list[int]:
    """Epochs per progressive-resizing phase: as equal as possible, later phases get the remainder."""
    base = [epochs // n] * n
    for i in range(epochs % n):
        base[n - 1 - i] += 1
    return base


# Defaults that depend on other settings, so they cannot sit on a field above:
DEFAULT_WEIGHT_DECAY = {"adamw": 0.05, "sgd": 5e-4,  # by optimizer, when weight_decay is not set
                        "adam": 0.0, "rmsprop": 0.0}  # (Keras's defaults for these two: no L2)
TRANSFER_LR_FACTOR = 0.1  # fine-tuning (--pretrained, --weights) starts from the model's default lr times this
MIN_STEPS_PER_EPOCH = 8   # a recipe's batch (fast: 1024, for CIFAR) shrinks so a small folder gets this many steps


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save(cfg: TrainConfig, path: Path) -> None:
    """Written once, when the run folder is made (atomically: --resume reads it back). Choices made later
    from the data or the clock (batch size, epochs under a budget...) go to the checkpoint and results.json."""
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
