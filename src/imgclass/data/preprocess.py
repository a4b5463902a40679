"""The preprocessing stored in every model file: input size, resize policy, mean/std.

Training, evaluation, prediction, submission, serving and export all decode with ``Preprocessing.load``
(one image to uint8 at the model's size) and standardise with ``Preprocessing.normalize``, so they can
never disagree. Frozen: a changed copy comes from ``dataclasses.replace``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from .decode import DECODE_BUDGET, DEFAULT_MAX_PIXELS, open_rgb, to_rgb

RESAMPLE = Image.Resampling.BICUBIC


@dataclass(frozen=True)
class Preprocessing:
    img_size: int                 # square side fed to the model
    resize: str = "crop"          # crop | pad | stretch
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per-channel, on 0..1 pixels
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    max_pixels: int = DEFAULT_MAX_PIXELS

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        """As a model file's header says (checked). Its max_pixels is the file's own: a command applies
        its limit on top with `within`."""
        try:
            pre = cls(img_size=int(d["img_size"]), resize=str(d.get("resize", "crop")),
                      mean=tuple(float(x) for x in d["mean"]), std=tuple(float(x) for x in d["std"]),
                      max_pixels=int(d.get("max_pixels", DEFAULT_MAX_PIXELS)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed preprocessing entry ({type(exc).__name__}: {exc})") from None
        if (not 1 <= pre.img_size <= 4096 or pre.resize not in ("crop", "pad", "stretch") or len(pre.mean) != 3
                or len(pre.std) != 3 or min(pre.std) <= 0 or pre.max_pixels < 1):
            raise ValueError(f"malformed preprocessing entry {d}")
        return pre

    def within(self, max_pixels: int | None = None) -> "Preprocessing":
        """This preprocessing under a command's pixel limit (default DEFAULT_MAX_PIXELS). The file never
        raises the command's limit: a crafted header could otherwise switch the bomb guard off."""
        return replace(self, max_pixels=min(self.max_pixels, max_pixels or DEFAULT_MAX_PIXELS))

    def with_stats(self, mean, std) -> "Preprocessing":
        """The same preprocessing standardising with these per-channel statistics."""
        return replace(self, mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))

    # -- one image -------------------------------------------------------------
    def fit(self, img: Image.Image) -> Image.Image:
        """Apply the resize policy: an RGB image of exactly img_size x img_size."""
        size = (self.img_size, self.img_size)
        if self.resize == "crop":
            return ImageOps.fit(img, size, method=RESAMPLE)
        if self.resize == "pad":
            return ImageOps.pad(img, size, method=RESAMPLE, color=(0, 0, 0))
        if self.resize == "stretch":
            return img.resize(size, RESAMPLE)
        raise ValueError(f"unknown resize policy {self.resize!r}")

    def load(self, source: str | Path | bytes | BinaryIO | Image.Image, max_bytes: int | None = None) -> np.ndarray:
        """Decode + resize one image into a uint8 HxWx3 array (max_bytes: decode.open_rgb's memory limit). The
        full-size picture is held within the process's decode budget (decode.DECODE_BUDGET) until it is resized."""
        if isinstance(source, Image.Image):
            return np.asarray(self.fit(to_rgb(ImageOps.exif_transpose(source))), dtype=np.uint8)
        with DECODE_BUDGET.hold() as reservation:
            img = open_rgb(source, draft_size=self.img_size, max_pixels=self.max_pixels, max_bytes=max_bytes,
                           reservation=reservation)
            return np.asarray(self.fit(img), dtype=np.uint8)

    # -- batches ---------------------------------------------------------------
    def normalize(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW -> float NCHW, scaled to 0..1 and standardised."""
        return self.standardize(batch_uint8.float().div_(255.0))

    def standardize(self, x01: torch.Tensor) -> torch.Tensor:
        """float NCHW in 0..1 -> (x - mean) / std."""
        mean = torch.tensor(self.mean, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
        return (x01 - mean) / std


def to_nchw(arrays: np.ndarray) -> torch.Tensor:
    """NHWC uint8 numpy -> NCHW uint8 tensor. (A read-only array, such as np.asarray of a PIL image, is copied:
    torch warns on wrapping one.)"""
    return torch.from_numpy(np.require(arrays, requirements=["C", "W"])).permute(0, 3, 1, 2).contiguous()
