"""The top stage of fine-tuning: only the top blocks of a pretrained backbone learn, on activations of its
frozen bottom computed once (bf16) and flipped at random each epoch.

Why: on two CPU cores full fine-tuning of EfficientNet-Lite0 at 224 px runs ~20 images/s, so a 5-minute
budget on fashion_hier (2,577 training images) fits about 1.5 epochs and only matched the head on frozen
features (95.96% test). The top two stages and the head conv train ~5x faster on cached maps, and five
epochs of them reached 97.2% test in ~170 s (bench/transfer_stages.py, machine A, 2026-11-23).

The split is exact, not approximate: bottom then top is the backbone's own forward (tests pin it), the
bottom's parameters never change during the stage, and the model file is the whole network.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from ...data.augment import BatchAugment
from ...data.images import ImageTensors
from ...data.preprocess import Preprocessing
from ...models.inference import scoring_batch
from .transfer import classifiers

# Stages of the backbone's `blocks` trained on the cached maps (with conv_head and bn2 above them). Two of
# EfficientNet-Lite's seven: the cut sits at 14 x 14 (224 px input), where the maps are small (112 channels,
# 44 KB an image in bf16) and the top holds most of the parameters (fashion: 97.2% test against 96.3% for
# the head alone; bench/transfer_stages.py).
TOP_BLOCKS = 2
# Most of the machine's memory the cached maps may take; beyond it the top stage is not offered.
CACHE_MEMORY_SHARE = 0.25
# Augmented views of each training image (issue 41, item 2): the maps were cached once from the plain images, so the
# top stage saw flips only and dropped the --augment preset's shift (and zoom, rotation, cutout) without a word, and
# over-fitted (train accuracy 0.998-1.0 from its start). Each extra view is the training split under one random draw
# of the run's augmentation at the input, through the bottom once; the loop draws one view per image and epoch.
# Under --time-budget at most VIEW_TIME_SHARE of the top stage's time goes to extra views, at most MAX_VIEWS in all.
MAX_VIEWS = 4
VIEW_TIME_SHARE = 0.35


@dataclass(frozen=True)
class TopSplit:
    """A backbone cut in two: `bottom` (frozen; its output is cached) and `top` (trained), sharing the
    backbone's own modules, so training `top` trains the model."""
    bottom: nn.Module
    top: nn.Module
    groups: list[nn.Module]    # the top's parameter groups, input side first (layer-wise learning rates)


@dataclass(frozen=True)
class TopInputs:
    """What the top stage trains on: the split and the frozen bottom's activations of train and val."""
    split: TopSplit
    train: ImageTensors        # images: bf16 activations, N x C x h x w
    val: ImageTensors
    seconds: float             # what computing them took


def settings_reason(cfg, transfer: bool, phases: int, processes: bool, task=None) -> str:
    """Why the run's settings (or its task: models/tasks, Task.unsupported["top_stage"]) rule out a top stage (""
    when they do not): known before anything is decoded."""
    if task is not None and not task.supports("top_stage"):
        return task.unsupported["top_stage"]
    return ("it fine-tunes pretrained weights: add --pretrained or --weights" if not transfer
            else "it trains on activations cached once, which several processes would not share" if processes
            else "--mixup/--cutmix mix images, not the cached activations" if cfg.mixup or cfg.cutmix
            else "the activations are cached at one input size (no progressive resizing)" if phases > 1
            else "")


def unavailable(model: nn.Module, cfg, n_images: int, img_size: int, phases: int, processes: bool, task=None) -> str:
    """Why this run cannot have a top stage ("" when it can): its settings and task, its model, the memory it would
    take."""
    if reason := settings_reason(cfg, True, phases, processes, task):
        return reason
    split = split_backbone(model)
    if split is None:
        return "it is built for one timm EfficientNet backbone (EfficientNet-Lite), not this model"
    nbytes = cache_bytes(n_images, model, split, img_size)
    if not fits_in_memory(nbytes):
        return (f"the activations of {n_images} images would take {nbytes / 2**30:.1f} GiB, over "
                f"{CACHE_MEMORY_SHARE:.0%} of this machine's memory")
    return ""


class _Top(nn.Module):
    """The backbone from the cut to its pooled features: timm EfficientNet's forward_features from block `cut` on,
    then its own forward_head (pooling, its dropout; no classifier). It holds the backbone itself, so eval() and
    train() reach the pooling's dropout too; its trained parameters are TopSplit.groups'."""

    def __init__(self, backbone: nn.Module, cut: int):
        super().__init__()
        self.backbone, self.cut = backbone, cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        for block in b.blocks[self.cut:]:
            x = block(x)
        return b.forward_head(b.bn2(b.conv_head(x)))


def split_backbone(model: nn.Module, top_blocks: int = TOP_BLOCKS) -> TopSplit | None:
    """The bottom/top split of a model's backbone, or None when it has no known split: one backbone, a
    timm EfficientNet (the EfficientNet-Lite that `auto` fine-tunes). Two-level models with two backbones
    and other architectures train with full fine-tuning instead."""
    parts = classifiers(model)
    if len(parts) != 1 or parts[0] is not model:
        return None
    backbone = model.backbone
    try:
        from timm.models.efficientnet import EfficientNet
    except ImportError:  # pragma: no cover - timm is a core dependency
        return None
    if not isinstance(backbone, EfficientNet) or len(backbone.blocks) <= top_blocks:
        return None
    cut = len(backbone.blocks) - top_blocks
    bottom = nn.Sequential(backbone.conv_stem, backbone.bn1, *backbone.blocks[:cut])
    top = _Top(backbone, cut)
    return TopSplit(bottom, top, [*backbone.blocks[cut:], nn.ModuleList([backbone.conv_head, backbone.bn2])])


