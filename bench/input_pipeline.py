"""Input-pipeline throughput: images/s delivered to the model, same augmentations (random
crop with 4 px reflect padding = translate, horizontal flip, normalise), imgclass (decoded once,
memory-mapped cache, batch augmentation) against torchvision ImageFolder + DataLoader(num_workers=2).
Epoch 1 and a later epoch are timed separately; the target is >= 10x on every epoch after the first.
Also timed, without a target: imgclass's streaming path (decoding every epoch in worker processes,
used when the cache would not fit on disk), whose epoch 1 includes its first pass over the files.

    python bench/input_pipeline.py [--images 10000]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from common import cifar10, machine


def imgclass_epochs(root: Path, rows, epochs: int, batch: int, cache_dir: Path) -> list[float]:
    from imgclass.data.augment import BatchAugment
    from imgclass.data.cache import load_cached
    from imgclass.data.preprocess import Preprocessing
    pre = Preprocessing(img_size=32, resize="crop", mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
    aug = BatchAugment("light")
    rates = []
    for epoch in range(epochs):
        started = time.perf_counter()
        data, _ = load_cached(root, rows, pre, cache_dir)   # epoch 1 decodes; later epochs map the cache
        gen = torch.Generator().manual_seed(epoch)
        order = torch.randperm(len(data), generator=gen)
        n = 0
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            x = pre.standardize(aug(data.images[idx].float().div_(255), gen))
            y = data.labels[idx]
            n += len(y)
        rates.append(n / (time.perf_counter() - started))
    return rates


def imgclass_stream_epochs(root: Path, rows, epochs: int, batch: int) -> list[float]:
    from imgclass.data.augment import BatchAugment
    from imgclass.data.preprocess import Preprocessing
    from imgclass.data.stream import stream_split
    pre = Preprocessing(img_size=32, resize="crop", mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
    aug = BatchAugment("light")
    rates, data = [], None
    for epoch in range(epochs):
        started = time.perf_counter()
        data = data or stream_split(root, rows, pre, workers=2)   # epoch 1: the first pass over the files
        gen = torch.Generator().manual_seed(epoch)
        chunks = list(torch.randperm(len(data), generator=gen).split(batch))
        n = 0
        for images in data.images.batches(chunks):
            x = pre.standardize(aug(images.float().div_(255), gen))
            n += len(x)
        rates.append(n / (time.perf_counter() - started))
    return rates


def torchvision_epochs(root: Path, epochs: int, batch: int, limit: int) -> list[float]:
    import torchvision.transforms as T
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder
    tf = T.Compose([T.RandomCrop(32, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))])
    ds = ImageFolder(str(root / "train"), transform=tf)
    ds = Subset(ds, torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:limit].tolist())
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=2, persistent_workers=False)
    rates = []
    for _ in range(epochs):
        started = time.perf_counter()
        n = sum(len(y) for _, y in loader)
        rates.append(n / (time.perf_counter() - started))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(2)
    root = cifar10()
    from imgclass.data.find import find_images
    found = find_images(root)
    items = [(rel, lab) for rel, lab, split in found.items if split == "train"]
    keep = torch.randperm(len(items), generator=torch.Generator().manual_seed(0))[:args.images].tolist()
    rows = [items[i] for i in sorted(keep)]
    with tempfile.TemporaryDirectory() as tmp:
        ours = imgclass_epochs(root, rows, args.epochs, args.batch, Path(tmp))
    streamed = imgclass_stream_epochs(root, rows, args.epochs, args.batch)
    ref = torchvision_epochs(root, args.epochs, args.batch, args.images)
    print(f"date {date.today()}  machine: {machine()}")
    print(f"command: python bench/input_pipeline.py --images {args.images} --epochs {args.epochs} --batch {args.batch}")
    for e, (a, b) in enumerate(zip(ours, ref), 1):
        print(f"epoch {e}: imgclass {a:,.0f} img/s, torchvision ImageFolder+DataLoader(2 workers) {b:,.0f} img/s, "
              f"ratio {a / b:.1f}x" + ("" if e == 1 else f" (target >= 10x: {'MET' if a / b >= 10 else 'MISSED'})"))
    for e, (a, b) in enumerate(zip(streamed, ref), 1):
        print(f"epoch {e}: imgclass streaming (2 worker processes) {a:,.0f} img/s, ratio {a / b:.2f}x (no target)")


if __name__ == "__main__":
    main()
