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
    "none":   dict(flip=False, translate=0.0, zoom=0.0, rotate=0.0, color=0.0),
    "light":  dict(flip=True, translate=0.125, zoom=0.0, rotate=0.0, color=0.0),
    "strong": dict(flip=True, translate=0.125, zoom=0.15, rotate=10.0, color=0.2),
}


class BatchAugment:
    def __init__(self, preset: str = "light", hflip: bool = True, hflip_mode: str = "random",
                 translate: float | None = None):
        if preset not in PRESETS:
            raise ValueError(f"unknown augmentation preset {preset!r}")
        self.preset = preset
        self.p = dict(PRESETS[preset])
        self.p["flip"] = self.p["flip"] and hflip
        if translate is not None and preset != "none":  # the preset's shift, overridden (fast recipe: 1/16 of the side)
            self.p["translate"] = translate
        # "alternate": an image is mirrored in every other epoch (airbench), so over two epochs
        # the network sees both views exactly once instead of at random.
        self.hflip_mode = hflip_mode

    @property
    def active(self) -> bool:
        p = self.p
        return bool(p["flip"] or p["translate"] or p["zoom"] or p["rotate"] or p["color"])

    def __call__(self, x: torch.Tensor, generator: torch.Generator, flip_parity: torch.Tensor | None = None,
                 epoch: int = 0) -> torch.Tensor:
        """x: float N x C x H x W in 0..1 (before normalisation). Returns the same shape and range.

        flip_parity: one fixed random bit per image of the batch, for hflip_mode="alternate"."""
        if not self.active:
            return x
        p = self.p
        n = x.shape[0]

        def rand(*shape):
            return torch.rand(*shape, generator=generator).to(x.device)

        if p["flip"]:
            if self.hflip_mode == "alternate" and flip_parity is not None:
                flip = (flip_parity.to(x.device) + epoch) % 2 == 1
            else:
                flip = rand(n) < 0.5
            x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
        if p["translate"] or p["zoom"] or p["rotate"]:
            angle = (rand(n) * 2 - 1) * math.radians(p["rotate"])
            scale = 1.0 + (rand(n) * 2 - 1) * p["zoom"]
            # whole-pixel shifts, so a pure translation is exact (no bilinear blur)
            side = torch.tensor([x.shape[3], x.shape[2]], device=x.device, dtype=x.dtype)
            shift = ((rand(n, 2) * 2 - 1) * p["translate"] * side).round() * 2 / side  # [-1, 1] grid units
            cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
            theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                                 torch.stack([sin, cos, shift[:, 1]], 1)], 1)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            # reflection padding keeps image statistics at the borders (no black frames)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if p["color"]:
            bright = 1.0 + (rand(n, 1, 1, 1) * 2 - 1) * p["color"]
            contrast = 1.0 + (rand(n, 1, 1, 1) * 2 - 1) * p["color"]
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * contrast + mean) * bright
        return x.clamp_(0.0, 1.0)
