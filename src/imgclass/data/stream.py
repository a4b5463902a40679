"""Streaming: for a dataset whose decoded cache would not fit on the disk (or with --stream),
images are decoded batch by batch in worker processes every epoch instead of once.

A first pass decodes every file once in a thread pool, without keeping the pixels, to
list the unusable files exactly as the cached path does (so both paths train on the same
images in the same order). After that, `StreamedImages` stands in for the uint8
N x 3 x S x S tensor the rest of the pipeline slices: indexing it decodes those files,
and the training loop asks it for a whole epoch of batches, which a torch DataLoader
decodes ahead of the model in `workers` processes (Pillow decoding holds the GIL for
part of its work, so processes rather than threads keep both cores busy while training).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..core.errors import DataError
from .images import ImageTensors, decode_in_chunks, label_tensor, decode_many
from .preprocess import Preprocessing, to_nchw

FIRST_PASS_CHUNK = 4096  # files decoded (and dropped) at a time in the first pass: bounded memory


class StreamedImages:
    """Looks like a uint8 N x 3 x S x S tensor; decodes the files it is indexed with."""

    def __init__(self, paths: list[Path], pre: Preprocessing, workers: int = 0):
        self.paths, self.pre, self.workers = list(paths), pre, workers or os.cpu_count() or 1

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), 3, self.pre.img_size, self.pre.img_size)

    def _indices(self, index) -> list[int]:
        if isinstance(index, slice):
            return list(range(len(self.paths))[index])
        if isinstance(index, int):
            return [index]
        return torch.as_tensor(index).reshape(-1).tolist()

    def __getitem__(self, index) -> torch.Tensor:
        """Decode the indexed files (threads) into uint8 NCHW; an int gives C x H x W, like a tensor."""
        idx = self._indices(index)
        arrays, good, reasons = decode_many([self.paths[i] for i in idx], self.pre, self.workers)
        if len(good) < len(idx):
            bad = next(i for i, r in zip(idx, reasons) if r)
            raise DataError(f"{self.paths[bad]} could be decoded when training started but not now "
                            f"({reasons[idx.index(bad)]}); was the folder changed during the run?")
        out = to_nchw(arrays)
        return out[0] if isinstance(index, int) else out

    def batches(self, chunks: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The batches for these index chunks, decoded ahead in worker processes, in order."""
        if self.workers <= 1 or len(chunks) <= 1:
            return (self[c] for c in chunks)
        loader = torch.utils.data.DataLoader(_Chunks(self.paths, self.pre, chunks), batch_size=None,
                                             num_workers=min(self.workers, len(chunks)), prefetch_factor=2)
        return iter(loader)


class _Chunks(torch.utils.data.Dataset):
    """One item per batch: the decoded uint8 NCHW images of that chunk (decoded inside a worker)."""

    def __init__(self, paths: list[Path], pre: Preprocessing, chunks: list[torch.Tensor]):
        self.paths, self.pre, self.chunks = paths, pre, [c.tolist() for c in chunks]

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> torch.Tensor:
        return to_nchw(np.stack([self.pre.load(self.paths[j]) for j in self.chunks[i]]))


def stream_split(root: Path, rows: list[tuple[str, int]], pre: Preprocessing, workers: int = 0,
                 on_progress: Callable[[int], None] | None = None) -> ImageTensors:
    """First pass over a split (every file decoded once, pixels dropped), then a streamed ImageTensors."""
    paths = [root / rel for rel, _ in rows]
    reasons = [r for *_, chunk_reasons in decode_in_chunks(paths, pre, workers, FIRST_PASS_CHUNK, on_progress)
               for r in chunk_reasons]
    good = [i for i, r in enumerate(reasons) if not r]
    return ImageTensors(images=StreamedImages([paths[i] for i in good], pre, workers),  # type: ignore[arg-type]
                        labels=label_tensor([rows[i][1] for i in good]),
                        paths=[rows[i][0] for i in good], bad=[(rows[i][0], r) for i, r in enumerate(reasons) if r])
