"""Augmentation on whole batches of tensors (CPU or GPU), for training only.

Each image in the batch gets its own random parameters. torchvision.transforms.v2
draws one set of parameters per call, which on a batch would move every image the
same way; so the per-sample affine (translate, zoom, rotation) is built here with
torch's affine_grid/grid_sample, and flips and colour jitter are masked tensor ops.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PRESETS = {
    #           flip  translate(frac of side)  zoom (+/-)  rotate (deg)  brightness/contrast (+/-)
    "none":   dict(flip=False, translate=0.0, zoom=0.0, rotate=0.0, brightness=0.0, contrast=0.0),
    "light":  dict(flip=True, translate=0.125, zoom=0.0, rotate=0.0, brightness=0.0, contrast=0.0),
    "strong": dict(flip=True, translate=0.125, zoom=0.15, rotate=10.0, brightness=0.2, contrast=0.2),
    # light's flip and shift, then RandAugment (2 random operations at magnitude 9 of 31, per image)
    "rand":   dict(flip=True, translate=0.125, zoom=0.0, rotate=0.0, brightness=0.0, contrast=0.0, rand=True),
}
RAND_OPS, RAND_MAGNITUDE = 2, 9  # RandAugment's N and M as in its paper's ImageNet setting and torchvision's default
# The ranges an option can set on top of any preset (the Keras course's ImageDataGenerator knobs):
# rotate and shear in degrees (+/-), zoom, brightness and contrast as fractions (+/-), vflip on or off, and
# cutout (DeVries & Taylor 2017; airbench96's 12 px of 32) as the side of the blanked square over the image's.
RANGES = ("rotate", "zoom", "brightness", "contrast", "shear", "vflip", "cutout")


class BatchAugment:
    def __init__(self, preset: str = "light", hflip: bool = True, hflip_mode: str = "random",
                 translate: float | None = None, **ranges: float | bool | None):
        if preset not in PRESETS:
            raise ValueError(f"unknown augmentation preset {preset!r}")
        unknown = set(ranges) - set(RANGES)
        if unknown:
            raise ValueError(f"unknown augmentation range(s) {sorted(unknown)}")
        self.preset = preset
        self.p = {"rand": False, **PRESETS[preset], "shear": 0.0, "vflip": False, "cutout": 0.0}
        self.p["flip"] = self.p["flip"] and hflip
        if translate is not None and preset != "none":  # the preset's shift, overridden (fast recipe: 1/16 of the side)
            self.p["translate"] = translate
        self.p.update({k: v for k, v in ranges.items() if v is not None})  # an option's range replaces the preset's
        # "alternate": an image is mirrored in every other epoch (airbench), so over two epochs
        # the network sees both views exactly once instead of at random.
        self.hflip_mode = hflip_mode
        self.last: dict[str, torch.Tensor] = {}  # the parameters drawn for the last batch (per image)

    @property
    def active(self) -> bool:
        p = self.p
        return bool(p["flip"] or p["translate"] or p["zoom"] or p["rotate"] or p["brightness"] or p["contrast"]
                    or p["shear"] or p["vflip"] or p["rand"] or p["cutout"])

    def __call__(self, x: torch.Tensor, generator: torch.Generator, flip_parity: torch.Tensor | None = None,
                 epoch: int = 0) -> torch.Tensor:
        """x: float N x C x H x W in 0..1 (before normalisation). Returns the same shape and range.

        flip_parity: one fixed random bit per image of the batch, for hflip_mode="alternate".
        The random draws come in a fixed order, and only for what is switched on, so a preset draws (and
        does) exactly what it did before the options existed."""
        self.last = {}
        if not self.active:
            return x
        p = self.p
        n = x.shape[0]

        def rand(*shape):
            return torch.rand(*shape, generator=generator).to(x.device)

        if p["flip"]:
            x = self._flip(x, rand, flip_parity, epoch)
        if p["translate"] or p["zoom"] or p["rotate"] or p["shear"]:
            x = self._affine(x, rand)
        if p["brightness"] or p["contrast"]:
            bright = 1.0 + (rand(n, 1, 1, 1) * 2 - 1) * p["brightness"]
            contrast = 1.0 + (rand(n, 1, 1, 1) * 2 - 1) * p["contrast"]
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * contrast + mean) * bright
            self.last.update(brightness=bright.view(n) - 1, contrast=contrast.view(n) - 1)
        if p["vflip"]:
            vflip = rand(n) < 0.5
            x = torch.where(vflip.view(n, 1, 1, 1), x.flip(2), x)
            self.last["vflip"] = vflip
        if p["rand"]:
            x = self._rand_augment(x.clamp(0.0, 1.0), generator)
        if p["cutout"]:  # (drawn last: every earlier draw stays what it was without it)
            x = self._cutout(x, rand)
        return x.clamp_(0.0, 1.0)

    def _cutout(self, x: torch.Tensor, rand) -> torch.Tensor:
        """One square per image, wholly inside it, set to the batch's mean colour (0 once standardised, as
        airbench's masked_fill(0) on normalised inputs). Per image here because torchvision's RandomErasing
        draws one box per call, which on a batch would blank the same place in every image."""
        n, _, h, w = x.shape
        side = max(1, round(self.p["cutout"] * min(h, w)))
        top = (rand(n) * (h - side + 1)).floor().long().clamp_(max=h - side)
        left = (rand(n) * (w - side + 1)).floor().long().clamp_(max=w - side)
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        inside = ((rows >= top.view(n, 1, 1)) & (rows < (top + side).view(n, 1, 1))
                  & (cols >= left.view(n, 1, 1)) & (cols < (left + side).view(n, 1, 1)))
        self.last["cutout"] = torch.stack([top, left], 1)
        return torch.where(inside.unsqueeze(1), x.mean(dim=(0, 2, 3), keepdim=True), x)

    def flip_only(self, x: torch.Tensor, generator: torch.Generator, flip_parity: torch.Tensor | None = None,
                  epoch: int = 0) -> torch.Tensor:
        """The horizontal flips alone, on any N x C x H x W tensor, values untouched (no clamp): for feature maps
        cached from images (the top stage of fine-tuning), whose flips approximate the flipped images'."""
        if not self.p["flip"]:
            return x
        return self._flip(x, lambda *shape: torch.rand(*shape, generator=generator).to(x.device), flip_parity, epoch)

    def _flip(self, x: torch.Tensor, rand, flip_parity: torch.Tensor | None, epoch: int) -> torch.Tensor:
        n = x.shape[0]
        if self.hflip_mode == "alternate" and flip_parity is not None:
            flip = (flip_parity.to(x.device) + epoch) % 2 == 1
        else:
            flip = rand(n) < 0.5
        return torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)

    @staticmethod
    def _rand_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """torchvision's RandAugment, one image at a time (called on a batch it would apply the same two
        operations to every image), on uint8 as its posterize/equalize need; seeded from the batch's
        generator, so a run stays repeatable."""
        from torchvision.transforms import v2
        ops = v2.RandAugment(num_ops=RAND_OPS, magnitude=RAND_MAGNITUDE)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            images = (x * 255).round().to(torch.uint8).cpu()
            out = torch.stack([ops(img) for img in images])
        return out.to(x.device, torch.float32).div_(255.0)

    def _affine(self, x: torch.Tensor, rand) -> torch.Tensor:
        """Per-image rotation, zoom, whole-pixel shift and shear, in one resampling."""
        p, n = self.p, x.shape[0]
        angle = (rand(n) * 2 - 1) * math.radians(p["rotate"])
        scale = 1.0 + (rand(n) * 2 - 1) * p["zoom"]
        # whole-pixel shifts, so a pure translation is exact (no bilinear blur)
        side = torch.tensor([x.shape[3], x.shape[2]], device=x.device, dtype=x.dtype)
        shift = ((rand(n, 2) * 2 - 1) * p["translate"] * side).round() * 2 / side  # [-1, 1] grid units
        shear = (rand(n) * 2 - 1) * math.radians(p["shear"]) if p["shear"] else torch.zeros(n, device=x.device)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        t = torch.tan(shear)  # x' = x + tan(shear) * y, then the rotation and zoom
        theta = torch.stack([torch.stack([cos, cos * t - sin, shift[:, 0]], 1),
                             torch.stack([sin, sin * t + cos, shift[:, 1]], 1)], 1)
        self.last.update(rotate=torch.rad2deg(angle), zoom=scale - 1, shift=shift * side / 2,
                         shear=torch.rad2deg(shear))
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # reflection padding keeps image statistics at the borders (no black frames)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def from_config(cfg) -> BatchAugment:
    """The training augmentation a TrainConfig describes: its preset, flips, shift and option ranges."""
    return BatchAugment(cfg.augment, cfg.hflip, cfg.hflip_mode, cfg.translate,
                        **{k: getattr(cfg, k) for k in RANGES})