class TopForward(nn.Module):
    """What the loop runs in the top stage: cached bottom activations -> the model's scores."""

    def __init__(self, model: nn.Module, split: TopSplit):
        super().__init__()
        self.model, self.top = model, split.top

    def forward(self, acts: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.top(acts))


def cache_bytes(n_images: int, model: nn.Module, split: TopSplit, img_size: int) -> int:
    """Bytes the cached bf16 activations of n_images take (one probe through the bottom at img_size)."""
    with torch.no_grad():
        shape = split.bottom.eval()(torch.zeros(1, 3, img_size, img_size, device=_device_of(model))).shape
    return 2 * n_images * int(torch.tensor(shape[1:]).prod())


def fits_in_memory(nbytes: int) -> bool:
    """Whether cached activations of nbytes stay within CACHE_MEMORY_SHARE of the machine's memory."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not a POSIX system
        return nbytes < 2 * 2**30
    return nbytes <= CACHE_MEMORY_SHARE * total


def views_that_fit(seconds_left: float, view_seconds: float, view_bytes: int, held_bytes: int,
                   augment: BatchAugment) -> int:
    """How many views of the training split the top stage caches under a budget: 1 without augmentation, else as
    many as VIEW_TIME_SHARE of its time left and CACHE_MEMORY_SHARE of the memory allow (held_bytes: the cache
    already held), at most MAX_VIEWS."""
    if not augment.active or view_seconds <= 0:
        return 1
    by_time = 1 + int(VIEW_TIME_SHARE * seconds_left // view_seconds)
    by_memory = 1
    while by_memory < MAX_VIEWS and fits_in_memory(held_bytes + by_memory * view_bytes):
        by_memory += 1
    return max(1, min(MAX_VIEWS, by_time, by_memory))


@torch.no_grad()
def augment_seconds(images: torch.Tensor, augment: BatchAugment, batch_size: int = 32) -> float:
    """Seconds per image `augment` takes at the input (one batch, timed after a first that pays one-off costs): what
    each augmented view costs on top of the bottom's forward pass. Without it the estimate was low: fashion_hier's
    views took 59.7 s against ~40 s planned, 63 s against ~53 s with float32 kernels (machine A, 2026-12-07)."""
    if not augment.active or len(images) == 0:
        return 0.0
    gen = torch.Generator().manual_seed(0)
    x = images[:batch_size].float().div_(255.0)
    augment(x, gen, epoch=1)
    started = time.perf_counter()
    augment(x, gen, epoch=1)
    return (time.perf_counter() - started) / len(x)


@torch.no_grad()
def augmented_views(split: TopSplit, images: ImageTensors, plain: ImageTensors, pre: Preprocessing,
                    augment: BatchAugment, views: int, batch_size: int, device: torch.device, bf16: bool,
                    seed: int) -> ImageTensors:
    """The training split's bottom activations as N x V x C x h x w bf16: view 0 the plain images' (plain, cached
    already), each further view every image under one random draw of `augment` at the input (seeded: a resumed run
    computes the same views). With one view, plain as it is."""
    if views <= 1:
        return plain
    gen = torch.Generator().manual_seed(seed * 7_919 + 17)
    out = torch.empty((len(plain), views, *plain.images.shape[1:]), dtype=torch.bfloat16)
    out[:, 0] = plain.images
    for view in range(1, views):
        out[:, view] = _bottom_maps(split, images.images, pre, batch_size, device, bf16, augment, gen, view)
    return ImageTensors(images=out, labels=plain.labels, paths=plain.paths)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _bottom_maps(split: TopSplit, images: torch.Tensor, pre: Preprocessing, batch_size: int, device: torch.device,
                 bf16: bool, augment: BatchAugment | None = None, gen: torch.Generator | None = None,
                 epoch: int = 0) -> torch.Tensor:
    """The frozen bottom's output (bf16, on the CPU) for uint8 NCHW images, batch by batch in inference mode (batch
    norms use their pretrained statistics); each batch under `augment` at the input when one is given."""
    split.bottom.eval()
    out = []
    batch_size = scoring_batch(batch_size, images.shape[-1], device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    for s in range(0, len(images), batch_size):
        x = images[s:s + batch_size].float().div_(255.0)
        if augment is not None:
            x = augment(x, gen, epoch=epoch)
        x = pre.standardize(x.to(device)).contiguous(memory_format=torch.channels_last)
        with autocast:
            out.append(split.bottom(x).to(torch.bfloat16).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.bfloat16)


def bottom_activations(split: TopSplit, data: ImageTensors, pre: Preprocessing, batch_size: int,
                       device: torch.device, bf16: bool) -> ImageTensors:
    """The frozen bottom's output for every image of a split, once, stored in bf16 on the CPU (eval mode: batch
    norms use their pretrained statistics). Same labels and paths as the images."""
    return ImageTensors(images=_bottom_maps(split, data.images, pre, batch_size, device, bf16), labels=data.labels,
                        paths=data.paths)
