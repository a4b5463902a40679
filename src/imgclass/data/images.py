"""Decode a list of files once into a uint8 NCHW tensor, skipping (and listing) bad files.

The whole split is held as uint8 at the training resolution (32 px CIFAR: 3 KB an
image), so each epoch only slices tensors: no per-image Python work after decoding.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .decode import ImageDecodeError
from .preprocess import Preprocessing, to_nchw


@dataclass
class ImageTensors:
    images: torch.Tensor                 # uint8 N x 3 x S x S
    labels: torch.Tensor                 # int64 N class indices, int64 N x tags 0/1 rows, or float32 N numbers
    paths: list[str]                     # relative paths of the kept images
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of skipped files

    def __len__(self) -> int:
        return len(self.labels)


def label_tensor(values: list) -> torch.Tensor:
    """A split's labels as ImageTensors holds them: int64 class indices or 0/1 tag rows, float32 numbers (each kind
    of label, data/labels.py, holds its own Python type: int, tuple, float)."""
    floating = bool(values) and isinstance(values[0], float)
    return torch.tensor(values, dtype=torch.float32 if floating else torch.int64)


def decode_many(paths: list[Path], pre: Preprocessing, workers: int = 0,
                on_progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, list[int], list[str]]:
    """Decode files in a thread pool (Pillow releases the GIL while decoding).

    Returns the stacked arrays of the good files, their indices, and one reason per
    input (empty string for good files).
    """
    workers = workers or os.cpu_count() or 1
    size = pre.img_size
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    reasons = [""] * len(paths)

    def work(i: int) -> None:
        try:
            out[i] = pre.load(paths[i])
        except ImageDecodeError as exc:
            reasons[i] = str(exc)
        except Exception as exc:  # noqa: BLE001 - one odd file must never stop a run
            reasons[i] = f"cannot decode: {type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for n, _ in enumerate(pool.map(work, range(len(paths))), 1):
            if on_progress is not None:
                on_progress(n)
    good = [i for i, r in enumerate(reasons) if not r]
    return out[good] if len(good) < len(paths) else out, good, reasons


def decode_in_chunks(paths: list[Path], pre: Preprocessing, workers: int = 0, chunk: int = 4096,
                     on_progress: Callable[[int], None] | None = None):
    """decode_many over consecutive chunks (memory bounded by one chunk), yielding for each
    (start, arrays of its good files, their indices within the chunk, its reasons)."""
    for start in range(0, len(paths), chunk):
        report = None if on_progress is None else (lambda n, d=start: on_progress(d + n))
        yield (start, *decode_many(paths[start:start + chunk], pre, workers, report))


def load_split(root: Path, rows: list[tuple[str, int]], pre: Preprocessing, workers: int = 0,
               on_progress: Callable[[int], None] | None = None) -> ImageTensors:
    paths = [root / rel for rel, _ in rows]
    arrays, good, reasons = decode_many(paths, pre, workers, on_progress)
    bad = [(rows[i][0], reasons[i]) for i in range(len(rows)) if reasons[i]]
    labels = label_tensor([rows[i][1] for i in good])
    return ImageTensors(images=to_nchw(arrays), labels=labels, paths=[rows[i][0] for i in good], bad=bad)


STATS_SAMPLE = 10_000  # streamed images: statistics from this many, evenly spaced (decoding all costs an epoch)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0..1 scale) of a uint8 NCHW tensor, for normalisation."""
    if not isinstance(images, torch.Tensor):  # data.stream.StreamedImages
        images = images[torch.linspace(0, len(images) - 1, min(len(images), STATS_SAMPLE)).long()]
    x = images.float().div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)