def batch_mix(mixup: float | None, cutmix: float | None, num_classes: int, targets: str = "classes"):
    """--mixup A / --cutmix A: torchvision's MixUp and CutMix on whole batches (each image mixed with its
    neighbour in the batch, lambda ~ Beta(A, A)); with both, one of the two per batch, as torchvision's
    references do. Returns None when neither is on, else f(images, labels) -> (images, soft targets).
    targets: "classes" (class indices, mixed into soft one-hot targets) or "tags" (N x classes 0/1 rows, several tags
    per image, mixed as the images are: see _mix_tags); a task names its own (Task.mix_targets)."""
    from torchvision.transforms import v2
    def mixes(n: int) -> list:
        return ([v2.MixUp(alpha=mixup, num_classes=n)] if mixup else []) + (
            [v2.CutMix(alpha=cutmix, num_classes=n)] if cutmix else [])
    if not mixes(num_classes):
        return None
    if targets == "tags":
        return lambda images, labels: _mix_tags(images, labels, mixes(len(labels)))
    chosen = mixes(num_classes)
    return chosen[0] if len(chosen) == 1 else v2.RandomChoice(chosen)


def _mix_tags(images, labels, mixes: list):
    """Several tags per image: torchvision mixes one-hot targets only, so each image is given its own "class"
    (its index in the batch); the soft targets it returns are then the mixing weights between images (lambda
    for the image, 1 - lambda for its neighbour; CutMix's lambda from its box), and the same weights mix the
    images' 0/1 tag rows. The images and the draw stay torchvision's."""
    import torch
    from torchvision.transforms import v2
    mix = mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
    images, weights = mix(images, torch.arange(len(labels), device=labels.device))
    return images, weights @ labels.float()
